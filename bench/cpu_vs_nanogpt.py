"""nanoGPT's own CPU command, run by nanoGPT and by this project side by side: whole processes, alternating.

    python bench/cpu_vs_nanogpt.py --nanogpt=PATH [--pairs=3] [--max_iters=500] [--step_rounds=10]

nanoGPT's README trains on a CPU with `python train.py config/train_shakespeare_char.py --device=cpu
--compile=False --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4
--n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0`. Both projects run that command
(--max_iters and --lr_decay_iters set to --max_iters; ours with its own --out_dir and --overwrite=True),
each in its own checkout with tiny Shakespeare prepared by its own prepare script, one after the other,
--pairs times. Prints each run's wall time, median step time (from its log, after step 10) and last
val loss, the medians, and how many times faster ours is, whole and per step. Then, in this one process
(--step_rounds, 0 for none), the two projects' training steps on that command's model and batch,
alternating: nanoGPT's model.py and optimizer as its train.py steps them, and ours (nanogpt/training/
step.py), with each step's share of time in matrix multiplies (torch.profiler): whatever both spend
there, neither can save. PATH is a nanoGPT checkout (e.g. a clone of github.com/karpathy/nanoGPT); its
data is prepared from this repo's data/shakespeare_char/input.txt if it has none.
"""

import argparse
import importlib.util
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

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from nanogpt.files import shared_data_dir  # noqa: E402
from nanogpt.model import GPT, GPTConfig  # noqa: E402
from nanogpt.system import autocast_context, keep_freed_memory  # noqa: E402
from nanogpt.training.optimizers import make_optimizers  # noqa: E402
from nanogpt.training.step import TrainingStep  # noqa: E402

# the README command's model and batch (4 x 128, 12 x 64 characters, no dropout, no biases) and its
# optimizer settings (the char config's learning rate and beta2, train.py's weight decay)
SHAPE = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65, bias=False, dropout=0.0)
BATCH_SIZE = 12


def readme_command(max_iters):
    return [
        "train.py",
        "config/train_shakespeare_char.py",
        "--device=cpu",
        "--compile=False",
        "--eval_iters=20",
        "--log_interval=1",
        "--block_size=64",
        "--batch_size=12",
        "--n_layer=4",
        "--n_head=4",
        "--n_embd=128",
        f"--max_iters={max_iters}",
        f"--lr_decay_iters={max_iters}",
        "--dropout=0.0",
    ]


# a step's time as each project logs it: nanoGPT "iter 12: loss 2.5, time 41.20ms, mfu 1.1%", ours
# "iter 12/500: loss 2.5, lr 1e-3, 40.1 ms/iter, ..."
STEP_TIME = re.compile(r"^iter (\d+)\S*: loss [\d.]+, (?:time ([\d.]+)ms|.*?([\d.]+) ms/iter)", re.M)


def timed_run(command, cwd):
    """(wall seconds, median ms a step after step 10, the last val loss the run printed)."""
    t0 = time.perf_counter()
    result = subprocess.run([sys.executable, *command], cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} in {cwd} failed:\n{result.stderr[-2000:]}")
    losses = re.findall(r"val loss ([\d.]+)", result.stdout)
    steps = [float(theirs or ours) for i, theirs, ours in STEP_TIME.findall(result.stdout) if int(i) > 10]
    return seconds, statistics.median(steps), float(losses[-1])


def prepare(nanogpt):
    """Tiny Shakespeare for both: ours by our prepare script, nanoGPT's by its own, from the same text."""
    ours = REPO / "data" / "shakespeare_char"
    if not (ours / "train.bin").is_file():
        subprocess.run([sys.executable, "data/shakespeare_char/prepare.py"], cwd=REPO, check=True)
    theirs = nanogpt / "data" / "shakespeare_char"
    if not (theirs / "meta.pkl").is_file():
        text = (
            ours / "input.txt"
            if (ours / "input.txt").is_file()
            else shared_data_dir() / "tinyshakespeare" / "input.txt"
        )
        shutil.copy2(text, theirs / "input.txt")
        subprocess.run([sys.executable, "prepare.py"], cwd=theirs, check=True)


