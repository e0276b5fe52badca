#!/usr/bin/env bash
# The GPU training-speed figures, in two device calls of at most 8 minutes each, every ratio's two sides
# in the same call. Run from the repo root on a CUDA machine; logs go to $OUT (default gpu-logs/), and the
# table of figures is printed last.
#   bash bench/gpu_train.sh 1   GPT-2 124M step against the card's peak and against nanoGPT's own bench.py
#                               (a nanoGPT checkout in .nanogpt: carry it, see gpu_env.sh): attention
#                               kernels, fused loss, micro-batches 12/16/32, train.py's logged MFU against
#                               bench.py's for the same step (needs data/shakespeare, GPT-2 tokens, and
#                               .tiktoken_cache: carry both), and where the step's time goes
#   bash bench/gpu_train.sh 2   Muon against AdamW, the modern 124M config, fp8, and the spec's char model
#                               (classic, modern, fp8): needs data/shakespeare_char (carry it), and for
#                               fp8 a torchao wheel in .whl/ (carry it; see the device notes)
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
PART=${1:-1}

# train.py's own step (nanogpt/training/step.py) on random tokens, bf16, compiled, 30 timed steps after 10
bench() {
    local name=$1
    shift
    timeout 150 $PY bench.py --real_data=False --compile=True --dtype=bfloat16 --iters=30 "$@" > "$OUT/bench_$name.log" 2>&1
}
# the spec's char model for 300 steps (one eval at the end), step times and losses into $OUT/out-NAME
char_run() {
    local name=$1
    shift
    timeout 150 $PY train.py "$@" --out_dir="$OUT/out-$name" --overwrite=True --max_iters=300 --eval_interval=300 \
        --eval_iters=20 --log_interval=10 > "$OUT/$name.log" 2>&1
}

if [ "$PART" = 1 ]; then
    # the goal: <= 21 ms per 12 x 1024 step, >= 50% of 989 TFLOPS; each candidate against torch's defaults
    bench adamw_12 --batch_size=12
    # nanoGPT's bench.py times the same step (12 x 1024, no biases, bf16 autocast, compiled, AdamW)
    if [ -d "$NANOGPT" ]; then
        (cd "$NANOGPT" && timeout 200 $PY bench.py --real_data=False --compile=True) > "$OUT/nanogpt_bench.log" 2>&1
    fi
    bench fused_loss_12 --batch_size=12 --fused_loss=True
    bench flash_12 --batch_size=12 --attention=flash
    bench cudnn_12 --batch_size=12 --attention=cudnn
    bench adamw_16 --batch_size=16
    bench adamw_32 --batch_size=32
    bench fused_loss_32 --batch_size=32 --fused_loss=True
    # train.py's own MFU (config/train_gpt2.py, 4 micro-batches a step on one GPU) against bench.py's for that step
    bench adamw_12_accum4 --batch_size=12 --gradient_accumulation_steps=4
    timeout 150 $PY train.py config/train_gpt2.py --dataset=shakespeare --gradient_accumulation_steps=4 --max_iters=60 \
        --eval_interval=100000 --eval_iters=1 --log_interval=10 --out_dir="$OUT/out-gpt2" > "$OUT/train_gpt2.log" 2>&1
    timeout 100 $PY bench/profile_step.py --device=cuda --n_layer=12 --n_head=12 --n_embd=768 --block_size=1024 \
        --batch_size=12 --vocab_size=50304 --compile --steps=3 > "$OUT/profile_124M.log" 2>&1
    tail -22 "$OUT/profile_124M.log"
else
    if ls .whl/torchao-*.whl > /dev/null 2>&1; then
        $PY -m pip install -q --no-index --no-deps --target /tmp/site .whl/torchao-*.whl && export PYTHONPATH=/tmp/site
    fi
    # Muon at GPT-2 size (the goal: <= 1.15x the AdamW step), and its optimizer step alone
    bench adamw_12 --batch_size=12
    bench muon_12 --batch_size=12 --optimizer=muon
    bench fp8_12 --batch_size=12 --fp8=True
    # config/train_gpt2_modern.py's step against config/train_gpt2.py's, one micro-batch of 16 x 1024 each
    bench gpt2_16 config/train_gpt2.py --batch_size=16 --gradient_accumulation_steps=1
    bench gpt2_modern_16 config/train_gpt2_modern.py --batch_size=16 --gradient_accumulation_steps=1
    timeout 60 $PY bench/muon_step.py --device=cuda --steps=20 > "$OUT/muon_step.log" 2>&1
    # the char model (the goal: modern step <= 1.15x classic), and fp8's loss curve against bf16's
    char_run classic config/train_shakespeare_char.py
    char_run modern config/train_shakespeare_char_modern.py
    char_run classic_fp8 config/train_shakespeare_char.py --fp8=True
    tail -4 "$OUT/muon_step.log"
