"""Sample text from a trained model.

    python sample.py --out_dir=out-shakespeare-char
    python sample.py --out_dir=out-shakespeare-char --start="ROMEO:" --num_samples=3 --max_new_tokens=200
    python sample.py --out_dir=out-shakespeare-char --start=FILE:prompt.txt --temperature=0.7 --top_k=50
    echo "JULIET:" | python sample.py --out_dir=out-shakespeare-char --start=- --num_samples=1
    python sample.py --out_dir=out-shakespeare-char --prompts=prompts.txt --output=completions.jsonl --stop="\n\n"

python sample.py --help lists every setting.
"""

import json
import sys
from pathlib import Path

import nanogpt  # noqa: F401  first: a Ctrl-C while torch loads ends in one line (nanogpt/__init__.py)
import torch

from nanogpt.checkpoint import check_model_source, load_model_and_tokenizer
from nanogpt.generation.completion import Endings
from nanogpt.config import SampleSettings, load_config
from nanogpt.generation.engine import Engine, context_start, inference_model
from nanogpt.generation.sampling import Sampling, sampling_options
from nanogpt.errors import DataError, SettingError, WriteError, out_of_memory_as_error, run_main
from nanogpt.files import read_utf8
from nanogpt.system import resolve_device, resolve_dtype


def read_settings(argv):
    """The settings, refused in one sentence if they cannot work, before the model loads: each key
    against what it declares (nanogpt/config.py), then what depends on more than one key."""
    cfg = load_config(SampleSettings, argv, script="sample.py")
    if cfg.prompts and cfg.stream:
        raise SettingError("--stream=True prints one sample as it is made; it cannot be used with --prompts")
    check_model_source(cfg.init_from)
    if cfg.output and not cfg.prompts:
        raise SettingError("--output writes the completions of --prompts; give a prompts file with --prompts=FILE")
    resolve_dtype(cfg.dtype, resolve_device(cfg.device))
    return cfg


def read_prompt(start):
    """The start text itself, the contents of the file named after FILE:, or stdin for -."""
    if start == "-":
        return sys.stdin.read()
    if not start.startswith("FILE:"):
        return start
    path = Path(start[len("FILE:") :])
    if not path.is_file():
        raise DataError(f"--start: prompt file {path} not found")
    try:
        return read_utf8(path, "prompt file")
    except DataError as e:
        raise DataError(f"--start: {e}") from None