def step_functions(nanogpt):
    """{name: one training step} for nanoGPT's model and optimizer (its train.py's step: forward,
    backward, clipping, AdamW, zero_grad) and ours, on one fixed batch."""
    spec = importlib.util.spec_from_file_location("nanogpt_upstream_model", nanogpt / "model.py")
    upstream = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(upstream)
    batch = (torch.randint(65, (BATCH_SIZE, SHAPE["block_size"])), torch.randint(65, (BATCH_SIZE, SHAPE["block_size"])))
    torch.manual_seed(0)
    theirs = upstream.GPT(upstream.GPTConfig(**SHAPE))
    their_optimizer = theirs.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")

    def their_step():
        _, loss = theirs(*batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0)
        their_optimizer.step()
        their_optimizer.zero_grad(set_to_none=True)

    torch.manual_seed(0)
    ours = GPT(GPTConfig(**SHAPE))
    optimizers = make_optimizers(ours, 0.1, 1e-3, (0.9, 0.99), "cpu", "adamw")
    ctx, scaler = autocast_context("cpu", "float32"), torch.amp.GradScaler("cpu", enabled=False)
    return {
        "nanoGPT": their_step,
        "ours": lambda: TrainingStep(ours, optimizers, scaler, ctx, grad_clip=1.0)(batch, lambda: batch),
    }


def compare_steps(nanogpt, rounds, steps=50):
    """Both steps in this process, alternating (the order swapped every round); prints ms a step and
    the share of it in matrix multiplies."""
    keep_freed_memory()  # as train.py does on the CPU
    functions = step_functions(nanogpt)
    ms = {name: [] for name in functions}
    for round_ in range(rounds):
        for name in functions if round_ % 2 == 0 else reversed(list(functions)):
            for _ in range(5):
                functions[name]()
            t0 = time.perf_counter()
            for _ in range(steps):
                functions[name]()
            ms[name].append((time.perf_counter() - t0) / steps * 1000)
    print(f"\nthe two training steps in one process, {rounds} alternating rounds of {steps} steps\n")
    print(
        "| | ms a step, each round | median | matrix multiplies (aten::mm), share of operator time |\n|---|---|---|---|"
    )
    for name, function in functions.items():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(10):
                function()
        events = prof.key_averages()
        share = sum(e.self_cpu_time_total for e in events if e.key == "aten::mm") / sum(
            e.self_cpu_time_total for e in events
        )
        print(
            f"| {name} | {', '.join(f'{x:.1f}' for x in ms[name])} | {statistics.median(ms[name]):.2f} | "
            f"{share * 100:.0f}% |"
        )
    ratios = [theirs / ours for theirs, ours in zip(ms["nanoGPT"], ms["ours"])]
    print(
        f"\nours is {statistics.median(ratios):.3f}x as fast a step (median of the rounds' ratios, "
        f"{min(ratios):.3f} to {max(ratios):.3f})"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nanogpt", required=True, help="a nanoGPT checkout")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--max_iters", type=int, default=500)
    parser.add_argument("--step_rounds", type=int, default=10, help="rounds of the in-process step comparison; 0: none")
    args = parser.parse_args()
    nanogpt = Path(args.nanogpt).resolve()
    prepare(nanogpt)
    command = readme_command(args.max_iters)
    runs = {"nanoGPT": [], "ours": []}
    with tempfile.TemporaryDirectory() as tmp:
        for pair in range(args.pairs):
            runs["nanoGPT"].append(timed_run([*command, f"--out_dir={tmp}/theirs"], nanogpt))
            runs["ours"].append(timed_run([*command, f"--out_dir={tmp}/ours", "--overwrite=True"], REPO))
            print(
                f"pair {pair + 1}: nanoGPT {runs['nanoGPT'][-1][0]:.1f} s, ours {runs['ours'][-1][0]:.1f} s", flush=True
            )
    print(f"\nnanoGPT's README CPU command, --max_iters={args.max_iters}, {args.pairs} alternating pairs\n")
    print(
        "| | wall seconds, each run | median | ms a step, each run | median | last val loss "
        "|\n|---|---|---|---|---|---|"
    )
    wall, step = {}, {}
    for name, results in runs.items():
        wall[name] = statistics.median(r[0] for r in results)
        step[name] = statistics.median(r[1] for r in results)
        print(
            f"| {name} | {', '.join(f'{r[0]:.1f}' for r in results)} | {wall[name]:.1f} | "
            f"{', '.join(f'{r[1]:.1f}' for r in results)}"
            f" | {step[name]:.1f} | {results[-1][2]:.4f} |"
        )
    print(
        f"\nours is {wall['nanoGPT'] / wall['ours']:.2f}x as fast as a whole and "
        f"{step['nanoGPT'] / step['ours']:.2f}x a step (ratios of medians)"
    )
    if args.step_rounds:
        compare_steps(nanogpt, args.step_rounds)


if __name__ == "__main__":
    main()
