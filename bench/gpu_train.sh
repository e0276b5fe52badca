#!/usr/bin/env bash
# The GPU training-speed figures (GPT-2 124M against the card's peak; Muon's step against AdamW's), in one
# device call of at most 8 minutes, the most important first. Run from the repo root on a CUDA machine with
# data/shakespeare_char prepared (carry it to the device). Logs go to $OUT (default gpu-logs/); the table
# of figures is printed last.
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"

# train.py's own step (nanogpt/step.py) on random tokens, bf16, compiled, 30 timed steps after 10
bench() {
    local name=$1
    shift
    timeout 150 $PY bench.py --real_data=False --compile=True --dtype=bfloat16 --iters=30 "$@" > "$OUT/bench_$name.log" 2>&1
}
# 1. GPT-2 124M at 12 x 1024 tokens (the goal: <= 21 ms, >= 50% of 989 TFLOPS), then larger micro-batches
bench adamw_12 --batch_size=12
bench adamw_16 --batch_size=16
bench adamw_32 --batch_size=32
# 2. Muon for the blocks' matrices at GPT-2 size (the goal: <= 1.15x the AdamW step), and its step alone:
# torch.optim.Muon against the batched one
bench muon_12 --batch_size=12 --optimizer=muon
timeout 60 $PY bench/muon_step.py --device=cuda --steps=20 2>&1 | tee "$OUT/muon_step.log"
# 3. the spec's char model, classic and modern configs: 300 steps each (the goal: modern <= 1.15x classic)
for config in train_shakespeare_char train_shakespeare_char_modern; do
    timeout 150 $PY train.py config/$config.py --out_dir="$OUT/out-$config" --overwrite=True --max_iters=300 \
        --eval_interval=100000 --eval_iters=1 --log_interval=10 > "$OUT/$config.log" 2>&1
done
# 4. where the GPT-2 step's GPU time goes
timeout 120 $PY bench/profile_step.py --device=cuda --n_layer=12 --n_head=12 --n_embd=768 --block_size=1024 \
    --batch_size=12 --vocab_size=50304 --compile --steps=3 > "$OUT/profile_124M.log" 2>&1
tail -22 "$OUT/profile_124M.log"

$PY - "$OUT" <<'PY'
import json, re, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
print("\n| figure | ms/step | tokens/s | MFU |\n|---|---|---|---|")
steps = {}
for name in ("adamw_12", "adamw_16", "adamw_32", "muon_12"):
    text = (out / f"bench_{name}.log").read_text() if (out / f"bench_{name}.log").is_file() else ""
    found = re.search(r"time per iteration: ([\d.]+) ms, ([\d,]+) tokens/s", text)
    mfu = re.search(r"MFU: ([\d.]+)%", text)
    if found:
        steps[name] = float(found[1])
        print(f"| bench.py GPT-2 124M, {name.replace('_', ', batch ')} x 1024 | {found[1]} | {found[2]} | {mfu[1] + '%' if mfu else '-'} |")
    else:
        print(f"| bench.py GPT-2 124M, {name} | failed: see bench_{name}.log | | |")
for config in ("train_shakespeare_char", "train_shakespeare_char_modern"):
    metrics = out / f"out-{config}" / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
    times = [r["ms_per_iter"] for r in records if r["kind"] == "train" and r["iter"] > 100]
    if times:
        steps[config] = statistics.median(times)
        print(f"| {config}, median step after 100 | {steps[config]:.2f} | | |")
    else:
        print(f"| {config} | failed: see {config}.log | | |")
if "adamw_12" in steps and "muon_12" in steps:
    print(f"| Muon / AdamW step, GPT-2 124M | {steps['muon_12'] / steps['adamw_12']:.2f}x | | |")
if "train_shakespeare_char" in steps and "train_shakespeare_char_modern" in steps:
    print(f"| modern / classic step, char model | {steps['train_shakespeare_char_modern'] / steps['train_shakespeare_char']:.2f}x | | |")
PY
