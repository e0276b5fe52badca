"""Saving and loading checkpoints: atomically, and without unpickling arbitrary objects.

A checkpoint is a dict of tensors and plain Python values (numbers, strings, lists, dicts), written
with torch.save and read back with torch.load(weights_only=True), which refuses anything else, so a
checkpoint from a stranger cannot run code on load.
"""

import pickle
import random
import sys
from pathlib import Path

import numpy as np
import torch

from nanogpt.errors import CheckpointError, SettingError, first_line
from nanogpt.files import write_atomically
from nanogpt.from_nanogpt import from_nanogpt_checkpoint, is_nanogpt_checkpoint
from nanogpt.hf import gpt_from_pretrained, is_pretrained_source, not_a_model, pretrained_block_size
from nanogpt.tokenizer import KINDS, meta_from_hf_folder, tokenizer_from_meta

CHECKPOINT_NAME = "ckpt.pt"  # the latest full state: what --init_from=resume continues
BEST_NAME = "best.pt"  # the model with the best val loss so far: what sampling and export read
# best.pt: no optimizer
MODEL_KEYS = (
    "model",
    "model_args",
    "iter_num",
    "best_val_loss",
    "config",
    "tokenizer",
    "lora",
)


def save_checkpoint(out_dir, checkpoint, name=CHECKPOINT_NAME):
    """Write atomically: a crash at any moment leaves either the old checkpoint or the new one, never a
    torn file, and a full disk leaves the old one untouched."""
    path = Path(out_dir) / name
    write_atomically({path: lambda f: torch.save(checkpoint, f)}, tensor_bytes(checkpoint))
    return path


def tensor_bytes(value):
    """Bytes of the tensors in a nested dict / list: about the size of the checkpoint on disk."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return 0


def capture_rng_state(batch_generator_state):
    """Every random stream training draws from, as tensors and plain values (safe to save). The batch
    generator's state is passed in: the caller keeps the one from before its prefetched batch."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": np_state["state"]["pos"],
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        },
        "torch": torch.get_rng_state(),
        "batches": batch_generator_state,
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state, batch_generator):
    random.setstate(state["python"])
    np_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": np_state["bit_generator"],
            "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    batch_generator.set_state(state["batches"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def strip_compile_prefix(state_dict):
    """torch.compile wraps the model and prefixes its keys with '_orig_mod.'; accept such files."""
    prefix = "_orig_mod."
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state_dict.items()}


def load_checkpoint(out_dir, which="latest", device="cpu"):
    """which: 'latest' (ckpt.pt) or 'best' (best.pt; ckpt.pt for runs saved before best.pt existed)."""
    if which not in ("latest", "best"):
        raise SettingError(
            f"unknown checkpoint {which!r}; use best (the lowest val loss) or latest (where training stopped)"
        )
    path = Path(out_dir) / CHECKPOINT_NAME
    if which == "best" and (Path(out_dir) / BEST_NAME).is_file():
        path = Path(out_dir) / BEST_NAME
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint in {out_dir} ({path} does not exist); train one first, e.g. python train.py "
            "config/train_shakespeare_char.py, or pass --out_dir=FOLDER"
        )
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message advises weights_only=False, which would run whatever the file holds: never
        raise CheckpointError(
            f"{path} could not be loaded safely: it is not a nanogpt checkpoint (it holds objects other than "
            "tensors and"
            f" plain values, which could run code when loaded, or it is damaged); nanogpt does not load such files"
        ) from None
    except Exception as e:
        raise CheckpointError(
            f"{path} could not be loaded safely: it is corrupt, truncated or not a nanogpt checkpoint ({first_line(e)})"
        ) from None
    if not isinstance(checkpoint, dict) or "model" not in checkpoint or "model_args" not in checkpoint:
        raise CheckpointError(f"{path} is not a nanogpt checkpoint (it has no 'model' and 'model_args' entries)")
    if is_nanogpt_checkpoint(checkpoint):
        checkpoint = dict(from_nanogpt_checkpoint(checkpoint, path), origin="nanoGPT")
    if not isinstance(checkpoint.get("tokenizer"), dict) or checkpoint["tokenizer"].get("tokenizer") not in KINDS:
        raise CheckpointError(
            f"{path} names no tokenizer this version knows ({', '.join(KINDS)}); it is damaged or from another program"
        )
    checkpoint["model"] = strip_compile_prefix(checkpoint["model"])
    checkpoint["path"] = str(path)  # where it was read from, for messages; not saved
    if which == "best" and path.name == CHECKPOINT_NAME:
        print(
            f"note: {out_dir} holds no {BEST_NAME} (a run of nanoGPT or an older version); reading {CHECKPOINT_NAME}",
            file=sys.stderr,
        )
    return checkpoint


def model_from_checkpoint(checkpoint, merge=True, base_dtype=torch.float32, **overrides):
    """Rebuild the GPT a checkpoint was saved from; overrides may change e.g. dropout. A LoRA run's
    checkpoint gives its base with the adapters, merged into the weights unless merge=False (to train
    on, the frozen weights in base_dtype): see nanogpt/lora.py."""
    from nanogpt.model import GPT, GPTConfig

    if "lora" in checkpoint:
        from nanogpt.lora import model_with_adapters

        return model_with_adapters(checkpoint, merge, base_dtype, **overrides)
    try:
        model = GPT(GPTConfig(**dict(checkpoint["model_args"], **overrides)))
        model.load_state_dict(checkpoint["model"])
    except (TypeError, RuntimeError) as e:
        raise CheckpointError(
            f"the checkpoint's weights do not fit its model settings ({first_line(e)}); it is damaged or from "
            "another program"
        ) from None
    return model


def check_model_source(init_from):
    """Refuse, before anything loads, an init_from that names no model: 'resume', a GPT-2 name or a
    Hugging Face folder."""
    if init_from == "resume":
        return
    if not is_pretrained_source(init_from):
        raise not_a_model(
            init_from, "'resume' (the checkpoint in out_dir), a GPT-2 name or a Hugging Face model folder"
        )
    pretrained_block_size(init_from)  # checks the name or folder


def load_model_and_tokenizer(init_from, out_dir, which="best", dtype="float32"):
    """The model and tokenizer that sample.py and serve.py generate with: the checkpoint in out_dir
    (init_from='resume'; which: 'best' or 'latest'), or GPT-2 weights (a name or a Hugging Face folder),
    read straight into `dtype`."""
    if init_from == "resume":
        checkpoint = load_checkpoint(out_dir, which)
        return model_from_checkpoint(checkpoint, dropout=0.0), tokenizer_from_meta(
            checkpoint["tokenizer"], checkpoint["path"]
        )
    return gpt_from_pretrained(init_from, getattr(torch, dtype)), tokenizer_from_meta(meta_from_hf_folder(init_from))