def read_prompts_file(path, tokenizer):
    """(text, ids) of each non-empty line of a prompts file: plain text, or JSON lines with a 'prompt'."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prompts file {path} not found")
    prompts = []
    for number, line in enumerate(read_utf8(path, "prompts file").splitlines(), start=1):
        if not line.strip():
            continue
        text = line
        if path.suffix == ".jsonl":
            try:
                text = json.loads(line)
            except ValueError:
                text = None
            text = text.get("prompt") if isinstance(text, dict) else None
            if not isinstance(text, str) or not text:
                raise DataError(f"line {number} of {path} is not a JSON object with a non-empty 'prompt' string")
        try:
            prompts.append((text, tokenizer.encode(text)))
        except DataError as e:
            raise DataError(f"line {number} of {path}: {e}") from None
    if not prompts:
        raise DataError(f"prompts file {path} holds no prompts; write one prompt a line")
    return prompts


class StreamPrinter:
    """Prints one sample's text as its tokens arrive: what is safe to show of it (Endings.shown) that
    was not printed yet."""

    def __init__(self, prompt_text, endings):
        self.endings, self.ids, self.printed = endings, [], ""
        print(prompt_text, end="", flush=True)

    def __call__(self, rows, tokens):
        self.ids.append(tokens[0].item())
        self.flush()

    def flush(self, final=False):
        text = self.endings.shown(self.ids, final)
        if len(text) > len(self.printed):
            print(text[len(self.printed) :], end="", flush=True)
            self.printed = text

    def finish(self):
        self.flush(final=True)
        print()


def main():
    cfg = read_settings(sys.argv[1:])
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    model, tokenizer = load_model_and_tokenizer(cfg.init_from, cfg.out_dir, cfg.checkpoint)
    model = inference_model(model, device, dtype)
    oom = (
        f"out of memory for {cfg.num_samples:,} sample(s) of {cfg.max_new_tokens:,} new tokens; lower --num_samples"
        f" or --max_new_tokens (with --prompts, --batch_size)"
    )
    with out_of_memory_as_error(oom):
        generate_and_print(cfg, model, tokenizer)


def read_all_prompts(cfg, tokenizer, block_size):
    """(text, ids) of every sample to generate: each line of --prompts, or --start num_samples times."""
    if cfg.prompts:
        prompts = read_prompts_file(cfg.prompts, tokenizer)
    else:
        text = read_prompt(cfg.start)
        try:
            prompts = [(text, tokenizer.encode(text))] * cfg.num_samples
        except DataError as e:
            raise DataError(f"--start: {e}") from None
        if not prompts[0][1]:
            raise DataError("the prompt is empty; give some text with --start=TEXT (the default is a newline)")
    cropped = sum(context_start(len(ids), block_size) > 0 for _, ids in prompts)
    if cropped:
        print(
            f"note: {cropped} prompt(s) longer than the model's context of {block_size} tokens: the model "
            "sees the end of each",
            file=sys.stderr,
        )
    return prompts


def generate_and_print(cfg, model, tokenizer):
    """The prompts (--start, or --prompts), generated batch by batch, printed or written to --output."""
    vocab_size = tokenizer.vocab_size
    # the default top_k (200) is meant for GPT-2's 50k tokens; with a small vocabulary it keeps them all
    top_k_given = cfg.top_k != SampleSettings().top_k
    if top_k_given and cfg.top_k is not None and cfg.top_k > vocab_size:
        raise SettingError(
            f"top_k must be between 1 and the vocabulary size {vocab_size}, got {cfg.top_k}; use --top_k=None for all"
        )
    prompts = read_all_prompts(cfg, tokenizer, model.config.block_size)
    stream = (len(prompts) == 1 and not cfg.prompts) if cfg.stream is None else cfg.stream
    if stream and len(prompts) > 1:
        raise SettingError("--stream=True needs --num_samples=1 (samples are generated together, as one batch)")
    endings = Endings(tokenizer, [cfg.stop])
    engine = Engine(model, use_cache=cfg.use_cache)
    # each row has its own random stream (seed + its place), so a sample does not depend on the batch
    options = {f.name: getattr(cfg, f.name) for f in sampling_options()}
    sampling = [Sampling(**options, seed=cfg.seed + i) for i in range(len(prompts))]
    batch_size = cfg.batch_size or len(prompts)
    try:
        output = open(cfg.output, "w", encoding="utf-8") if cfg.output else None
    except OSError as e:
        raise WriteError(
            f"cannot write --output={cfg.output} ({e.strerror}); choose a file in a folder that exists and is writable"
        ) from None
    try:
        for first in range(0, len(prompts), batch_size):
            batch = prompts[first : first + batch_size]
            printer = StreamPrinter(batch[0][0], endings) if stream else None
            with torch.no_grad():
                completions = engine.generate(
                    [ids for _, ids in batch],
                    cfg.max_new_tokens,
                    sampling[first : first + batch_size],
                    vocab_size=vocab_size,
                    on_token=printer,
                    stop=endings if endings.possible else None,
                )
            if stream:
                printer.finish()
                print("---------------")
                continue
            for (text, _), ids in zip(batch, completions):
                if output is not None:
                    output.write(json.dumps({"prompt": text, "completion": endings.text(ids)}) + "\n")
                else:
                    print(text + endings.text(ids))
                    print("---------------")
    finally:
        if output is not None:
            output.close()
    if output is not None:
        print(f"wrote {len(prompts)} completions to {cfg.output}")


if __name__ == "__main__":
    run_main(main)
