"""The CPU step's two speed-ups, each switched off in turn: step time side by side, and loss curves.

    python bench/cpu_speedups.py [--iters=1000] [--seeds=3]   # about 15 minutes on 2 cores

Needs data/shakespeare_char prepared. A run with a speed-up off is the same script with one function
replaced in its process:
- "torch dropout": the model's eager-CPU check answers no, so dropout and attention go through
  F.dropout and scaled_dot_product_attention, as they do without nanogpt/cpu_dropout.py;
- "glibc malloc": keep_freed_memory does nothing, so glibc hands large freed blocks back to the kernel.
Speed: bench.py's step on the spec char model (6 x 384, batch 64 x 256, float32) at dropout 0.2 and 0,
the variants alternating, twice each; ms/iter and MFU. Loss: config/train_shakespeare_char_cpu.py at
dropout 0.2 for --iters steps, one run per seed with each dropout; the val loss at every eval. The two
draw their masks differently, so the curves can only agree as runs with other seeds do: compare the gap
between them with the spread across seeds.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SPEC_MODEL = [
    "--dataset=shakespeare_char",
    "--device=cpu",
    "--dtype=float32",
    "--n_layer=6",
    "--n_head=6",
    "--n_embd=384",
    "--block_size=256",
    "--batch_size=64",
    "--warmup_iters=2",
    "--iters=3",
]
SWITCHED_OFF = {
    "both on": "",
    "torch dropout": "import nanogpt.model; nanogpt.model.eager_cpu = lambda x: False; ",
    "glibc malloc": "import nanogpt.system; nanogpt.system.keep_freed_memory = lambda: None; ",
}


def run(script, args, variant, env):
    """Run a root script with the given speed-up switched off (or none); return its stdout."""
    argv = [script, *args]
    code = (
        f"{SWITCHED_OFF[variant]}import runpy, sys; sys.argv = {argv!r}; runpy.run_path({script!r}, "
        "run_name='__main__')"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        sys.exit(result.stderr.strip())
    return result.stdout


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=1000, help="training steps of each loss run")
    parser.add_argument("--seeds", type=int, default=3, help="loss runs with each dropout")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as cache_dir:
        env = {**os.environ, "XDG_CACHE_HOME": cache_dir}  # the matmul peak measured afresh, once
        for dropout, variants in ((0.2, list(SWITCHED_OFF)), (0.0, ["both on", "glibc malloc"])):
            times, mfus = {v: [] for v in variants}, {v: [] for v in variants}
            for _ in range(2):
                for variant in variants:
                    out = run("bench.py", [*SPEC_MODEL, f"--dropout={dropout}"], variant, env)
                    times[variant].append(float(re.search(r"time per iteration: ([\d.]+) ms", out).group(1)))
                    mfus[variant].append(float(re.search(r"MFU: ([\d.]+)%", out).group(1)))
                    print(
                        f"dropout {dropout}, {variant:13s}: {times[variant][-1]:,.0f} ms/iter, MFU "
                        f"{mfus[variant][-1]:.1f}%",
                        flush=True,
                    )
            fastest = statistics.mean(times["both on"])
            for variant in variants:
                ms = statistics.mean(times[variant])
                print(
                    f"mean, dropout {dropout}, {variant:13s}: {ms:,.0f} ms/iter, MFU "
                    f"{statistics.mean(mfus[variant]):.1f}%, "
                    f"{ms / fastest:.2f}x the time with both on"
                )

    curves = {"both on": [], "torch dropout": []}
    for seed in range(1, args.seeds + 1):
        for variant in curves:
            with tempfile.TemporaryDirectory() as out_dir:
                run(
                    "train.py",
                    [
                        "config/train_shakespeare_char_cpu.py",
                        f"--out_dir={out_dir}",
                        "--dropout=0.2",
                        f"--seed={seed}",
                        f"--max_iters={args.iters}",
                        f"--lr_decay_iters={args.iters}",
                        f"--eval_interval={args.iters // 4}",
                    ],
                    variant,
                    os.environ,
                )
                records = [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]
            curves[variant].append([(r["iter"], r["val_loss"]) for r in records if r["kind"] == "eval"])
            print(
                f"seed {seed}, {variant:13s}: val loss "
                + ", ".join(f"{loss:.4f} @ {step}" for step, loss in curves[variant][-1]),
                flush=True,
            )
    for variant, runs in curves.items():
        finals = [curve[-1][1] for curve in runs]
        spread = f" (seeds {min(finals):.4f} to {max(finals):.4f})" if len(finals) > 1 else ""
        print(f"{variant:13s} final val loss, mean of {len(finals)} seeds: {statistics.mean(finals):.4f}{spread}")


if __name__ == "__main__":
    main()
