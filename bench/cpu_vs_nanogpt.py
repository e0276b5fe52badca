"""nanoGPT's own CPU command, run by nanoGPT and by this project side by side: whole processes, alternating.

    python bench/cpu_vs_nanogpt.py --nanogpt=PATH [--pairs=3] [--max_iters=500]

nanoGPT's README trains on a CPU with `python train.py config/train_shakespeare_char.py --device=cpu
--compile=False --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4
--n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0`. Both projects run that command
(--max_iters and --lr_decay_iters set to --max_iters; ours with its own --out_dir and --overwrite=True),
each in its own checkout with tiny Shakespeare prepared by its own prepare script, one after the other,
--pairs times. Prints each run's wall time and last val loss, the medians, and how many times faster
ours is. PATH is a nanoGPT checkout (e.g. a clone of github.com/karpathy/nanoGPT); its data is prepared
from this repo's data/shakespeare_char/input.txt if it has none.
"""

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nanogpt.files import shared_data_dir  # noqa: E402


def readme_command(max_iters):
    return [
        "train.py", "config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1",
        "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", f"--max_iters={max_iters}",
        f"--lr_decay_iters={max_iters}", "--dropout=0.0",
    ]


def timed_run(command, cwd):
    """(wall seconds, the last val loss the run printed)."""
    t0 = time.perf_counter()
    result = subprocess.run([sys.executable, *command], cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} in {cwd} failed:\n{result.stderr[-2000:]}")
    losses = re.findall(r"val loss ([\d.]+)", result.stdout)
    return seconds, float(losses[-1])


def prepare(nanogpt):
    """Tiny Shakespeare for both: ours by our prepare script, nanoGPT's by its own, from the same text."""
    ours = REPO / "data" / "shakespeare_char"
    if not (ours / "train.bin").is_file():
        subprocess.run([sys.executable, "data/shakespeare_char/prepare.py"], cwd=REPO, check=True)
    theirs = nanogpt / "data" / "shakespeare_char"
    if not (theirs / "meta.pkl").is_file():
        text = ours / "input.txt" if (ours / "input.txt").is_file() else shared_data_dir() / "tinyshakespeare" / "input.txt"
        shutil.copy2(text, theirs / "input.txt")
        subprocess.run([sys.executable, "prepare.py"], cwd=theirs, check=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nanogpt", required=True, help="a nanoGPT checkout")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--max_iters", type=int, default=500)
    args = parser.parse_args()
    nanogpt = Path(args.nanogpt).resolve()
    prepare(nanogpt)
    command = readme_command(args.max_iters)
    runs = {"nanoGPT": [], "ours": []}
    with tempfile.TemporaryDirectory() as tmp:
        for pair in range(args.pairs):
            runs["nanoGPT"].append(timed_run([*command, f"--out_dir={tmp}/theirs"], nanogpt))
            runs["ours"].append(timed_run([*command, f"--out_dir={tmp}/ours", "--overwrite=True"], REPO))
            print(f"pair {pair + 1}: nanoGPT {runs['nanoGPT'][-1][0]:.1f} s, ours {runs['ours'][-1][0]:.1f} s", flush=True)
    print(f"\nnanoGPT's README CPU command, --max_iters={args.max_iters}, {args.pairs} alternating pairs\n")
    print("| | wall seconds, each run | median | last val loss |\n|---|---|---|---|")
    medians = {}
    for name, results in runs.items():
        medians[name] = statistics.median(s for s, _ in results)
        print(f"| {name} | {', '.join(f'{s:.1f}' for s, _ in results)} | {medians[name]:.1f} | {results[-1][1]:.4f} |")
    print(f"\nours is {medians['nanoGPT'] / medians['ours']:.2f}x as fast (ratio of medians)")


if __name__ == "__main__":
    main()
