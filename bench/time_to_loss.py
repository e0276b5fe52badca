"""Time to a good model on the CPU: wall time from a run's start to its first evaluation at or below a val
loss, for nanoGPT's README CPU command and for our configs, whole processes, alternating.

    python bench/time_to_loss.py --nanogpt=PATH [--pairs=2] [--target=1.88] [--whole]
    python bench/time_to_loss.py --configs=config/train_shakespeare_char_cpu.py --pairs=1   # ours alone

Each run is a fresh process (`python train.py ...`, its stdout read as it comes); the time is taken when
the first "step N: ... val loss X" line with X <= --target arrives, start-up, evaluations and all
included. nanoGPT (PATH, a checkout; its data prepared from the same tiny Shakespeare by its own prepare
script, as bench/cpu_vs_nanogpt.py does) runs its README command (2000 steps, --eval_iters=20) to its end,
which its README puts at "a loss of only 1.88": its time is that of its first evaluation at or below the
target, or else its whole run's. Ours run each of --configs as the README gives it. A run is stopped once
it reaches the target, unless --whole, which also prints its wall time and its last val loss. Prints each
run, then a table of medians, and last each of ours against nanoGPT (the median of the pair ratios).
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu_vs_nanogpt import prepare, readme_command  # noqa: E402

EVAL_LINE = re.compile(r"^step (\d+): train loss [\d.]+, val loss ([\d.]+)")


def run_until(command, cwd, target, whole):
    """(seconds to the first val loss <= target or None, its step, wall seconds, last val loss) of a run."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, *command], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    reached, step, last = None, None, None
    for line in process.stdout:
        match = EVAL_LINE.match(line)
        if not match:
            continue
        last = float(match.group(2))
        if reached is None and last <= target:
            reached, step = time.perf_counter() - t0, int(match.group(1))
            if not whole:
                process.kill()
                break
    process.wait()
    if whole and process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} in {cwd} failed with exit code {process.returncode}")
    return reached, step, time.perf_counter() - t0, last


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nanogpt", default="", help="a nanoGPT checkout; empty: ours alone")
    parser.add_argument(
        "--configs",
        default="config/train_shakespeare_char_cpu.py,config/train_shakespeare_char_cpu_modern.py",
        help="our config files, comma-separated",
    )
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--target", type=float, default=1.88)
    parser.add_argument("--whole", action="store_true", help="run each to its end: wall time and last val loss")
    args = parser.parse_args()
    runs = {}
    if args.nanogpt:
        nanogpt = Path(args.nanogpt).resolve()
        prepare(nanogpt)
        runs["nanoGPT README command"] = (readme_command(2000), nanogpt)
    with tempfile.TemporaryDirectory() as tmp:
        for config in args.configs.split(","):
            runs[config] = (["train.py", config, f"--out_dir={tmp}/{Path(config).stem}", "--overwrite=True"], REPO)
        results = {name: [] for name in runs}
        for pair in range(args.pairs):
            for name, (command, cwd) in runs.items():
                if cwd != REPO:  # nanoGPT ends at about the target (its README: "a loss of only 1.88"): its
                    # time is that of its first evaluation at or below it, else that of its whole run
                    reached, step, wall, last = run_until([*command, f"--out_dir={tmp}/theirs"], cwd, args.target, True)
                    results[name].append((reached or wall, step or 2000, wall, last))
                else:
                    results[name].append(run_until(command, cwd, args.target, args.whole))
                reached, step, wall, last = results[name][-1]
                shown = f"at {reached:.1f} s (step {step})" if reached is not None else "not reached"
                if cwd != REPO and last > args.target:
                    shown = "not reached: its end counts"
                print(f"pair {pair + 1}, {name}: val <= {args.target} {shown}; {wall:.1f} s, last {last}", flush=True)
    print(f"\ntime to val loss <= {args.target}, {args.pairs} alternating round(s)\n")
    print("| run | seconds, each round | median | step | wall (--whole) | last val loss (--whole) |")
    print("|---|---|---|---|---|---|")
    median = {}
    for name, found in results.items():
        times = [r[0] for r in found if r[0] is not None]
        median[name] = statistics.median(times) if len(times) == len(found) else None
        whole = f"{statistics.median(r[2] for r in found):.1f} s | {found[-1][3]:.4f}" if args.whole else "- | -"
        print(
            f"| {name} | {', '.join('-' if r[0] is None else f'{r[0]:.1f}' for r in found)} | "
            f"{'-' if median[name] is None else f'{median[name]:.1f}'} | {found[-1][1]} | {whole} |"
        )
    if args.nanogpt:
        theirs = results["nanoGPT README command"]
        for name in args.configs.split(","):
            ratios = [t[0] / o[0] for t, o in zip(theirs, results[name]) if t[0] and o[0]]
            if ratios:
                print(f"{name}: {statistics.median(ratios):.2f}x nanoGPT's time (median of {len(ratios)} pairs)")


if __name__ == "__main__":
    main()
