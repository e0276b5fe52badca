"""Peak memory and step time of a fine-tuning step: full AdamW against LoRA, activation checkpointing and
Adafactor, side by side in one run; then the memory plan of gpt2-xl on a 24 GB GPU (estimated only).

    python bench/finetune_memory.py                 # gpt2-medium's shape, random weights, on this machine
    python bench/finetune_memory.py --device=cuda --n_layer=48 --n_head=25 --n_embd=1600 --dtype=bfloat16 \
        --block_size=1024 --batch_size=1

Each variant is one `bench.py` run in a fresh process (random tokens, 1 warm-up and 2 timed steps):
its planned peak (train.py's memory plan), the measured peak (CPU: resident set above the process
before the model was built; CUDA: torch's allocated bytes), and ms a step. The last table needs no
device: it is the plan alone.
"""

import argparse
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

VARIANTS = [
    ("full fine-tune, AdamW", []),
    ("+ activation checkpointing", ["--activation_checkpointing=True"]),
    ("Adafactor", ["--optimizer=adafactor"]),
    ("Adafactor + checkpointing", ["--optimizer=adafactor", "--activation_checkpointing=True"]),
    ("LoRA rank 16", ["--lora_rank=16"]),
    ("LoRA rank 16 + checkpointing", ["--lora_rank=16", "--activation_checkpointing=True"]),
]


def measure(args, extra):
    command = [
        sys.executable,
        "bench.py",
        "--real_data=False",
        "--warmup_iters=1",
        "--iters=2",
        "--compile=False",
        f"--device={args.device}",
        f"--dtype={args.dtype}",
        f"--n_layer={args.n_layer}",
        f"--n_head={args.n_head}",
        f"--n_embd={args.n_embd}",
        f"--block_size={args.block_size}",
        f"--batch_size={args.batch_size}",
        "--bias=True",
        *extra,
    ]
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True).stdout
    planned = re.search(r"peak\s+([\d.,]+) (GiB|MiB)", out)
    planned_gib = float(planned.group(1).replace(",", "")) / (1 if planned.group(2) == "GiB" else 1024)
    above = float(re.search(r"([\d,]+) MiB above the process", out).group(1).replace(",", "")) / 1024
    ms = float(re.search(r"time per iteration: ([\d.]+) ms", out).group(1))
    return planned_gib, above, ms


def gpt2_xl_plans():
    """train.py's plan for config/finetune_shakespeare.py's step (gpt2-xl, 1 x 1024 tokens, bf16) and
    the switches that shrink it, on a GPU with 24 GiB free."""
    from nanogpt.command_line import load_config
    from nanogpt.config import TrainSettings
    from nanogpt.hf import pretrained_config
    from nanogpt.training.memory_plan import gib, plan_memory

    shape = pretrained_config("gpt2-xl")
    rows = []
    for config_file, label, change in (
        ("config/finetune_shakespeare.py", "full fine-tune, AdamW (finetune_shakespeare.py)", {}),
        ("config/finetune_shakespeare.py", "+ activation checkpointing", dict(activation_checkpointing=True)),
        (
            "config/finetune_shakespeare.py",
            "Adafactor + checkpointing",
            dict(optimizer="adafactor", activation_checkpointing=True),
        ),
        ("config/finetune_shakespeare_lora.py", "LoRA (finetune_shakespeare_lora.py)", {}),
    ):
        cfg = replace(load_config(TrainSettings, [config_file]), **change)
        plan = plan_memory(shape, cfg, "bfloat16", "cuda", free=24 * 2**30)
        rows.append(
            f"| {label} | {gib(plan.weights)} | {gib(plan.gradients)} | {gib(plan.optimizer)} | "
            f"{gib(plan.activations)} | {gib(plan.peak)} |"
        )
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--n_layer", type=int, default=24)  # gpt2-medium: 24 x 16 heads x 1024
    parser.add_argument("--n_head", type=int, default=16)
    parser.add_argument("--n_embd", type=int, default=1024)
    parser.add_argument("--block_size", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=2)
    args = parser.parse_args()
    rows = []
    for label, extra in VARIANTS:
        planned, measured, ms = measure(args, extra)
        rows.append(f"| {label} | {planned:.2f} | {measured:.2f} | {ms:,.0f} |")
        print(rows[-1], flush=True)
    print(
        f"\n{args.n_layer} x {args.n_head} x {args.n_embd}, {args.batch_size} x {args.block_size} tokens a "
        f"step, {args.dtype} on {args.device}, random weights"
    )
    print("| step | planned peak (GiB) | measured peak (GiB) | ms a step |\n|---|---|---|---|")
    print("\n".join(rows))
    print("\ngpt2-xl, 1 x 1024 tokens a micro-batch, bfloat16 on a GPU: train.py's plan (estimated, not measured)")
    print("| step | weights | gradients | optimizer | activations | peak |\n|---|---|---|---|---|---|")
    print("\n".join(gpt2_xl_plans()))


if __name__ == "__main__":
    main()
