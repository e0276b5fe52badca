"""Does a model switch make train.py's step faster? The step with it off and on, in one process, alternating.

    python bench/switch_step.py --switch=exact_gelu [--rounds=12] [--steps=60] [--n_layer=4 --n_embd=128 ...]

Both models (the same shape and seed; the switch a GPTConfig field, e.g. exact_gelu or relu2) take
train.py's step (nanogpt/training/step.py: forward, backward, clipping, AdamW) on one fixed batch of
random tokens, float32 on the CPU. Each round times --steps steps of one model after 5 untimed ones,
the two models alternating and swapping order every round, so that the machine's drift hits both alike.
Prints each round's ms/step, the medians, and the median of the per-round ratios (off / on: above 1,
the switch is faster).
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nanogpt.model import GPT, GPTConfig  # noqa: E402
from nanogpt.system import autocast_context, keep_freed_memory  # noqa: E402
from nanogpt.training.optimizers import make_optimizers  # noqa: E402
from nanogpt.training.step import TrainingStep  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--switch", required=True, help="a boolean GPTConfig field")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--n_layer", type=int, default=4)
    parser.add_argument("--n_head", type=int, default=4)
    parser.add_argument("--n_embd", type=int, default=128)
    parser.add_argument("--block_size", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=12)
    args = parser.parse_args()
    if not isinstance(getattr(GPTConfig(), args.switch, None), bool):
        raise SystemExit(f"error: --switch={args.switch} is not a boolean GPTConfig field")
    keep_freed_memory()  # as train.py does on the CPU
    shape = dict(
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_embd=args.n_embd,
        block_size=args.block_size,
        vocab_size=65,
        bias=False,
        dropout=0.0,
    )
    ctx, scaler = autocast_context("cpu", "float32"), torch.amp.GradScaler("cpu", enabled=False)
    batch = (
        torch.randint(65, (args.batch_size, args.block_size)),
        torch.randint(65, (args.batch_size, args.block_size)),
    )
    runs = {}
    for on in (False, True):
        torch.manual_seed(0)
        model = GPT(GPTConfig(**shape, **{args.switch: on}))
        runs[on] = (model, make_optimizers(model, 0.1, 1e-3, (0.9, 0.99), "cpu", "adamw"))
    ms = {False: [], True: []}
    for round_ in range(args.rounds):
        for on in (False, True) if round_ % 2 == 0 else (True, False):
            step = TrainingStep(*runs[on], scaler, ctx, grad_clip=1.0)
            for _ in range(5):
                step(batch, lambda: batch)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(batch, lambda: batch)
            ms[on].append((time.perf_counter() - t0) / args.steps * 1000)
    ratios = [off / on for off, on in zip(ms[False], ms[True])]
    print(f"{args.switch}, {args.rounds} alternating rounds of {args.steps} steps, {torch.get_num_threads()} threads\n")
    print("| | ms/step, each round | median |\n|---|---|---|")
    for on in (False, True):
        print(f"| {args.switch}={on} | {', '.join(f'{x:.1f}' for x in ms[on])} | {statistics.median(ms[on]):.2f} |")
    print(
        f"\noff / on, median of the rounds' ratios: {statistics.median(ratios):.3f} (range {min(ratios):.3f} "
        f"to {max(ratios):.3f})"
    )


if __name__ == "__main__":
    main()
