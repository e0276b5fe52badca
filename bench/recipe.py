"""Classic vs modern recipe: validation loss against training time, side by side.

    python bench/recipe.py [--classic_iters=2000] [--modern_iters=600] [--device=cpu]

Trains config/train_shakespeare_char_cpu.py (GPT-2 style, AdamW, cosine) and
config/train_shakespeare_char_cpu_modern.py (same size and data; rotary, RMSNorm, QK-norm, ReLU^2,
untied, soft-capped logits, zero-init projections, Muon, warmup-stable-decay) one after the other,
evaluating both on the same val batches every --eval_interval steps, then compares them with
compare.py: the table (best val loss, tokens/s, training time to the classic run's best, evaluations
left out) and bench/recipe.png. Then it checks whether compile=True speeds up either step. Needs
data/shakespeare_char prepared.
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from compare import compare  # noqa: E402
from nanogpt.training.train_log import read_records  # noqa: E402

CONFIGS = {"classic": "config/train_shakespeare_char_cpu.py", "modern": "config/train_shakespeare_char_cpu_modern.py"}


def train(config, iters, device, eval_interval, out_dir, extra=()):
    """Run train.py into out_dir; return the median tokens/s of its logged steps."""
    args = [
        sys.executable,
        "train.py",
        config,
        f"--out_dir={out_dir}",
        f"--device={device}",
        f"--max_iters={iters}",
        f"--lr_decay_iters={iters}",
        f"--eval_interval={eval_interval}",
        "--eval_iters=100",
        "--log_interval=1",
        "--overwrite=True",
        *extra,
    ]
    subprocess.run(args, cwd=REPO, check=True, capture_output=True)
    return statistics.median([r["tokens_per_sec"] for r in read_records(out_dir) if r["kind"] == "train"][5:])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classic_iters", type=int, default=2000)
    parser.add_argument("--modern_iters", type=int, default=600)
    parser.add_argument("--eval_interval", type=int, default=100)
    parser.add_argument("--compile_iters", type=int, default=150, help="steps of the compile=True/False speed check")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folders = []
        for name, iters in (("classic", args.classic_iters), ("modern", args.modern_iters)):
            folders.append(Path(tmp) / name)
            train(CONFIGS[name], iters, args.device, args.eval_interval, folders[-1])
        rows = compare(folders, REPO / "bench" / "recipe.png")
        classic, modern = rows
        if modern["seconds_to_target"] is not None:
            print(
                "modern reached the classic best in "
                f"{modern['seconds_to_target'] / classic['seconds_to_target']:.2f} of the classic time"
            )
        for name in CONFIGS:
            speeds = {
                flag: train(
                    CONFIGS[name],
                    args.compile_iters,
                    args.device,
                    10**6,
                    Path(tmp) / "speed",
                    [f"--compile={flag}", "--eval_iters=1"],
                )
                for flag in (False, True)
            }
            print(
                f"{name} step: {speeds[False]:,.0f} tokens/s eager, {speeds[True]:,.0f} compiled "
                f"({speeds[True] / speeds[False]:.2f}x)"
            )


if __name__ == "__main__":
    main()
