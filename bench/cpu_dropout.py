"""torch's own CPU dropout against nanogpt/cpu_dropout.py: step time and loss curves, side by side.

    python bench/cpu_dropout.py [--iters=1000] [--seeds=3]   # about 12 minutes on 2 cores

Needs data/shakespeare_char prepared. "torch" runs are the same scripts with the model's eager-CPU check
turned off in their process, so that dropout and attention go through F.dropout and
scaled_dot_product_attention as they do without cpu_dropout.
- Speed: bench.py's step on the spec char model (6 x 384, batch 64 x 256, dropout 0.2, float32), torch
  and ours alternating, twice each; ms/iter, MFU and the ratio.
- Loss: config/train_shakespeare_char_cpu.py at dropout 0.2 for --iters steps, one run per seed with
  each; the val loss at every eval. The two draw their masks differently, so the curves can only agree
  as the same random process does with other seeds: compare the gap between them with the spread
  across seeds.
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
SPEC_MODEL = ["--dataset=shakespeare_char", "--device=cpu", "--dtype=float32", "--n_layer=6", "--n_head=6",
              "--n_embd=384", "--block_size=256", "--batch_size=64", "--dropout=0.2", "--warmup_iters=2", "--iters=3"]
TORCH_DROPOUT = "import nanogpt.model; nanogpt.model.eager_cpu = lambda x: False; "


def run(script, args, path, env):
    """Run a root script with our dropout ("ours") or torch's ("torch"); return its stdout."""
    argv = [script, *args]
    code = f"{TORCH_DROPOUT if path == 'torch' else ''}import runpy, sys; sys.argv = {argv!r}; runpy.run_path({script!r}, run_name='__main__')"
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
        times, mfus = {"torch": [], "ours": []}, {"torch": [], "ours": []}
        for _ in range(2):
            for path in times:
                out = run("bench.py", SPEC_MODEL, path, env)
                times[path].append(float(re.search(r"time per iteration: ([\d.]+) ms", out).group(1)))
                mfus[path].append(float(re.search(r"MFU: ([\d.]+)%", out).group(1)))
                print(f"{path:5s} spec char model, dropout 0.2: {times[path][-1]:,.0f} ms/iter, MFU {mfus[path][-1]:.1f}%", flush=True)
        torch_ms, ours_ms = statistics.mean(times["torch"]), statistics.mean(times["ours"])
        print(f"mean: torch {torch_ms:,.0f} ms/iter (MFU {statistics.mean(mfus['torch']):.1f}%), "
              f"ours {ours_ms:,.0f} ms/iter (MFU {statistics.mean(mfus['ours']):.1f}%): {torch_ms / ours_ms:.2f}x faster")

    curves = {"torch": [], "ours": []}
    for seed in range(1, args.seeds + 1):
        for path in curves:
            with tempfile.TemporaryDirectory() as out_dir:
                run("train.py", ["config/train_shakespeare_char_cpu.py", f"--out_dir={out_dir}", "--dropout=0.2",
                                 f"--seed={seed}", f"--max_iters={args.iters}", f"--lr_decay_iters={args.iters}",
                                 f"--eval_interval={args.iters // 4}"], path, os.environ)
                records = [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]
            curves[path].append([(r["iter"], r["val_loss"]) for r in records if r["kind"] == "eval"])
            print(f"seed {seed} {path:5s}: val loss " + ", ".join(f"{loss:.4f} @ {step}" for step, loss in curves[path][-1]), flush=True)
    for path, runs in curves.items():
        finals = [curve[-1][1] for curve in runs]
        spread = f" (seeds {min(finals):.4f} to {max(finals):.4f})" if len(finals) > 1 else ""
        print(f"{path:5s} final val loss, mean of {len(finals)} seeds: {statistics.mean(finals):.4f}{spread}")


if __name__ == "__main__":
    main()
