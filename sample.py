"""Sample text from a trained model.

    python sample.py --out_dir=out-shakespeare-char
    python sample.py --out_dir=out-shakespeare-char --start="ROMEO:" --num_samples=3 --max_new_tokens=200
    python sample.py --out_dir=out-shakespeare-char --start=FILE:prompt.txt --temperature=0.7 --top_k=50
    echo "JULIET:" | python sample.py --out_dir=out-shakespeare-char --start=- --num_samples=1

python sample.py --help lists every setting.
"""

import sys
from pathlib import Path

import torch

from nanogpt.checkpoint import load_checkpoint, model_from_checkpoint
from nanogpt.config import SampleConfig, load_config
from nanogpt.errors import UserError, run_main
from nanogpt.hf import gpt_from_pretrained, is_pretrained_source, pretrained_tokenizer_meta
from nanogpt.system import autocast_context, resolve_device, resolve_dtype
from nanogpt.tokenizer import tokenizer_from_meta


def read_prompt(start):
    """The start text itself, the contents of the file named after FILE:, or stdin for -."""
    if start == "-":
        return sys.stdin.read()
    if not start.startswith("FILE:"):
        return start
    path = Path(start[len("FILE:") :])
    if not path.is_file():
        raise UserError(f"prompt file {path} not found")
    return path.read_text(encoding="utf-8")


def main():
    cfg = load_config(SampleConfig, sys.argv[1:], script="sample.py")
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    if cfg.num_samples < 1 or cfg.max_new_tokens < 1:
        raise UserError(f"num_samples and max_new_tokens must be at least 1, got {cfg.num_samples} and {cfg.max_new_tokens}")
    if cfg.temperature < 0:
        raise UserError(f"temperature must be 0 (greedy) or more, got {cfg.temperature}")
    if cfg.top_p is not None and not 0 < cfg.top_p <= 1:
        raise UserError(f"top_p must be in (0, 1], got {cfg.top_p}")

    if cfg.init_from == "resume":
        checkpoint = load_checkpoint(cfg.out_dir)
        model = model_from_checkpoint(checkpoint, dropout=0.0)
        tokenizer = tokenizer_from_meta(checkpoint["tokenizer"])
        del checkpoint
    elif is_pretrained_source(cfg.init_from):
        model = gpt_from_pretrained(cfg.init_from)
        tokenizer = tokenizer_from_meta(pretrained_tokenizer_meta(cfg.init_from))
    else:
        raise UserError(f"unknown init_from {cfg.init_from!r}; use 'resume' (the checkpoint in out_dir), a GPT-2 name or a Hugging Face model folder")
    model.eval()
    model.to(device)

    vocab_size = tokenizer.vocab_size
    # the default top_k (200) is meant for GPT-2's 50k tokens; with a small vocabulary it keeps them all
    top_k_given = cfg.top_k != SampleConfig().top_k
    if cfg.top_k is not None and (cfg.top_k < 1 or (top_k_given and cfg.top_k > vocab_size)):
        raise UserError(f"top_k must be between 1 and the vocabulary size {vocab_size}, got {cfg.top_k}; use --top_k=None for all")

    prompt_ids = tokenizer.encode(read_prompt(cfg.start))
    if not prompt_ids:
        raise UserError("the prompt is empty; give some text with --start=TEXT (the default is a newline)")
    # all samples in one batch: one pass of the model per token serves every sample
    x = torch.tensor(prompt_ids, dtype=torch.long, device=device)[None, ...].repeat(cfg.num_samples, 1)

    stream = cfg.num_samples == 1 if cfg.stream is None else cfg.stream
    if stream and cfg.num_samples > 1:
        raise UserError("--stream=True needs --num_samples=1 (samples are generated together, as one batch)")
    printer = StreamPrinter(tokenizer, prompt_ids) if stream else None

    # a generator of our own: the same seed gives the same samples, whatever else used the global RNG
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    with torch.no_grad(), autocast_context(device, dtype):
        y = model.generate(
            x, cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
            generator=generator, use_cache=cfg.use_cache, on_token=printer, vocab_limit=tokenizer.vocab_size,
        )
    if stream:
        printer.finish()
        print("---------------")
        return
    for row in y.tolist():
        print(tokenizer.decode(row))
        print("---------------")


class StreamPrinter:
    """Prints one sample's text as its tokens arrive. It decodes the whole sample each time and prints
    what is new, because a BPE token can end in the middle of a multi-byte character."""

    def __init__(self, tokenizer, prompt_ids):
        self.tokenizer = tokenizer
        self.ids = list(prompt_ids)
        self.printed = ""
        self.flush()

    def __call__(self, idx_next):
        self.ids.append(idx_next[0, 0].item())
        self.flush()

    def flush(self, final=False):
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd") and not final:
            return  # an unfinished character: wait for the rest of its bytes
        print(text[len(self.printed) :], end="", flush=True)
        self.printed = text

    def finish(self):
        self.flush(final=True)
        print()


if __name__ == "__main__":
    run_main(main)
