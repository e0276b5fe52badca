"""The README's CPU step table: ms/iter, tokens/s and MFU of the char-level configs, eager and compiled.

    python bench/cpu_table.py            # about 10 minutes on 2 cores; needs data/shakespeare_char prepared

Runs bench.py (real Shakespeare batches, float32) for each config with compile off and on, one after the
other in one run. The matmul peak that MFU refers to is measured afresh at the start of the run (a
private cache folder), so a machine that is slower today is not flattered by yesterday's figure. Where
dropout is 0 the eager and compiled runs see the same batches from the same weights, so their losses
must agree to float rounding: the largest difference is printed.
"""

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nanogpt.system import cpu_name  # noqa: E402

DATA = ["--dataset=shakespeare_char", "--data_dir=data", "--device=cpu", "--dtype=float32"]
CONFIGS = [
    (
        "CPU config: 4 x 128, batch 12 x 64",
        [
            "--n_layer=4",
            "--n_head=4",
            "--n_embd=128",
            "--block_size=64",
            "--batch_size=12",
            "--warmup_iters=10",
            "--iters=50",
        ],
    ),
    (
        "spec char model: 6 x 384, batch 64 x 256, dropout 0",
        [
            "--n_layer=6",
            "--n_head=6",
            "--n_embd=384",
            "--block_size=256",
            "--batch_size=64",
            "--warmup_iters=2",
            "--iters=5",
        ],
    ),
    (
        "spec char model, dropout 0.2 (as it trains)",
        [
            "--n_layer=6",
            "--n_head=6",
            "--n_embd=384",
            "--block_size=256",
            "--batch_size=64",
            "--warmup_iters=2",
            "--iters=5",
            "--dropout=0.2",
        ],
    ),
]


def run_bench(args, cache_dir):
    result = subprocess.run(
        [sys.executable, "bench.py", *DATA, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "XDG_CACHE_HOME": cache_dir},
    )
    if result.returncode != 0:
        sys.exit(result.stderr.strip())
    out = result.stdout
    ms, tokens = re.search(r"time per iteration: ([\d.]+) ms, ([\d,]+) tokens/s", out).groups()
    mfu, peak = re.search(r"MFU: ([\d.]+)% of this CPU's measured float32 matmul peak, (\d+) GFLOPS", out).groups()
    losses = [float(v) for v in re.findall(r"loss ([\d.]+)", out)]
    return float(ms), int(tokens.replace(",", "")), float(mfu), losses, int(peak)


def main():
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| config | compile | ms/iter | tokens/s | MFU | eager vs compiled losses |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as cache_dir:
        for name, args in CONFIGS:
            runs = {compiled: run_bench([*args, f"--compile={compiled}"], cache_dir) for compiled in (False, True)}
            eager_losses, compiled_losses = runs[False][3], runs[True][3]
            if "--dropout=0.2" in args:
                agreement = "differ (dropout masks are drawn differently)"
            else:
                agreement = f"max difference {max(abs(a - b) for a, b in zip(eager_losses, compiled_losses)):.1e}"
            for compiled, (ms, tokens, mfu, _, _) in runs.items():
                print(
                    f"| {name} | {'on' if compiled else 'off'} | {ms:,.1f} | {tokens:,} | {mfu:.1f}% | "
                    f"{agreement if compiled else ''} |",
                    flush=True,
                )
        print(f"MFU against this run's measured float32 matmul peak: {runs[False][4]} GFLOPS")


if __name__ == "__main__":
    main()
