"""The model a run trains, on its process's device: a new one, the checkpoint it resumes, or GPT-2's
weights (under LoRA adapters with lora_rank), each after the memory plan says the step fits."""

import os
from dataclasses import asdict

import torch

from nanogpt.checkpoint import CHECKPOINT_NAME, model_from_checkpoint
from nanogpt.config import gpt_config
from nanogpt.errors import DataError, SettingError
from nanogpt.hf import gpt_from_pretrained, pretrained_config
from nanogpt.lora import adapters_note, add_adapters, lora_record
from nanogpt.model import GPT, GPTConfig, architecture_switches
from nanogpt.system import float8_training
from nanogpt.tokenizer import (
    describe_vocabulary,
    meta_from_hf_folder,
    model_vocab_size,
    same_vocabulary,
    without_chat_tokens,
)
from nanogpt.training.memory_plan import check_memory


def build_model(cfg, data, procs, dtype, checkpoint):
    """The model to train on this process's device and its constructor arguments; checkpoint: the one
    it resumes, or None. The memory plan comes first (nanogpt/training/memory_plan.py)."""
    if cfg.init_from != "resume" and os.path.exists(os.path.join(cfg.out_dir, CHECKPOINT_NAME)) and not cfg.overwrite:
        raise SettingError(
            f"{cfg.out_dir} already holds a checkpoint; continue it with --init_from=resume,"
            f" choose another --out_dir, or replace it with --overwrite=True"
        )
    if cfg.memory_check != "off":  # the step's memory against the device's, before any weights load
        scratch_shape = gpt_config(cfg, model_vocab_size(data.meta)) if cfg.init_from == "scratch" else None
        shape = (
            GPTConfig(**checkpoint["model_args"]) if checkpoint else scratch_shape or pretrained_config(cfg.init_from)
        )
        check_memory(shape, cfg, dtype, procs, pretrained=checkpoint is None and cfg.init_from != "scratch")
    if procs.master:
        print(
            {"scratch": "training a new model from scratch", "resume": f"resuming from {cfg.out_dir}"}.get(
                cfg.init_from, f"fine-tuning {cfg.init_from}"
            )
        )
    if cfg.init_from == "scratch":
        model = GPT(gpt_config(cfg, model_vocab_size(data.meta)))
    elif cfg.init_from == "resume":
        # the architecture comes from the checkpoint; only dropout (and recomputation) may change on resume
        model = model_from_checkpoint(
            checkpoint,
            merge=False,
            base_dtype=getattr(torch, dtype),
            dropout=cfg.dropout,
            activation_checkpointing=cfg.activation_checkpointing,
        )
    else:
        model = pretrained_model(cfg, data, dtype)
    if cfg.block_size < model.config.block_size:
        model.crop_block_size(cfg.block_size)
    model.to(procs.device)
    if procs.master:
        print(f"model: {model.get_num_params() / 1e6:.2f}M parameters" + adapters_note(model))
    if cfg.fp8:
        swapped = float8_training(model)
        if procs.master:
            print(f"fp8: {swapped} Linear layers run their matmuls in float8")
    if procs.rank > 0:
        torch.manual_seed(cfg.seed + procs.rank)  # but dropout masks of its own
    return model, asdict(model.config)


def pretrained_model(cfg, data, dtype):
    """GPT-2 weights (a name or a Hugging Face folder; frozen under adapters with lora_rank), once they fit
    the data and settings."""
    changed = [f.name for f in architecture_switches() if getattr(cfg, f.name) != f.default]
    if changed:
        raise SettingError(
            f"{', '.join(changed)} cannot be used with pretrained GPT-2 weights ({cfg.init_from}), which were "
            "trained without them"
        )
    pretrained_meta = meta_from_hf_folder(cfg.init_from)
    # a chat dataset (data/chat/prepare.py) may add turn markers after the model's vocabulary: they grow it
    chat_on_top = data.meta.get("chat_tokens") and same_vocabulary(pretrained_meta, without_chat_tokens(data.meta))
    if not chat_on_top and not same_vocabulary(pretrained_meta, data.meta):
        hint = (
            (
                " use --dataset=shakespeare (python data/shakespeare/prepare.py) or python "
                "data/custom/prepare.py --tokenizer=gpt2"
            )
            if pretrained_meta["tokenizer"] == "gpt2"
            else " use the dataset it was trained on"
        )
        raise DataError(
            f"{cfg.init_from} reads {describe_vocabulary(pretrained_meta)}, but dataset {cfg.dataset!r} has "
            f"{describe_vocabulary(data.meta)};{hint}"
        )
    model = gpt_from_pretrained(
        cfg.init_from, dropout=cfg.dropout, activation_checkpointing=cfg.activation_checkpointing
    )
    if chat_on_top:
        model.grow_vocabulary(model_vocab_size(data.meta))
    return add_adapters(model, lora_record(cfg, cfg.init_from), getattr(torch, dtype)) if cfg.lora_rank else model
