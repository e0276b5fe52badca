"""GPT-2 sampling on the CPU at batch 1: our weight formats against transformers' generate on the same
folder, the memory-bandwidth bound each is under, eval.py's loss in each, and sample.py's peak memory.

    python bench/cpu_generate.py                    # GPT-2 124M's shape, random weights
    python bench/cpu_generate.py --folder=PATH      # a Hugging Face GPT-2 folder (e.g. from export.py)
    python bench/cpu_generate.py --n_layer=2 --n_embd=64 --n_head=2 --tokens=20   # a tiny case

Without --folder it saves a randomly initialised transformers GPT-2 (save_pretrained; speed does not
depend on the weights). Each decoder generates --tokens greedy tokens from a 16-token prompt at batch 1,
--rounds times, alternating, after a warm-up; tokens/s is the median. Ours runs as sample.py loads the
folder, in each of its weight formats (--dtype, --quantize); transformers' GPT2LMHeadModel.generate
(do_sample=False, its KV cache) runs in float32, and where torchao imports, its Int8WeightOnlyConfig
(run eagerly, as sample.py would) on our model too. The bound: decoding a token reads every weight it
multiplies by once, so no batch-1 decoder goes faster than (memory bandwidth) / (those bytes); the
bandwidth is measured by summing a 1 GiB tensor (bytes read per second, the best of 5). Last, for each
of our formats, eval.py's loss on --text (its last --eval_chars characters: for tiny Shakespeare, in
the val split that data/shakespeare_char/prepare.py takes) and the peak resident
memory of a whole `sample.py --init_from=FOLDER` process, against the float32 weights' bytes.
"""

import argparse
import json
import re
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

# our weight formats: (--dtype, --quantize) as sample.py and eval.py take them
FORMATS = {"float32": ("float32", "none"), "bfloat16": ("bfloat16", "none"), "int8": ("bfloat16", "int8")}


def read_bandwidth(gib=1, tries=5):
    """Bytes per second that summing a tensor reads, the best of `tries`."""
    tensor = torch.ones(gib * 2**30 // 4)
    best = float("inf")
    for _ in range(tries):
        t0 = time.perf_counter()
        tensor.sum()
        best = min(best, time.perf_counter() - t0)
    return tensor.numel() * 4 / best


def bytes_read_per_token(model):
    """Bytes of the tensors a batch-1 decode step reads whole: every module's own weights except the
    embeddings' (a lookup reads one row), each tensor once (a tied head is counted as the head)."""
    seen = {}
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            continue
        for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            seen[tensor.data_ptr()] = tensor.numel() * tensor.element_size()
    return sum(seen.values())


def our_decoder(model, prompt):
    engine, greedy = Engine(model), Sampling(temperature=0.0)
    return lambda n: engine.generate([prompt], n, greedy)[0]


def ours(folder, prompt, dtype, quantize):
    model, _ = load_model_and_tokenizer(str(folder), "", "best", dtype)
    model = inference_model(model, "cpu", dtype, quantize)
    return our_decoder(model, prompt), bytes_read_per_token(model)


def torchao_int8(folder, prompt):
    """Our bfloat16 model with torchao's int8 weight-only Linear layers, run eagerly; None without torchao."""
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError:
        return None
    model, _ = load_model_and_tokenizer(str(folder), "", "best", "bfloat16")
    model = inference_model(model, "cpu", "bfloat16")
    quantize_(model, Int8WeightOnlyConfig())  # int8 with a scale per row: the bytes of our int8
    return our_decoder(model, prompt)


def theirs(folder, prompt):
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

    float32_bytes = sum(p.numel() * 4 for p in model.parameters())
    return run, bytes_read_per_token(model), float32_bytes


# sample.py run as itself, saying at exit its process's peak resident memory (VmHWM, which starts afresh at
# exec: a child's ru_maxrss would count the forked image of this benchmark's own process)
PEAK_WRAPPER = (
    "import atexit, runpy, sys; atexit.register(lambda: print('peak', [l for l in open('/proc/self/status') "
    "if l.startswith('VmHWM')][0].split()[1], file=sys.stderr)); sys.argv = sys.argv[1:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


def sample_py_peak_mb(folder, tokens, dtype, quantize):
    """Peak resident memory (MB) of a whole sample.py process generating `tokens` greedy tokens."""
    command = [sys.executable, "-c", PEAK_WRAPPER, "sample.py", f"--init_from={folder}", "--start=Hello, I am"]
    command += ["--num_samples=1", f"--max_new_tokens={tokens}", "--temperature=0", "--device=cpu"]
    command += [f"--dtype={dtype}", f"--quantize={quantize}"]
    result = subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True)
    return int(result.stderr.split("peak ")[-1].split()[0]) / 1024  # kB


def eval_loss(folder, text_file, dtype, quantize):
    """eval.py's loss (nats per token) of the folder's model on text_file."""
    command = [sys.executable, "eval.py", f"--init_from={folder}", f"--input={text_file}", "--device=cpu"]
    command += [f"--dtype={dtype}", f"--quantize={quantize}"]
    result = subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True)
    return float(re.search(r"loss ([0-9.]+) nats per token", result.stdout).group(1))


