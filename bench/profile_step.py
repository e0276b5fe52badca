"""Where does a training step's time go? torch.profiler over a few steps, top operators by self time.

    python bench/profile_step.py                         # the spec's char model: 6 x 384, batch 64 x 256
    python bench/profile_step.py --n_layer=4 --n_embd=128 --n_head=4 --block_size=64 --batch_size=12

Random tokens, float32 on the CPU, the same model and AdamW as train.py. Prints the operators that take
the most time, the share of the step spent in matrix multiplies, and ms per step.
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nanogpt.model import GPT, GPTConfig  # noqa: E402
from nanogpt.system import keep_freed_memory  # noqa: E402

# the operators that do the model's FLOPs; everything else is overhead to shrink
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_scaled_dot_product_flash_attention_for_cpu",
              "aten::_scaled_dot_product_flash_attention_for_cpu_backward")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n_layer", type=int, default=6)
    parser.add_argument("--n_head", type=int, default=6)
    parser.add_argument("--n_embd", type=int, default=384)
    parser.add_argument("--block_size", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--vocab_size", type=int, default=65)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--steps", type=int, default=3, help="profiled steps, after one warm-up step")
    parser.add_argument("--rows", type=int, default=15, help="operators to list")
    args = parser.parse_args()

    keep_freed_memory()  # as train.py does on the CPU
    torch.manual_seed(1337)
    config = GPTConfig(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, block_size=args.block_size,
                       vocab_size=args.vocab_size, dropout=args.dropout, bias=False)
    model = GPT(config)
    (optimizer,) = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    x = torch.randint(args.vocab_size, (args.batch_size, args.block_size))
    y = torch.randint(args.vocab_size, (args.batch_size, args.block_size))

    def step():
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        seconds = time.perf_counter() - t0
    events = prof.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    total = sum(e.self_cpu_time_total for e in events)
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS)
    print(f"{seconds / args.steps * 1000:.0f} ms/step under the profiler; matrix multiplies and attention {matmul / total * 100:.1f}% of operator time")


if __name__ == "__main__":
    main()
