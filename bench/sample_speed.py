"""Generation speed of each decoding mode, side by side in one process.

    python bench/sample_speed.py                      # CPU: the char model, uncached and cached
    python bench/sample_speed.py --device=cuda        # adds the CUDA-graph mode and GPT-2 124M

Models have random weights (speed does not depend on them): the shakespeare_char size (6 layers, 6 heads,
384 wide, block 256, 65 tokens) and, with --models=char,gpt2, GPT-2 124M (block 1024, vocabulary 50304).
Each run starts from a one-token prompt and draws --new_tokens tokens per row (greedy, or with
--temperature and --top_k as sample.py draws), so the char model passes its block size and re-encodes
its context on the way; tokens/s counts every generated token of every row. For each mode and batch
size: time to first token (prefill and one step, after a warm-up call), tokens/s, peak memory (CUDA:
torch's peak allocated bytes; CPU: peak resident set size), and the one-time cost of capturing the CUDA
graph for that batch size; and for each model and batch size, the operators in one decode step (about
one GPU kernel each). The rows' tokens of the modes are compared where they must agree (float32).
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nanogpt.generation.engine import Engine, Rows, inference_model  # noqa: E402
from nanogpt.generation.sampling import Sampling  # noqa: E402
from nanogpt.model import GPT, GPTConfig  # noqa: E402
from nanogpt.system import peak_memory_mb, reset_peak_memory  # noqa: E402

MODELS = {
    "char": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65, dropout=0.0, bias=False),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304, dropout=0.0, bias=True),
}


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(engine, batch, new_tokens, device, vocab_size, sampling):
    prompts = [[0]] * batch
    before = engine.capture_seconds
    engine.generate(prompts, 8, sampling, vocab_size)  # warm-up: kernels chosen, the graph captured
    capture = engine.capture_seconds - before
    sync(device)
    t0 = time.perf_counter()
    engine.generate(prompts, 1, sampling, vocab_size)
    sync(device)
    first = time.perf_counter() - t0
    reset_peak_memory(device)
    t0 = time.perf_counter()
    out = engine.generate(prompts, new_tokens, sampling, vocab_size)
    sync(device)
    seconds = time.perf_counter() - t0
    memory = peak_memory_mb(device)
    return dict(
        first_ms=first * 1000,
        tokens_per_sec=batch * new_tokens / seconds,
        memory_mb=memory,
        capture_ms=capture * 1000,
        tokens=out[0],
    )


class OpCounter(TorchDispatchMode):
    """Counts the operators that run. Views, and _unsafe_view (a reshape of a fresh tensor), launch no
    kernel and are left out."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += not func.is_view and func.overloadpacket is not torch.ops.aten._unsafe_view
        return func(*args, **(kwargs or {}))


