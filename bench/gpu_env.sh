# Sourced by the bench/gpu_*.sh scripts: where logs go ($OUT, default gpu-logs/), which Python, and the
# card and torch version at the top of each log.
OUT=${OUT:-gpu-logs}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)  # absolute: nanoGPT's runs start in its own checkout
# a checkout of karpathy/nanoGPT, for the side-by-side rows (copy one to .nanogpt, ignored by git, with its
# data/shakespeare_char prepared, e.g. by python bench/cpu_vs_nanogpt.py --nanogpt=.nanogpt, and carry it)
NANOGPT=${NANOGPT:-$PWD/.nanogpt}
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"
# GPT-2's BPE files, which tiktoken would download: the device has no network, so a copy travels with the
# repo (cp -r ../shared/data/tiktoken_cache .tiktoken_cache, ignored by git, named in carry)
if [ -d .tiktoken_cache ]; then export TIKTOKEN_CACHE_DIR="$PWD/.tiktoken_cache"; fi
