"""What a run costs beyond its steps: whole processes, timed from outside, several runs each.

    python bench/startup.py [--runs=5] [--nanogpt=PATH_TO_A_NANOGPT_CHECKOUT]

Times, best and median of --runs:
- `python -c "import torch"`, the floor every script pays;
- `python train.py --help` and `python sample.py --help`;
- the tiny CPU run: `python train.py config/train_shakespeare_char_cpu.py --max_iters=300
  --eval_interval=300` (300 steps, evaluations at steps 0 and 300), split, from its metrics.jsonl, into
  steps (the run's training seconds) and evaluations; the fixed cost is what is left once import torch,
  the steps and the evaluations are taken away;
- sample.py's time to first token: from starting the process to the first generated character on
  its output, sampling from that run's checkpoint.
With --nanogpt, the same tiny run with Karpathy's nanoGPT (its train.py, the same settings, its own
prepared data/shakespeare_char) alternates with ours, run for run, and the ratio of medians is printed.
Needs data/shakespeare_char prepared (python data/shakespeare_char/prepare.py).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TINY_RUN = ["config/train_shakespeare_char_cpu.py", "--max_iters=300", "--eval_interval=300"]
# the same run in nanoGPT's terms: its char config with every setting of ours that differs from it
NANOGPT_TINY_RUN = [
    "config/train_shakespeare_char.py",
    "--device=cpu",
    "--compile=False",
    "--eval_iters=200",
    "--eval_interval=300",
    "--log_interval=10",
    "--block_size=64",
    "--batch_size=12",
    "--n_layer=4",
    "--n_head=4",
    "--n_embd=128",
    "--max_iters=300",
    "--lr_decay_iters=2000",
    "--dropout=0.0",
    "--learning_rate=2e-3",
    "--min_lr=2e-4",
    "--beta2=0.99",
    "--warmup_iters=100",
]


def wall_seconds(args, cwd=REPO):
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - t0


def tiny_run(out_dir):
    """Whole-process seconds of the tiny run, and its steps' and evaluations' seconds from metrics.jsonl."""
    wall = wall_seconds(["train.py", *TINY_RUN, f"--out_dir={out_dir}", "--overwrite=True"])
    records = [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    return wall, evals[-1]["train_seconds"], sum(r["eval_seconds"] for r in evals), len(evals)


def time_to_first_token(out_dir):
    """Seconds from starting sample.py to the first generated character on its output."""
    prompt = "ROMEO:"
    t0 = time.perf_counter()
    process = subprocess.Popen(
        [
            sys.executable,
            "sample.py",
            f"--out_dir={out_dir}",
            f"--start={prompt}",
            "--max_new_tokens=50",
            "--num_samples=1",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    shown = b""
    while len(shown) <= len(prompt):
        byte = process.stdout.read(1)
        if not byte:
            raise SystemExit(f"sample.py ended before generating anything (exit code {process.wait()})")
        shown += byte
    seconds = time.perf_counter() - t0
    process.stdout.read()
    process.wait()
    return seconds


def summary(values):
    return min(values), statistics.median(values)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--nanogpt", default="", help="a nanoGPT checkout with data/shakespeare_char prepared by its own prepare.py"
    )
    args = parser.parse_args()
    if not (REPO / "data" / "shakespeare_char" / "train.bin").is_file():
        raise SystemExit("run python data/shakespeare_char/prepare.py first")
    if args.nanogpt and not (Path(args.nanogpt) / "data" / "shakespeare_char" / "meta.pkl").is_file():
        raise SystemExit(f"prepare nanoGPT's data first: cd {args.nanogpt} && python data/shakespeare_char/prepare.py")

    times = {name: [] for name in ("import torch", "train.py --help", "sample.py --help", "ttft")}
    ours, theirs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            times["import torch"].append(wall_seconds(["-c", "import torch"]))
            times["train.py --help"].append(wall_seconds(["train.py", "--help"]))
            times["sample.py --help"].append(wall_seconds(["sample.py", "--help"]))
            ours.append(tiny_run(tmp))
            times["ttft"].append(time_to_first_token(tmp))
            if args.nanogpt:
                theirs.append(
                    wall_seconds(["train.py", *NANOGPT_TINY_RUN, f"--out_dir={tmp}/nanogpt"], cwd=args.nanogpt)
                )
            print(
                f"run {i + 1}/{args.runs}: tiny run {ours[-1][0]:.2f} s"
                + (f", nanoGPT's {theirs[-1]:.2f} s" if theirs else ""),
                flush=True,
            )

    torch_median = statistics.median(times["import torch"])
    walls = [wall for wall, _, _, _ in ours]
    fixed = [wall - torch_median - steps - evals for wall, steps, evals, _ in ours]
    rows = [
        ("python -c 'import torch'", *summary(times["import torch"]), ""),
        (
            "python train.py --help",
            *summary(times["train.py --help"]),
            f"{statistics.median(times['train.py --help']) / torch_median:.2f}x import torch",
        ),
        (
            "python sample.py --help",
            *summary(times["sample.py --help"]),
            f"{statistics.median(times['sample.py --help']) / torch_median:.2f}x import torch",
        ),
        ("tiny run, whole process", *summary(walls), f"{ours[0][3]} evaluations"),
        ("  its 300 steps", *summary([steps for _, steps, _, _ in ours]), ""),
        ("  its evaluations", *summary([evals for _, _, evals, _ in ours]), ""),
        ("  fixed cost beyond import torch", *summary(fixed), "whole - import torch - steps - evaluations"),
        ("sample.py time to first token", *summary(times["ttft"]), ""),
    ]
    if theirs:
        rows.append(
            (
                "nanoGPT's tiny run, whole process",
                *summary(theirs),
                f"ours is {statistics.median(theirs) / statistics.median(walls):.2f}x faster (medians)",
            )
        )
    print(f"\n{args.runs} runs each, {sys.platform}, {os.cpu_count()} CPUs")
    print("| what | best s | median s | note |\n|---|---|---|---|")
    for name, best, median, note in rows:
        print(f"| {name} | {best:.2f} | {median:.2f} | {note} |")


if __name__ == "__main__":
    main()
