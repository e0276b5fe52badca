"""Loss and bits per byte of a model on a text, or its accuracy on multiple-choice items (HellaSwag):
a checkpoint, GPT-2, or a Hugging Face GPT-2 folder.

    python eval.py --out_dir=out-shakespeare-char                       # its dataset's val split
    python eval.py --out_dir=out-shakespeare-char --input=some_text.txt
    python eval.py --init_from=gpt2 --input=some_text.txt --stride=512
    python eval.py --init_from=gpt2 --task=hellaswag                    # acc and acc_norm
    python eval.py --out_dir=out-shakespeare-char --task=my_items.jsonl

Loss in nats per token depends on the tokenizer; bits per byte (the nats over every scored token,
divided by the UTF-8 bytes of their text, over ln 2) does not, so a character-level and a BPE model
compare on it. A text longer than the model's context is read in windows of block_size tokens moving
--stride tokens at a time; each token is scored once, by the first window in which it is not among the
first block_size - stride positions (so it has at least that much context), as in Hugging Face's
perplexity recipe. A model with an end-of-text token starts from it, so every byte of the text is
scored; a character-level model has none, so the text's first character is given, not scored.
--task scores multiple-choice items instead (how, and the file formats: nanogpt/multiple_choice.py).
"""

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nanogpt  # noqa: F401  first: a Ctrl-C while torch loads ends in one line (nanogpt/__init__.py)
import numpy as np
import torch

from nanogpt.checkpoint import check_model_source, load_checkpoint, load_model_and_tokenizer, model_from_checkpoint
from nanogpt.command_line import load_config, setting
from nanogpt.config import CHECKPOINTS, DTYPES, quantize_setting
from nanogpt.data import Dataset, read_text
from nanogpt.generation.engine import inference_model
from nanogpt.errors import DataError, SettingError, run_main
from nanogpt.multiple_choice import accuracy, loglikelihoods, read_items, task_file
from nanogpt.system import resolve_device, resolve_dtype
from nanogpt.tokenizer import tokenizer_from_meta


@dataclass
class EvalSettings:
    out_dir: str = setting("out", "folder holding the checkpoint (with init_from='resume')")
    init_from: str = setting(
        "resume", "'resume' (the checkpoint in out_dir), a GPT-2 name (gpt2 ... gpt2-xl) or a Hugging Face GPT-2 folder"
    )
    checkpoint: str = setting(
        "best", "with init_from='resume': 'best' (best.pt) or 'latest' (ckpt.pt)", choices=CHECKPOINTS
    )
    input: str = setting("", "a UTF-8 text file; empty: the val split of the dataset the checkpoint was trained on")
    stride: int = setting(
        0,
        "tokens each window moves on; 0: half the context. Smaller: more context per token, slower",
        within="[0, inf)",
    )
    task: str = setting(
        "",
        "'hellaswag' (its validation set, downloaded once into data/hellaswag/) or a .jsonl file of "
        "multiple-choice items; empty: loss on a text",
    )
    batch_size: int = setting(8, "windows (with --task, choices) per forward pass", within="[1, inf)")
    device: str = setting("auto", "'auto' (cuda, then mps, then cpu), or e.g. 'cpu', 'cuda'")
    dtype: str = setting("float32", "'float32', 'bfloat16', 'float16' or 'auto'", choices=DTYPES)
    quantize: str = quantize_setting()


def read_settings(argv):
    cfg = load_config(EvalSettings, argv, script="eval.py")
    check_model_source(cfg.init_from)
    if cfg.task and cfg.input:
        raise SettingError("give --task=... (multiple-choice accuracy) or --input=FILE (loss on a text), not both")
    if not cfg.input and not cfg.task and cfg.init_from != "resume":
        raise SettingError(f"--input=FILE is needed to evaluate --init_from={cfg.init_from}: it has no dataset")
    if cfg.input and not Path(cfg.input).is_file():
        shown = cfg.input if cfg.input.isprintable() else repr(cfg.input)  # a message stays one line
        raise SettingError(f"--input={shown} is not a file; give a UTF-8 text file")
    resolve_dtype(cfg.dtype, resolve_device(cfg.device), cfg.quantize)
    return cfg


