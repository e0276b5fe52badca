"""Sample text from a trained model.

    python sample.py --out_dir=out-shakespeare-char
    python sample.py --out_dir=out-shakespeare-char --start="ROMEO:" --num_samples=3 --max_new_tokens=200
    python sample.py --out_dir=out-shakespeare-char --start=FILE:prompt.txt --temperature=0.7 --top_k=50

python sample.py --help lists every setting.
"""

import sys
from pathlib import Path

import torch

from nanogpt.checkpoint import load_checkpoint, model_from_checkpoint
from nanogpt.config import SampleConfig, load_config
from nanogpt.errors import UserError, run_main
from nanogpt.system import autocast_context, resolve_device, resolve_dtype
from nanogpt.tokenizer import tokenizer_from_meta


def read_prompt(start):
    """The start text itself, or the contents of the file named after FILE:."""
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
    if cfg.num_samples < 1 or cfg.max_new_tokens < 0:
        raise UserError("num_samples must be at least 1 and max_new_tokens at least 0")
    if cfg.temperature < 0:
        raise UserError(f"temperature must be 0 (greedy) or more, got {cfg.temperature}")

    if cfg.init_from != "resume":
        raise UserError(f"unknown init_from {cfg.init_from!r}; use 'resume' to sample from the checkpoint in out_dir")
    checkpoint = load_checkpoint(cfg.out_dir)
    model = model_from_checkpoint(checkpoint, dropout=0.0)
    tokenizer = tokenizer_from_meta(checkpoint["tokenizer"])
    del checkpoint
    model.eval()
    model.to(device)

    prompt_ids = tokenizer.encode(read_prompt(cfg.start))
    if not prompt_ids:
        raise UserError("the prompt is empty; give some text with --start=TEXT (the default is a newline)")
    x = torch.tensor(prompt_ids, dtype=torch.long, device=device)[None, ...]

    # a generator of our own: the same seed gives the same samples, whatever else used the global RNG
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    with torch.no_grad(), autocast_context(device, dtype):
        for _ in range(cfg.num_samples):
            y = model.generate(x, cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k, generator=generator)
            print(tokenizer.decode(y[0].tolist()))
            print("---------------")


if __name__ == "__main__":
    run_main(main)
