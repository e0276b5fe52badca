"""Classic vs modern recipe: validation loss against training time, side by side.

    python bench/recipe.py [--classic_iters=2000] [--modern_iters=600] [--device=cpu]

Trains config/train_shakespeare_char_cpu.py (GPT-2 style, AdamW, cosine) and
config/train_shakespeare_char_cpu_modern.py (same size and data; rotary, RMSNorm, QK-norm, ReLU^2,
untied, soft-capped logits, zero-init projections, Muon, warmup-stable-decay) one after the other,
evaluating both on the same val batches every --eval_interval steps. Time is training time: the sum of
logged step times, with evaluations left out. Prints val loss against time, the time the modern run
needs to reach the classic run's final val loss, tokens/s of both, whether compile=True speeds up
either step, and writes bench/recipe.png. Needs data/shakespeare_char prepared.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIGS = {"classic": "config/train_shakespeare_char_cpu.py", "modern": "config/train_shakespeare_char_cpu_modern.py"}


def train(config, iters, device, eval_interval, extra=()):
    """Run train.py; return [(training seconds, val loss)] at each eval, and the median tokens/s."""
    with tempfile.TemporaryDirectory() as out_dir:
        args = [
            sys.executable, "train.py", config, f"--out_dir={out_dir}", f"--device={device}", f"--max_iters={iters}",
            f"--lr_decay_iters={iters}", f"--eval_interval={eval_interval}", "--eval_iters=100", "--log_interval=1", *extra,
        ]
        subprocess.run(args, cwd=REPO, check=True, capture_output=True)
        records = [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]
    seconds, curve, speeds = 0.0, [], []
    for r in records:
        if r["kind"] == "train":
            seconds += r["ms_per_iter"] / 1000
            speeds.append(r["tokens_per_sec"])
        else:
            curve.append((seconds, r["val_loss"]))
    return curve, statistics.median(speeds[5:])


def time_to_reach(curve, target):
    """Training seconds at the first eval whose val loss is at or below target (None if never)."""
    return next((t for t, loss in curve if loss <= target), None)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classic_iters", type=int, default=2000)
    parser.add_argument("--modern_iters", type=int, default=600)
    parser.add_argument("--eval_interval", type=int, default=100)
    parser.add_argument("--compile_iters", type=int, default=150, help="steps of the compile=True/False speed check")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    runs = {}
    for name, iters in (("classic", args.classic_iters), ("modern", args.modern_iters)):
        runs[name] = train(CONFIGS[name], iters, args.device, args.eval_interval)
        curve, speed = runs[name]
        print(f"{name}: {iters} steps, {speed:,.0f} tokens/s (median)")
        for t, loss in curve:
            print(f"  {t:7.1f} s  val {loss:.4f}")

    classic_curve, modern_curve = runs["classic"][0], runs["modern"][0]
    target, classic_time = classic_curve[-1][1], classic_curve[-1][0]
    reached = time_to_reach(modern_curve, target)
    print(f"classic final val loss {target:.4f} after {classic_time:.1f} s of training")
    print(f"modern final val loss {modern_curve[-1][1]:.4f} after {modern_curve[-1][0]:.1f} s")
    if reached is None:
        print("modern never reached the classic final val loss")
    else:
        print(f"modern reached {target:.4f} after {reached:.1f} s: {reached / classic_time:.2f} of the classic time")

    for name in CONFIGS:
        speeds = {}
        for flag in (False, True):
            _, speeds[flag] = train(CONFIGS[name], args.compile_iters, args.device, 10**6, [f"--compile={flag}", "--eval_iters=1"])
        print(f"{name} step: {speeds[False]:,.0f} tokens/s eager, {speeds[True]:,.0f} compiled ({speeds[True] / speeds[False]:.2f}x)")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, (curve, _) in runs.items():
        ax.plot([t for t, _ in curve], [loss for _, loss in curve], "o-", ms=3, label=f"{name} ({CONFIGS[name]})")
    ax.axhline(target, color="gray", ls=":", lw=1)
    ax.set_xlabel("training time (s), evaluations excluded")
    ax.set_ylabel("val loss")
    ax.set_ylim(top=2.6)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(REPO / "bench" / "recipe.png", dpi=100)
    print("plot: bench/recipe.png")


if __name__ == "__main__":
    main()