def ops_per_decode_step(model, batch, sampling, vocab_size):
    """Operators in one decode step as a CUDA graph captures it (the fixed-span step, run eagerly): on a
    GPU about one kernel each, and at batch 1 the step's time is mostly their count. On CUDA, also the
    kernels profiled over 20 such steps, per step, and their summed GPU time."""
    engine = Engine(model, cuda_graph=False, fixed_span=True)
    rows = Rows(model.config, vocab_size or model.config.vocab_size, next(model.parameters()).device)
    rows.add([[0]] * batch, [sampling] * batch, 4)
    engine.step(rows)  # the prefill; then the step alone
    with torch.no_grad(), OpCounter() as counter:
        engine._decode(rows, fixed_span=True)
    if not torch.cuda.is_available() or rows.device.type != "cuda":
        return f"{counter.count} operators"
    # on a GPU, also the kernels the step launches and their GPU time, to set against a token's time
    steps = 20
    try:
        with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
            for _ in range(steps):
                engine._decode(rows, fixed_span=True)
            torch.cuda.synchronize()
        kernels = [e for e in profile.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    except Exception as e:  # a profiler that fails here is reported, not fatal
        return f"{counter.count} operators (kernel profile failed: {type(e).__name__}: {str(e)[:200]})"
    busy = sum(e.device_time_total for e in kernels) / steps
    return f"{counter.count} operators, {len(kernels) / steps:.0f} GPU kernels, {busy:.0f} us of kernel time"


def make_engine(model, mode):
    """uncached, cached (eager), graph (our CUDA graph of the decode step), and two torch.compile
    alternatives: compile-graph (compiled model, captured by us) and reduce-overhead (torch's own graphs)."""
    if mode == "compile-graph":
        return Engine(torch.compile(model), cuda_graph=True)
    if mode == "reduce-overhead":
        return Engine(torch.compile(model, mode="reduce-overhead"), cuda_graph=False, fixed_span=True)
    return Engine(model, use_cache=mode != "uncached", cuda_graph=mode == "graph")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on the CPU")
    parser.add_argument(
        "--models", default=None, help="comma-separated: char, gpt2 (default: char on the CPU, both on CUDA)"
    )
    parser.add_argument(
        "--batches", default=None, help="comma-separated batch sizes (default: 1 on the CPU, 1,64 on CUDA)"
    )
    parser.add_argument(
        "--modes",
        default=None,
        help=(
            "comma-separated: uncached, cached, graph, compile-graph, reduce-overhead (default: the first three "
            "the device has)"
        ),
    )
    parser.add_argument("--new_tokens", type=int, default=500)
    parser.add_argument(
        "--temperature", type=float, default=0.0, help="0 (default) is greedy; sample.py samples at 0.8"
    )
    parser.add_argument(
        "--top_k", type=int, default=None, help="with a temperature: keep the top_k tokens (sample.py: 200)"
    )
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    dtype = args.dtype or ("bfloat16" if cuda else "float32")
    models = (args.models or ("char,gpt2" if cuda else "char")).split(",")
    batches = [int(b) for b in (args.batches or ("1,64" if cuda else "1")).split(",")]
    modes = (args.modes or ("uncached,cached,graph" if cuda else "uncached,cached")).split(",")
    sampling = Sampling(temperature=args.temperature, top_k=args.top_k)
    drawn = "greedy" if args.temperature == 0 else f"sampled at temperature {args.temperature}, top_k {args.top_k}"
    print(
        f"device {args.device}, {dtype}, {args.new_tokens} new tokens per row ({drawn}), "
        f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}"
    )
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        print(torch.cuda.get_device_name())

    rows = []
    for name in models:
        torch.manual_seed(0)
        model = inference_model(GPT(GPTConfig(**MODELS[name])), args.device, dtype)
        vocab_size = 50257 if name == "gpt2" else None
        for batch in batches:
            tokens = {}
            for mode in modes:
                if name == "gpt2" and mode == "uncached" and batch > 1:
                    continue  # minutes of recomputation, and nothing to learn from it
                try:
                    result = measure(
                        make_engine(model, mode), batch, args.new_tokens, args.device, vocab_size, sampling
                    )
                except Exception as e:  # a compiler mode that fails here is reported, not fatal
                    print(f"{name} batch {batch} {mode}: failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
                    continue
                tokens[mode] = result.pop("tokens")
                rows.append(dict(model=name, batch=batch, mode=mode, **result))
                print(rows[-1], flush=True)
            if dtype == "float32" and len(set(map(tuple, tokens.values()))) > 1:
                print(f"warning: {name} batch {batch}: the modes' tokens differ")
            elif dtype != "float32" and len(tokens) > 1:
                reference = tokens.get("uncached", next(iter(tokens.values())))
                agree = {
                    m: next((i for i, (a, b) in enumerate(zip(t, reference)) if a != b), len(t))
                    for m, t in tokens.items()
                }
                print(f"{name} batch {batch}: tokens equal to the first mode's up to token {agree}")
            # counted after the timed runs, whose peak-memory figures it would otherwise raise
            print(f"{name} batch {batch}, one decode step: {ops_per_decode_step(model, batch, sampling, vocab_size)}")

    print()
    print(
        f"| model | batch | mode | first token (ms) | tokens/s | peak {'GPU' if cuda else 'RSS'} memory (MB) "
        "| graph capture (ms) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        capture = f"{r['capture_ms']:.0f}" if "graph" in r["mode"] else "-"
        print(
            f"| {r['model']} | {r['batch']} | {r['mode']} | {r['first_ms']:.1f} | {r['tokens_per_sec']:,.0f} "
            f"| {r['memory_mb']:.0f} | {capture} |"
        )


if __name__ == "__main__":
    main()
