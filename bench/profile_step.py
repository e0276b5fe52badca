"""Where does a training step's time go? torch.profiler over a few steps, top operators by self time.

    python bench/profile_step.py                         # the spec's char model: 6 x 384, batch 64 x 256
    python bench/profile_step.py --n_layer=4 --n_embd=128 --n_head=4 --block_size=64 --batch_size=12
    python bench/profile_step.py --device=cuda --n_layer=12 --n_head=12 --n_embd=768 --block_size=1024 \
        --batch_size=12 --vocab_size=50304 --compile        # GPT-2 124M on a GPU: its CUDA kernels

Random tokens, the same model, optimizer and step as train.py (nanogpt/training/step.py): float32 on the CPU,
bfloat16 autocast on a GPU. Prints the operators (on a GPU, the kernels) that take the most time, the
share of it spent in matrix multiplies and attention, and ms per step.
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nanogpt.model import GPT, GPTConfig  # noqa: E402
from nanogpt.system import autocast_context, compile_model, keep_freed_memory  # noqa: E402
from nanogpt.training.optimizers import make_optimizers  # noqa: E402
from nanogpt.training.step import TrainingStep  # noqa: E402

# the operators that do the model's FLOPs; everything else is overhead to shrink
MATMUL_OPS = (
    "aten::mm",
    "aten::addmm",
    "aten::bmm",
    "aten::baddbmm",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
)
# on a GPU, the kernels that do them: cuBLAS / CUTLASS GEMMs and the attention kernels
MATMUL_KERNELS = ("gemm", "gemv", "cutlass", "xmma", "flash", "fmha", "attention", "cudnn")


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
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model, as train.py does on GPUs")
    parser.add_argument("--optimizer", default="adamw", choices=("adamw", "muon"))
    args = parser.parse_args()

    cuda = args.device.startswith("cuda")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    else:
        keep_freed_memory()  # as train.py does on the CPU
    torch.manual_seed(1337)
    config = GPTConfig(
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_embd=args.n_embd,
        block_size=args.block_size,
        vocab_size=args.vocab_size,
        dropout=args.dropout,
        bias=False,
    )
    model = GPT(config).to(args.device)
    optimizers = make_optimizers(model, 0.1, 1e-3, (0.9, 0.99), args.device.split(":")[0], args.optimizer)
    step_model = compile_model(model, args.compile, args.device)
    ctx = autocast_context(args.device, "bfloat16" if cuda else "float32")
    scaler = torch.amp.GradScaler(args.device.split(":")[0], enabled=False)
    batch = (
        torch.randint(args.vocab_size, (args.batch_size, args.block_size), device=args.device),
        torch.randint(args.vocab_size, (args.batch_size, args.block_size), device=args.device),
    )

    def step():
        TrainingStep(step_model, optimizers, scaler, ctx, grad_clip=1.0)(batch, lambda: batch)
        if cuda:
            torch.cuda.synchronize()

    for _ in range(3 if args.compile else 1):  # compilation and warm-up stay out of the profile
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        seconds = time.perf_counter() - t0
    events = prof.key_averages()
    if cuda:
        print(events.table(sort_by="self_device_time_total", row_limit=args.rows))
        kernels = [e for e in events if e.self_device_time_total > 0]
        total = sum(e.self_device_time_total for e in kernels)
        matmul = sum(e.self_device_time_total for e in kernels if any(k in e.key.lower() for k in MATMUL_KERNELS))
        where = "of GPU kernel time"
    else:
        print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))
        total = sum(e.self_cpu_time_total for e in events)
        matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS)
        where = "of operator time"
    print(
        f"{seconds / args.steps * 1000:.0f} ms/step under the profiler; matrix multiplies and attention "
        f"{matmul / total * 100:.1f}% {where}"
    )


if __name__ == "__main__":
    main()
