"""Muon's optimizer step alone: torch.optim.Muon (one matrix at a time) against nanogpt/training/muon.py's
BatchedMuon (all matrices of one shape together), both with Newton–Schulz in bfloat16, and BatchedMuon
with it in float32 (what muon_dtype='auto' picks where bfloat16 matmuls are slow), alternating steps,
median time of each.

    python bench/muon_step.py [--device=cpu] [--steps=30]

Times the step over the blocks' matrices of three model sizes (the CPU char config, the spec char
model, GPT-2 124M), with random gradients, as train.py's optimizer='muon' updates them.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nanogpt.model import GPT, GPTConfig  # noqa: E402
from nanogpt.system import bfloat16_matmul_speed  # noqa: E402
from nanogpt.training.muon import BatchedMuon  # noqa: E402

SIZES = {
    "4 x 128 (CPU config)": (4, 4, 128),
    "6 x 384 (spec char model)": (6, 6, 384),
    "12 x 768 (GPT-2 124M)": (12, 12, 768),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    torch.manual_seed(0)
    print(f"bfloat16 matmuls run {bfloat16_matmul_speed(args.device):.2f}x float32's speed on {args.device}")
    print(
        "| blocks' matrices of | torch.optim.Muon ms | BatchedMuon ms | speed-up | BatchedMuon, float32 ms "
        "|\n|---|---|---|---|---|"
    )
    for name, (n_layer, n_head, n_embd) in SIZES.items():
        model = GPT(
            GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=64, vocab_size=64, bias=False)
        ).to(args.device)
        matrices = [p for n, p in model.named_parameters() if n.startswith("transformer.h.") and p.dim() == 2]
        for p in matrices:
            p.grad = torch.randn_like(p)
        optimizers = {
            # lr 0: the weights stay put
            "torch": torch.optim.Muon(matrices, lr=0.0, weight_decay=0.0, adjust_lr_fn="original"),
            "batched": BatchedMuon(matrices, lr=0.0, weight_decay=0.0, adjust_lr_fn="original"),
            "float32": BatchedMuon(matrices, "float32", lr=0.0, weight_decay=0.0, adjust_lr_fn="original"),
        }
        times = {key: [] for key in optimizers}
        for _ in range(args.steps + 3):
            for key, optimizer in optimizers.items():
                sync()
                t0 = time.perf_counter()
                optimizer.step()
                sync()
                times[key].append(time.perf_counter() - t0)
        ours, theirs, float32 = (statistics.median(times[key][3:]) * 1000 for key in ("batched", "torch", "float32"))
        print(
            f"| {name}, {len(matrices)} | {theirs:.2f} | {ours:.2f} | {theirs / ours:.2f}x | {float32:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