fi

$PY - "$OUT" <<'PY'
import json, re, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
print("\n| figure (bench.py: train.py's step, bf16, compile) | ms/step | tokens/s | MFU | peak memory (MiB) |\n|---|---|---|---|---|")
steps = {}
for log in sorted(out.glob("bench_*.log"), key=lambda p: p.stat().st_mtime):
    name, text = log.stem[len("bench_"):], log.read_text()
    found = re.search(r"time per iteration: ([\d.]+) ms, ([\d,]+) tokens/s", text)
    mfu, memory = re.search(r"MFU: ([\d.]+)%", text), re.search(r"peak memory of the timed steps: ([\d,]+) MiB", text)
    if found:
        steps[name] = float(found[1])
        print(f"| {name} | {found[1]} | {found[2]} | {mfu[1] + '%' if mfu else '-'} | {memory[1] if memory else '-'} |")
    else:
        last = text.strip().splitlines()[-1] if text.strip() else "no output"
        print(f"| {name} | failed: {last[:120]} | | | |")
theirs = out / "nanogpt_bench.log"
found = re.findall(r"time per iteration: ([\d.]+)ms", theirs.read_text()) if theirs.is_file() else []
if found and "adamw_12" in steps:
    print(f"| nanoGPT's bench.py, the same step | {float(found[-1]):.2f} | | | |")
    print(f"| nanoGPT's step / ours (adamw_12): how many times faster ours is | {float(found[-1]) / steps['adamw_12']:.3f}x | | | |")
elif theirs.is_file():
    print(f"| nanoGPT's bench.py | failed: {theirs.read_text().strip().splitlines()[-1][:120] if theirs.read_text().strip() else 'no output'} | | | |")
metrics = out / "out-gpt2" / "metrics.jsonl"
if metrics.is_file() and "adamw_12_accum4" in steps:
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    logged = [r["mfu"] for r in records if r.get("kind") == "train" and r["iter"] > 20 and "mfu" in r]
    bench_mfu = re.search(r"MFU: ([\d.]+)%", (out / "bench_adamw_12_accum4.log").read_text())
    if logged and bench_mfu:
        print(f"| train.py config/train_gpt2.py, 4 x 12 x 1024, median logged MFU after step 20 | {100 * statistics.median(logged):.1f}% "
              f"| bench.py's {bench_mfu[1]}% | ratio {100 * statistics.median(logged) / float(bench_mfu[1]):.3f} | |")
for name, base in (("fused_loss_12", "adamw_12"), ("flash_12", "adamw_12"), ("cudnn_12", "adamw_12"), ("fused_loss_32", "adamw_32"),
                   ("muon_12", "adamw_12"), ("fp8_12", "adamw_12"), ("gpt2_modern_16", "gpt2_16")):
    if name in steps and base in steps:
        print(f"| {name} / {base} step | {steps[name] / steps[base]:.3f}x | | | |")
runs = {}
for name in ("classic", "modern", "classic_fp8"):
    metrics = out / f"out-{name}" / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    if train:
        runs[name] = dict(ms=statistics.median(r["ms_per_iter"] for r in train if r["iter"] > 100), loss={r["iter"]: r["loss"] for r in train},
                          val=evals[-1]["val_loss"] if evals else float("nan"))
if runs:
    print("\n| char model, 300 steps | median ms/step after 100 | val loss at 300 |\n|---|---|---|")
    for name, run in runs.items():
        print(f"| {name} | {run['ms']:.2f} | {run['val']:.4f} |")
    if "classic" in runs and "modern" in runs:
        print(f"| modern / classic step | {runs['modern']['ms'] / runs['classic']['ms']:.3f}x | |")
    if "classic" in runs and "classic_fp8" in runs:
        both = sorted(set(runs["classic"]["loss"]) & set(runs["classic_fp8"]["loss"]))
        gap = max(abs(runs["classic"]["loss"][i] - runs["classic_fp8"]["loss"][i]) for i in both)
        print(f"| fp8 / bf16 step | {runs['classic_fp8']['ms'] / runs['classic']['ms']:.3f}x | largest train-loss gap over {len(both)} logged steps: {gap:.4f} |")
PY
