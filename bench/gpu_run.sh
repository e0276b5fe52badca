#!/usr/bin/env bash
# The GPU figures in the README: run from the repo root on a CUDA machine, with
# data/shakespeare_char prepared. Logs go to $OUT (default: gpu-logs/).
set -uo pipefail
source "$(dirname "$0")/gpu_env.sh"

# 1. the spec's char-level model, full config (bf16, compile on by default on CUDA)
/usr/bin/time -v $PY train.py config/train_shakespeare_char.py --overwrite=True 2>&1 | tee "$OUT/train_shakespeare_char.log"
$PY sample.py --out_dir=out-shakespeare-char --num_samples=1 --max_new_tokens=500 --seed=1 2>&1 | tee "$OUT/sample.txt"
# 2. the modern char config against that classic run: compare.py tables each run's time to the classic best
$PY train.py config/train_shakespeare_char_modern.py --overwrite=True 2>&1 | tee "$OUT/train_shakespeare_char_modern.log" | tail -3
$PY compare.py out-shakespeare-char out-shakespeare-char-modern --to="$OUT/recipe_gpu.png" 2>&1 | tee "$OUT/compare_recipe.log"
# 3. cached vs uncached generation print the same text on CUDA too
$PY sample.py --out_dir=out-shakespeare-char --num_samples=4 --max_new_tokens=600 --use_cache=False > "$OUT/uncached.txt"
$PY sample.py --out_dir=out-shakespeare-char --num_samples=4 --max_new_tokens=600 > "$OUT/cached.txt"
cmp "$OUT/cached.txt" "$OUT/uncached.txt" && echo "cached == uncached on CUDA" | tee -a "$OUT/gpu.txt"
$PY bench/sample_speed.py --device=cuda 2>&1 | tee "$OUT/sample_speed.log"
# 4. GPT-2 124M step: bf16 + compile, batch 12 x 1024
$PY bench.py --real_data=False --compile=True --dtype=bfloat16 2>&1 | tee "$OUT/bench_124M.log"
# 5. DDP through torchrun on NCCL (one GPU), compiled, with a SIGTERM-free short run
$PY -m torch.distributed.run --standalone --nproc_per_node=1 train.py config/train_shakespeare_char.py \
    --out_dir=out-ddp --overwrite=True --max_iters=200 --eval_interval=100 --eval_iters=20 2>&1 | tee "$OUT/ddp_nccl.log"