def timed_rounds(runs, tokens, rounds):
    """tokens/s of each run, each round (alternating the order), and the tokens of each run's last round."""
    outputs, speed = {}, {name: [] for name in runs}
    for run in runs.values():
        run(4)  # warm-up
    for round_ in range(rounds):
        for name in runs if round_ % 2 == 0 else reversed(list(runs)):
            t0 = time.perf_counter()
            outputs[name] = runs[name](tokens)
            speed[name].append(tokens / (time.perf_counter() - t0))
    return speed, outputs


def saved_gpt2(args, tmp):
    """The folder to measure: --folder, or a random GPT-2 of the given shape saved into tmp."""
    if args.folder:
        return Path(args.folder)
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd)
    folder = Path(tmp) / "gpt2"
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def print_table(args, speed, outputs, bytes_read, losses, peaks, float32_bytes):
    bandwidth = read_bandwidth()
    baseline = statistics.median(speed["transformers"])
    print(f"\nbatch 1, {args.tokens} greedy tokens, {args.rounds} rounds, {bandwidth / 1e9:.1f} GB/s read\n")
    print("| decoder | tokens/s, each round | median | x transformers | MB read a token | share of the bound |")
    print("|---|---|---|---|---|---|")
    for name, values in speed.items():
        median, bound = statistics.median(values), bandwidth / bytes_read[name]
        print(
            f"| {name} | {', '.join(f'{v:.1f}' for v in values)} | {median:.1f} | {median / baseline:.2f}x | "
            f"{bytes_read[name] / 1e6:.0f} | {median / bound:.0%} of {bound:.0f} |"
        )
    same = ", ".join(f"{name} {tokens == outputs['transformers']}" for name, tokens in outputs.items())
    print(f"\nsame tokens as transformers: {same}")
    print(f"\nfloat32 weights: {float32_bytes / 1e6:.0f} MB\n")
    print("| ours, sample.py --dtype --quantize | eval.py loss | vs float32 | sample.py peak MiB | x float32 weights |")
    print("|---|---|---|---|---|")
    for name, (dtype, quantize) in FORMATS.items():
        change = losses[name] / losses["float32"] - 1
        print(
            f"| {name} ({dtype}, {quantize}) | {losses[name]:.4f} | {change:+.2%} | {peaks[name]:,.0f} | "
            f"{peaks[name] * 2**20 / float32_bytes:.2f}x |"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folder", default="", help="a Hugging Face GPT-2 folder; default: a random GPT-2")
    parser.add_argument("--n_layer", type=int, default=12)
    parser.add_argument("--n_head", type=int, default=12)
    parser.add_argument("--n_embd", type=int, default=768)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--text", default=str(REPO.parent / "shared/data/webtext_sample/wikitext2_valid.txt"))
    parser.add_argument("--eval_chars", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = saved_gpt2(args, tmp)
        vocab_size = json.loads((folder / "config.json").read_text())["vocab_size"]
        prompt = [(100 + i) % vocab_size for i in range(16)]  # 100..115 for GPT-2
        runs, bytes_read = {}, {}
        for name, (dtype, quantize) in FORMATS.items():
            runs[f"ours {name}"], bytes_read[f"ours {name}"] = ours(folder, prompt, dtype, quantize)
        torchao = torchao_int8(folder, prompt)
        if torchao is None:
            print("torchao does not import here: its row is left out")
        else:
            runs["torchao int8, eager"], bytes_read["torchao int8, eager"] = torchao, bytes_read["ours int8"]
        runs["transformers"], bytes_read["transformers"], float32_bytes = theirs(folder, prompt)
        speed, outputs = timed_rounds(runs, args.tokens, args.rounds)
        text_file = Path(tmp) / "text.txt"
        text_file.write_text(Path(args.text).read_text(encoding="utf-8")[-args.eval_chars :], encoding="utf-8")
        losses = {name: eval_loss(folder, text_file, *how) for name, how in FORMATS.items()}
        peaks = {name: sample_py_peak_mb(folder, args.tokens, *how) for name, how in FORMATS.items()}
    print_table(args, speed, outputs, bytes_read, losses, peaks, float32_bytes)


if __name__ == "__main__":
    main()