def model_tokenizer_and_ids(cfg, dtype):
    """The model, its tokenizer, the token ids to score and where they came from."""
    if cfg.input:
        model, tokenizer = load_model_and_tokenizer(cfg.init_from, cfg.out_dir, cfg.checkpoint, dtype)
        return model, tokenizer, tokenizer.encode(read_text(cfg.input), ordinary=True), cfg.input
    checkpoint = load_checkpoint(cfg.out_dir, cfg.checkpoint)
    data = Dataset(checkpoint["config"]["data_dir"], checkpoint["config"]["dataset"])
    model, tokenizer = (
        model_from_checkpoint(checkpoint, dropout=0.0),
        tokenizer_from_meta(checkpoint["tokenizer"], checkpoint["path"]),
    )
    ids = np.asarray(data.tokens("val"), dtype=np.int64)
    data.check_ids(ids, f"the val split of {data.dir}")
    return model, tokenizer, ids, f"the val split of {data.dir}"


def windows(n_ids, context, stride):
    """(begin, end, first scored) for each window over ids[begin:end]: inputs ids[begin:end-1] predict
    ids[begin+1:end], of which those from index `first scored` on are scored (the earlier ones were)."""
    scored_up_to, begin = 1, 0
    while scored_up_to < n_ids:
        end = min(begin + context + 1, n_ids)
        yield begin, end, scored_up_to
        scored_up_to, begin = end, begin + stride


@torch.no_grad()
def score(model, ids, token_bytes, stride, batch_size, device):
    """Total nats, scored tokens and their bytes over ids, read window by window."""
    context = model.config.block_size
    ids = torch.as_tensor(ids, dtype=torch.long)
    nats, tokens, text_bytes = 0.0, 0, 0
    pending = list(windows(len(ids), context, stride))
    t_report, total = time.time(), len(pending)
    while pending:
        # windows of one length go through the model together (all but the last window have the full length)
        length = pending[0][1] - pending[0][0]
        batch = [w for w in pending[:batch_size] if w[1] - w[0] == length]
        pending = pending[len(batch) :]
        x = torch.stack([ids[b : e - 1] for b, e, _ in batch])
        y = torch.stack([ids[b + 1 : e] for b, e, _ in batch])
        for row, (b, _, first) in enumerate(batch):
            y[row, : first - b - 1] = -1  # already scored by an earlier window: context only
        scored = y[y >= 0]
        _, loss = model(x.to(device), y.to(device))
        nats += loss.item() * scored.numel()
        tokens += scored.numel()
        text_bytes += int(token_bytes[scored].sum())
        if time.time() - t_report > 5:
            print(f"  {total - len(pending)}/{total} windows", file=sys.stderr, flush=True)
            t_report = time.time()
    return nats, tokens, text_bytes


def evaluate_task(cfg, device, dtype):
    """acc and acc_norm on a multiple-choice task."""
    path = task_file(cfg.task)
    model, tokenizer = load_model_and_tokenizer(cfg.init_from, cfg.out_dir, cfg.checkpoint, dtype)
    items = read_items(path, tokenizer, model.config.block_size)
    model = inference_model(model, device, dtype, cfg.quantize)
    scores = accuracy(loglikelihoods(model, items, cfg.batch_size, device, tokenizer.vocab_size, progress=True), items)
    print(f"{path}: {scores.count:,} items")
    print(
        f"acc {scores.acc:.4f} ({scores.correct:,}/{scores.count:,}, summed log-likelihood), acc_norm "
        f"{scores.acc_norm:.4f} ({scores.correct_norm:,}/{scores.count:,}, per token)"
    )


def main():
    cfg = read_settings(sys.argv[1:])
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device, cfg.quantize)
    if cfg.task:
        return evaluate_task(cfg, device, dtype)
    model, tokenizer, ids, source = model_tokenizer_and_ids(cfg, dtype)
    model = inference_model(model, device, dtype, cfg.quantize)
    stride = cfg.stride or max(1, model.config.block_size // 2)
    if stride > model.config.block_size:
        raise SettingError(
            f"stride {stride} is longer than the model's context of {model.config.block_size} tokens; use "
            f"--stride={model.config.block_size} or less"
        )
    eot = getattr(tokenizer, "eot_token", None)
    if eot is not None:
        ids = np.concatenate([[eot], np.asarray(ids, dtype=np.int64)])  # so the text's first token is scored too
    if len(ids) < 2:  # a token to predict and one to predict it from
        needed = 1 if eot is not None else 2
        raise DataError(f"{source} is too short to score: it needs at least {needed} token{'s' if needed > 1 else ''}")
    token_bytes = torch.tensor(tokenizer.token_byte_lengths())
    nats, tokens, text_bytes = score(model, ids, token_bytes, stride, cfg.batch_size, device)
    print(
        f"{source}: {tokens:,} tokens, {text_bytes:,} bytes scored (context {model.config.block_size}, stride {stride})"
    )
    print(f"loss {nats / tokens:.6f} nats per token, {nats / max(text_bytes, 1) / math.log(2):.6f} bits per byte")


if __name__ == "__main__":
    run_main(main)
