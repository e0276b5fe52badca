"""GPT-2 sampling on the CPU at batch 1: ours against transformers' generate on the same folder, and the
memory-bandwidth bound both are under.

    python bench/cpu_generate.py                    # GPT-2 124M's shape, random weights
    python bench/cpu_generate.py --n_layer=2 --n_embd=64 --n_head=2 --tokens=20   # a tiny case

Saves a randomly initialised transformers GPT-2 (save_pretrained; speed does not depend on the weights)
and generates --tokens greedy tokens from a 16-token prompt, batch 1, float32: with our engine (the model
as sample.py loads it from the folder, KV cache), and with transformers' GPT2LMHeadModel.generate
(do_sample=False, its KV cache), --rounds times each, alternating, after a warm-up; tokens/s is the
median. Both must give the same tokens. The bound: decoding a token reads every weight once, so no
batch-1 decoder goes faster than (memory bandwidth) / (bytes of weights); the bandwidth is measured here
by copying a 1 GiB tensor (read + write bytes per second, the best of 5). Last, the peak resident memory
of `sample.py --init_from=FOLDER` generating the same tokens, a whole process, against the weights' bytes.
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nanogpt.checkpoint import load_model_and_tokenizer  # noqa: E402
from nanogpt.generation.engine import Engine, inference_model  # noqa: E402
from nanogpt.generation.sampling import Sampling  # noqa: E402


def memory_bandwidth(gib=1, tries=5):
    """Bytes per second a tensor copy moves (it reads and writes each byte once), the best of `tries`."""
    source = torch.ones(gib * 2**30 // 4)
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(tries):
        t0 = time.perf_counter()
        target.copy_(source)
        best = min(best, time.perf_counter() - t0)
    return 2 * source.numel() * 4 / best


def ours(folder, prompt, tokens):
    model, _ = load_model_and_tokenizer(str(folder), out_dir="")
    engine = Engine(inference_model(model, "cpu", "float32"))
    greedy = Sampling(temperature=0.0)

    def run(n):
        return engine.generate([prompt], n, greedy)[0]

    return run


def theirs(folder, prompt, tokens):
    import transformers

    model = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    ids = torch.tensor([prompt])

    def run(n):
        with torch.inference_mode():
            out = model.generate(
                ids,
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=0,
                attention_mask=torch.ones_like(ids),
            )
        return out[0, len(prompt) :].tolist()

    return run


# sample.py run as itself, saying at exit its process's peak resident memory (VmHWM, which starts afresh at
# exec: a child's ru_maxrss would count the forked image of this benchmark's own process)
PEAK_WRAPPER = (
    "import atexit, runpy, sys; atexit.register(lambda: print('peak', [l for l in open('/proc/self/status') "
    "if l.startswith('VmHWM')][0].split()[1], file=sys.stderr)); sys.argv = sys.argv[1:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


def sample_py_peak_mb(folder, tokens):
    """Peak resident memory (MB) of a whole sample.py process generating `tokens` greedy tokens."""
    command = [sys.executable, "-c", PEAK_WRAPPER, "sample.py", f"--init_from={folder}", "--start=Hello, I am"]
    command += ["--num_samples=1", f"--max_new_tokens={tokens}", "--temperature=0", "--device=cpu", "--dtype=float32"]
    result = subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True)
    return int(result.stderr.split("peak ")[-1].split()[0]) / 1024  # kB


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n_layer", type=int, default=12)
    parser.add_argument("--n_head", type=int, default=12)
    parser.add_argument("--n_embd", type=int, default=768)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "gpt2"
        model = transformers.GPT2LMHeadModel(config)
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        model.save_pretrained(folder)
        del model
        prompt = list(range(100, 116))
        runs = {"ours": ours(folder, prompt, args.tokens), "transformers": theirs(folder, prompt, args.tokens)}
        outputs, speed = {}, {name: [] for name in runs}
        for name, run in runs.items():
            run(4)  # warm-up
        for round_ in range(args.rounds):
            for name in runs if round_ % 2 == 0 else reversed(list(runs)):
                t0 = time.perf_counter()
                outputs[name] = runs[name](args.tokens)
                speed[name].append(args.tokens / (time.perf_counter() - t0))
        bandwidth = memory_bandwidth()
        peak = sample_py_peak_mb(folder, args.tokens)
    bound = bandwidth / weight_bytes
    shape = f"{args.n_layer} layers x {args.n_embd}"
    print(f"\nbatch 1, {args.tokens} greedy tokens, float32, {shape}, {args.rounds} rounds\n")
    print("| | tokens/s, each round | median | share of the bound |\n|---|---|---|---|")
    for name, values in speed.items():
        median = statistics.median(values)
        print(f"| {name} | {', '.join(f'{v:.1f}' for v in values)} | {median:.1f} | {median / bound:.0%} |")
    gigabytes = weight_bytes / 1e9
    print(f"\nthe bound: {bandwidth / 1e9:.1f} GB/s copied / {gigabytes:.3f} GB of weights = {bound:.1f} tokens/s")
    ratio = statistics.median(speed["ours"]) / statistics.median(speed["transformers"])
    print(f"ours / transformers: {ratio:.2f}x; same tokens: {outputs['ours'] == outputs['transformers']}")
    print(f"sample.py peak resident memory: {peak:,.0f} MB, {peak * 2**20 / weight_bytes:.2f}x the weights' bytes")


if __name__ == "__main__":
    main()
