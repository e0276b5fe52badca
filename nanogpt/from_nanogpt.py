"""Karpathy's nanoGPT's files, read as they are: a dataset folder's meta.pkl (its character vocabulary)
and the ckpt.pt its train.py writes, so a nanoGPT user's data and runs carry over.

meta.pkl is a pickle, and unpickling can run code: it is read by an unpickler that builds only dicts,
lists, strings and numbers, and refuses anything that names a class or function. A nanoGPT checkpoint
holds the model (with '_orig_mod.' prefixes after compile=True), its AdamW state, model_args,
iter_num, best_val_loss and config; what it lacks is found as nanoGPT finds it: the tokenizer from the
dataset's meta.pkl under data/ (characters), else GPT-2's BPE.
"""

import json
import pickle
import sys
from dataclasses import fields
from pathlib import Path

import torch

from nanogpt.errors import DataError
from nanogpt.model import GPT, GPTConfig
from nanogpt.tokenizer import GPT2_VOCAB_SIZE, describe_vocabulary

META_PKL = "meta.pkl"


class PlainValuesOnly(pickle.Unpickler):
    """Builds dicts, lists, tuples, strings and numbers (pickle opcodes of their own); refuses every
    class or function a pickle names, which is how a pickle runs code."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"it names {module}.{name}")


def read_meta_pkl(path):
    """nanoGPT's character vocabulary (its prepare.py's {'vocab_size', 'itos', 'stoi'}) as the meta
    this project's datasets have: {'tokenizer': 'char', 'vocab_size', 'chars'}."""
    try:
        with open(path, "rb") as f:
            meta = PlainValuesOnly(f).load()
    except pickle.UnpicklingError as e:
        raise DataError(
            f"{path} holds more than dicts, strings and numbers ({e}): loading it could run code, so it is not read;"
            " prepare the dataset again with this project's prepare script"
        ) from None
    except (OSError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError) as e:
        raise DataError(f"{path} cannot be read ({type(e).__name__}: {e}); prepare the dataset again") from None
    itos = meta.get("itos") if isinstance(meta, dict) else None
    size = meta.get("vocab_size") if isinstance(meta, dict) else None
    chars = [itos.get(i) for i in range(size)] if isinstance(itos, dict) and isinstance(size, int) else []
    if not chars or len(itos) != size or not all(isinstance(c, str) and len(c) == 1 for c in chars):
        raise DataError(
            f"{path} is not nanoGPT's meta.pkl of a character vocabulary (an 'itos' of vocab_size single"
            " characters, numbered from 0); prepare the dataset again"
        )
    return {"tokenizer": "char", "vocab_size": size, "chars": chars}


def is_nanogpt_checkpoint(checkpoint):
    """A checkpoint nanoGPT's train.py wrote: its config and model_args, no tokenizer of ours."""
    return "tokenizer" not in checkpoint and isinstance(checkpoint.get("config"), dict) and "model_args" in checkpoint


def from_nanogpt_checkpoint(checkpoint, path, data_dir="data"):
    """nanoGPT's checkpoint with what this project's has: model_args with nanoGPT's exact GELU, best val
    loss a number, the tokenizer found as nanoGPT's sample.py finds it (data_dir/<dataset>/meta.pkl,
    relative to where the script runs, else GPT-2), and its AdamW state in this model's parameter order."""
    known = {f.name for f in fields(GPTConfig)}
    model_args = {k: v for k, v in checkpoint["model_args"].items() if k in known}
    model_args["exact_gelu"] = True  # nanoGPT's MLP is nn.GELU(): the erf GELU
    tokenizer, source = nanogpt_tokenizer(checkpoint["config"].get("dataset"), data_dir)
    print(
        f"note: {path} is a nanoGPT checkpoint; its tokenizer: {describe_vocabulary(tokenizer)}, {source}",
        file=sys.stderr,
    )
    best = checkpoint.get("best_val_loss", float("inf"))
    converted = dict(
        checkpoint,
        model_args=model_args,
        iter_num=int(checkpoint.get("iter_num", 0)),
        best_val_loss=float(best.item() if isinstance(best, torch.Tensor) else best),
        tokenizer=tokenizer,
        config=dict(checkpoint["config"], data_dir=data_dir),  # nanoGPT's data is under data/<dataset>
    )
    if isinstance(checkpoint.get("optimizer"), dict):
        converted["optimizer"] = in_our_parameter_order(checkpoint["optimizer"], GPTConfig(**model_args))
    return converted


def nanogpt_tokenizer(dataset, data_dir):
    """(meta, where it came from) for a nanoGPT run on `dataset`: its meta.pkl's characters, a meta.json
    this project prepared there, or GPT-2's BPE (nanoGPT's default)."""
    folder = Path(data_dir) / str(dataset)
    if dataset and (folder / META_PKL).is_file():
        return read_meta_pkl(folder / META_PKL), f"from {folder / META_PKL}"
    if dataset and (folder / "meta.json").is_file():
        return json.loads((folder / "meta.json").read_text(encoding="utf-8")), f"from {folder / 'meta.json'}"
    gpt2 = {"tokenizer": "gpt2", "vocab_size": GPT2_VOCAB_SIZE, "dtype": "uint16"}
    return gpt2, f"GPT-2's, as nanoGPT assumes without {folder / META_PKL}"


def in_our_parameter_order(state, config):
    """nanoGPT's AdamW state dict renumbered for this model. Both optimizers have the same two groups
    (matrices decayed, vectors not) over the same parameters; nanoGPT's model lists the position table
    right after the token embedding, this one's after the final norm. A state that does not map so
    (another model or optimizer) is returned as it is, and resuming then starts a fresh optimizer."""
    with torch.device("meta"):
        shapes = {name: p.shape for name, p in GPT(config).named_parameters()}
    theirs = [n for n in shapes if n != "transformer.wpe.weight"]
    if "transformer.wpe.weight" in shapes:
        theirs.insert(1, "transformer.wpe.weight")

    def by_group(order):  # make_optimizers' groups, and nanoGPT's configure_optimizers'
        return [n for n in order if len(shapes[n]) >= 2], [n for n in order if len(shapes[n]) < 2]

    ours_by_group, theirs_by_group = by_group(list(shapes)), by_group(theirs)
    saved_groups, moments = state.get("param_groups", []), state.get("state", {})
    if [len(g.get("params", [])) for g in saved_groups] != [len(g) for g in theirs_by_group]:
        return state
    their_index = {name: i for i, name in enumerate(theirs_by_group[0] + theirs_by_group[1])}
    renumbered = {}
    for i, name in enumerate(ours_by_group[0] + ours_by_group[1]):
        moment = moments.get(their_index[name])
        if moment is not None and getattr(moment.get("exp_avg"), "shape", None) != shapes[name]:
            return state
        if moment is not None:
            renumbered[i] = moment
    first, groups = 0, []
    for group, names in zip(saved_groups, ours_by_group):
        groups.append(dict(group, params=list(range(first, first + len(names)))))
        first += len(names)
    return {"state": renumbered, "param_groups": groups}
