#!/usr/bin/env bash
# The GPU generation figures in the README, in two device calls of a few minutes each: run from the repo
# root on a CUDA machine. Logs go to $OUT (default: gpu-logs/); the table of figures is printed last.
#   bash bench/gpu_decode.sh 1   the CUDA tests, then every mode's speed (greedy, bf16), char and GPT-2
#                                124M at batch 1 and 64, with each decode step's operators, kernels and
#                                kernel time
#   bash bench/gpu_decode.sh 2   sampled decoding as sample.py draws, our graph against a compiled model
#                                captured the same way, and `sample.py --num_samples=8 --max_new_tokens=1000`
#                                as a whole process, and nanoGPT's sample.py the same way (needs
#                                data/shakespeare_char, and a nanoGPT checkout in .nanogpt: carry both)
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
PART=${1:-1}

if [ "$PART" = 1 ]; then
    # 1. correctness on the GPU: graph == eager cached == uncached in float32 (the CUDA tests of tests/test_engine.py)
    $PY -m pytest -q -p no:cacheprovider tests/test_engine.py 2>&1 | tee "$OUT/test_engine.log" | tail -3
    # 2. float32: every mode's greedy tokens compared on the char model (a warning line if they differ)
    $PY bench/sample_speed.py --device=cuda --dtype=float32 --models=char --batches=1,64 --new_tokens=300 2>&1 | tee "$OUT/speed_float32.log" | grep -E "warning|failed" || echo "float32: the modes' greedy tokens agree"
    # 3. the figures: bf16, char and GPT-2 124M, batch 1 and 64, each mode
    $PY bench/sample_speed.py --device=cuda 2>&1 | tee "$OUT/speed_bf16.log" | grep -vE "^\{"
else
    # 4. sample.py's way of drawing (temperature 0.8, top 200), char model, batch 1 and 8
    timeout 120 $PY bench/sample_speed.py --device=cuda --models=char --batches=1,8 --modes=cached,graph --temperature=0.8 --top_k=200 2>&1 | tee "$OUT/speed_sampled.log" | grep -vE "^\{"
    # 5. a compiled model (fused kernels) in our graph, against the plain model's graph, batch 1
    timeout 240 $PY bench/sample_speed.py --device=cuda --batches=1 --modes=graph,compile-graph 2>&1 | tee "$OUT/speed_compiled.log" | grep -vE "^\{"
    # 6. the whole process: a spec-sized char checkpoint (20 steps: the weights do not change the speed),
    # then the issue's sample.py command, twice
    timeout 120 $PY train.py config/train_shakespeare_char.py --max_iters=20 --eval_interval=20 --eval_iters=1 --compile=False \
        --out_dir="$OUT/out-char" > "$OUT/train_char.log" 2>&1 || tail -3 "$OUT/train_char.log"
    TIMEFORMAT=%R
    for run in 1 2; do
        seconds=$( { time timeout 120 $PY sample.py --out_dir="$OUT/out-char" --num_samples=8 --max_new_tokens=1000 > "$OUT/sample_$run.log" 2>&1; } 2>&1 )
        echo "| sample.py --num_samples=8 --max_new_tokens=1000, whole process, run $run | ${seconds} s | last line: $(tail -c 60 "$OUT/sample_$run.log" | tr '\n' ' ') |"
    done
    # 7. nanoGPT's sample.py, the same command on a char checkpoint of its own (20 steps of its train.py)
    if [ -d "$NANOGPT" ]; then
        (cd "$NANOGPT" && timeout 120 $PY train.py config/train_shakespeare_char.py --max_iters=20 --eval_interval=20 --eval_iters=1 \
            --compile=False --out_dir="$OUT/out-nanogpt-char") > "$OUT/nanogpt_train_char.log" 2>&1 || tail -3 "$OUT/nanogpt_train_char.log"
        for run in 1 2; do
            seconds=$( { time (cd "$NANOGPT" && timeout 120 $PY sample.py --out_dir="$OUT/out-nanogpt-char" --num_samples=8 --max_new_tokens=1000 > "$OUT/nanogpt_sample_$run.log" 2>&1); } 2>&1 )
            echo "| nanoGPT's sample.py, the same command, whole process, run $run | ${seconds} s | last line: $(tail -c 60 "$OUT/nanogpt_sample_$run.log" | tr '\n' ' ') |"
        done
    fi
fi
