#!/usr/bin/env bash
# The GPU generation figures in the README, in one device call (a few minutes): run from the repo root on
# a CUDA machine. Logs go to $OUT (default: gpu-logs/); the table of figures is printed last.
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"
# 1. correctness on the GPU: graph == eager cached == uncached in float32 (the CUDA tests of tests/test_engine.py)
$PY -m pytest -q -p no:cacheprovider tests/test_engine.py 2>&1 | tee "$OUT/test_engine.log" | tail -3
# 2. float32: every mode's greedy tokens compared on the char model (a warning line if they differ)
$PY bench/sample_speed.py --device=cuda --dtype=float32 --models=char --batches=1,64 --new_tokens=300 2>&1 | tee "$OUT/speed_float32.log" | grep -E "warning|greedy|failed" || echo "float32: the modes' greedy tokens agree"
# 3. the figures: bf16, char and GPT-2 124M, batch 1 and 64, each mode
$PY bench/sample_speed.py --device=cuda 2>&1 | tee "$OUT/speed_bf16.log" | grep -vE "^\{"
