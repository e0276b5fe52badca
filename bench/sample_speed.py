"""Cached vs uncached generation: tokens/s and peak memory, side by side.

    python bench/sample_speed.py [--new_tokens=500] [--rounds=2] [--device=cpu]

Generates --new_tokens tokens (batch 1, greedy, from a one-token prompt) with the shakespeare_char
model size (6 layers, 6 heads, 384 wide, block 256; random weights: speed does not depend on them),
once with the KV cache and once recomputing the whole context each step. Each mode runs in its own
process so that peak memory is its own: on the CPU, the peak resident set size, and how far it rose
above the size after the model was built; on CUDA, torch's peak allocated bytes.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nanogpt.model import GPT, GPTConfig  # noqa: E402

MODEL = dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65, dropout=0.0, bias=False)


def rss_mb(field):
    """VmRSS (now) or VmHWM (peak) of this process, in MB, from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_one(use_cache, new_tokens, device):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**MODEL)).to(device).eval()
    prompt = torch.zeros((1, 1), dtype=torch.long, device=device)
    model.generate(prompt, 5, temperature=0, use_cache=use_cache)  # warm up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    baseline = rss_mb("VmRSS")
    t0 = time.perf_counter()
    out = model.generate(prompt, new_tokens, temperature=0, use_cache=use_cache)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    result = dict(tokens_per_sec=new_tokens / seconds, peak_rss_mb=rss_mb("VmHWM"), rise_mb=rss_mb("VmHWM") - baseline)
    if device.startswith("cuda"):
        result["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    result["tokens"] = out[0, -20:].tolist()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new_tokens", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--one", choices=["cached", "uncached"], help="(used internally) run one mode, print JSON")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one == "cached", args.new_tokens, args.device)))
        return

    print(f"model {MODEL}, {args.new_tokens} new tokens, batch 1, device {args.device}, {torch.get_num_threads()} threads")
    best = {}
    for r in range(args.rounds):
        for mode in ("cached", "uncached"):
            cmd = [sys.executable, __file__, f"--one={mode}", f"--new_tokens={args.new_tokens}", f"--device={args.device}"]
            result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            memory = f"peak RSS {result['peak_rss_mb']:.0f} MB (+{result['rise_mb']:.0f} MB while generating)"
            if "cuda_peak_mb" in result:
                memory += f", CUDA peak {result['cuda_peak_mb']:.0f} MB"
            print(f"round {r + 1} {mode:>8}: {result['tokens_per_sec']:8.1f} tokens/s, {memory}")
            if mode not in best or result["tokens_per_sec"] > best[mode]["tokens_per_sec"]:
                best[mode] = result
    cached, uncached = best["cached"], best["uncached"]
    assert cached["tokens"] == uncached["tokens"], "cached and uncached generation disagree"
    print(f"speed-up (best rounds): cached / uncached = {cached['tokens_per_sec'] / uncached['tokens_per_sec']:.1f}x")
    print(f"peak RSS: cached / uncached = {cached['peak_rss_mb'] / uncached['peak_rss_mb']:.2f}")
    if "cuda_peak_mb" in cached:
        print(f"CUDA peak: cached / uncached = {cached['cuda_peak_mb'] / uncached['cuda_peak_mb']:.2f}")


if __name__ == "__main__":
    main()
