"""A run's full state in and out of a checkpoint: refusing settings that cannot continue it, restoring
optimizer moments, loss scale and random streams (an exact resume), and writing the state, a sharded
run's gathered into the same files an unsharded run writes."""

from dataclasses import asdict, replace

import torch

from nanogpt.checkpoint import (
    BEST_NAME,
    MODEL_KEYS,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from nanogpt.config import TrainSettings
from nanogpt.errors import CheckpointError, DataError, SettingError
from nanogpt.lora import adapter_state, check_lora_resume
from nanogpt.model import GPTConfig, architecture_switches
from nanogpt.tokenizer import describe_vocabulary, same_vocabulary

MODEL_SHAPE_KEYS = ("n_layer", "n_head", "n_embd", "bias", *(f.name for f in architecture_switches()))


def resumable_checkpoint(cfg, data):
    """out_dir's checkpoint and the settings that continue it, after checking that these settings and
    this dataset can: refused in one sentence before anything is written."""
    # loaded into CPU memory: on a GPU a second copy of the model and optimizer could run it out of memory
    checkpoint = load_checkpoint(cfg.out_dir)
    saved_optimizer = checkpoint.get("config", {}).get("optimizer", "adamw")  # nanoGPT's runs: AdamW
    if cfg.optimizer != saved_optimizer:
        raise SettingError(
            f"cannot resume with --optimizer={cfg.optimizer}: the run in {cfg.out_dir} was trained with"
            f" {saved_optimizer}, whose state does not carry over; resume with --optimizer={saved_optimizer}, or"
            " train a new model in another --out_dir"
        )
    cfg = settings_to_resume(cfg, checkpoint, TrainSettings())
    check_lora_resume(cfg, checkpoint)
    if not same_vocabulary(checkpoint["tokenizer"], data.meta):
        raise DataError(
            f"the checkpoint in {cfg.out_dir} was trained on {describe_vocabulary(checkpoint['tokenizer'])} but dataset"
            f" {cfg.dataset!r} has {describe_vocabulary(data.meta)}; resume with the dataset it was trained on"
        )
    return checkpoint, cfg


def settings_to_resume(cfg, checkpoint, defaults):
    """The settings that continue the saved run, with the checkpoint's shape: a shape key (or block_size)
    left at its default takes the checkpoint's value, one set to another is refused (block_size may
    shrink, not grow). Reports the settings that change the run. defaults: the settings class's defaults."""
    saved_args = checkpoint["model_args"]
    shape = {}
    for key in MODEL_SHAPE_KEYS:
        saved = saved_args.get(key, getattr(GPTConfig(), key))  # older checkpoints lack the newer switches
        if getattr(cfg, key) != getattr(defaults, key) and getattr(cfg, key) != saved:
            raise SettingError(
                f"cannot resume with {key}={getattr(cfg, key)}: the checkpoint in {cfg.out_dir} has {key}={saved};"
                f" drop the setting, or train a new model in another --out_dir"
            )
        shape[key] = saved
    positions = saved_args["block_size"]
    if cfg.block_size != defaults.block_size and cfg.block_size > positions:
        raise SettingError(
            f"cannot resume with block_size={cfg.block_size}: the model in {cfg.out_dir} has {positions} positions;"
            f" use --block_size={positions} or less, or train a new model in another --out_dir"
        )
    cfg = replace(cfg, **shape, block_size=positions if cfg.block_size == defaults.block_size else cfg.block_size)
    saved_config = checkpoint.get("config", {})
    changed = [
        f"{k} {saved_config[k]!r} -> {v!r}"
        for k, v in asdict(cfg).items()
        if k in saved_config and saved_config[k] != v and k not in ("init_from", "overwrite")
    ]
    if changed:
        print("settings changed since the checkpoint: " + ", ".join(changed))
    return cfg


def restore_optimizers(checkpoint, model, optimizers, scaler, fsdp):
    """Optimizer moments and loss scale from a checkpoint; the settings (rates, betas, decay) stay this
    run's."""
    saved = checkpoint["optimizer"]
    saved = saved if isinstance(saved, list) else [saved]  # one AdamW in older checkpoints
    if len(saved) != len(optimizers):
        raise CheckpointError(
            f"{checkpoint['path']} was trained with another optimizer; resume without changing --optimizer"
        )
    if checkpoint.get("origin") == "nanoGPT" and not fits_optimizer(saved[0], optimizers[0]):
        print("note: the nanoGPT checkpoint's optimizer state does not fit this model's AdamW; starting a fresh one")
        return
    for optimizer, state in zip(optimizers, saved):
        settings = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
        if fsdp or any(isinstance(key, str) for key in state["state"]):
            # saved by parameter name (an FSDP run's full state dict): maps onto sharded and plain models
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
        else:
            optimizer.load_state_dict(state)
        for group, setting in zip(optimizer.param_groups, settings):
            group.update(setting)
    if "scaler" in checkpoint:
        scaler.load_state_dict(checkpoint["scaler"])


def restore_random_streams(checkpoint, procs, batches, seed):
    """Continue every random stream exactly where the saved run was: this process's own where the
    checkpoint holds every process's, else rank 0's (another number of processes, or an older one)."""
    if "rng" not in checkpoint:
        if procs.master:
            print(
                "note: this checkpoint holds no random state (saved by nanoGPT or an older version); the resumed run "
                "will draw other batches"
            )
        return
    rank_rng = checkpoint.get("rank_rng")
    if rank_rng is not None and len(rank_rng) == procs.world_size:
        restore_rng_state(rank_rng[procs.rank], batches.generator)
    else:
        restore_rng_state(checkpoint["rng"], batches.generator)
        if procs.rank > 0:
            torch.manual_seed(seed + procs.rank + checkpoint["iter_num"])


def fits_optimizer(state, optimizer):
    """Whether a saved optimizer state has this optimizer's groups, each moment the shape of its parameter."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    sizes = [len(group["params"]) for group in optimizer.param_groups]
    if [len(group.get("params", [])) for group in state.get("param_groups", [])] != sizes:
        return False
    moments = state.get("state", {})
    return all(
        all(getattr(moments[i].get(key), "shape", p.shape) == p.shape for key in ("exp_avg", "exp_avg_sq"))
        for i, p in enumerate(params)
        if i in moments
    )


def full_state(model, optimizers, fsdp):
    """The model's and optimizers' state dicts. Under FSDP every process must call it: the full weights
    are gathered from all shards (to the CPU), so the files are the same as an unsharded run's."""
    if not fsdp:
        return model.state_dict(), [optimizer.state_dict() for optimizer in optimizers]
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=full), [
        get_optimizer_state_dict(model, optimizer, options=full) for optimizer in optimizers
    ]


def save_run(setup, progress, rank_rng, best=False):
    """Write ckpt.pt, the full state, from rank 0; with best, also best.pt (the model alone), and with
    keep_checkpoints a numbered copy. Under FSDP every process must call it (see full_state). setup and
    progress: train.py's Setup and Progress; rank_rng: every process's random streams under DDP."""
    cfg, step = setup.cfg, setup.step
    model_state, optimizer_states = full_state(setup.raw_model, step.optimizers, cfg.fsdp)
    progress.saved_iter, progress.has_checkpoint = progress.iter_num, True
    if not setup.procs.master:
        return
    checkpoint = {
        "model": adapter_state(model_state) if setup.lora else model_state,
        "optimizer": optimizer_states,
        "scaler": step.scaler.state_dict(),
        "model_args": setup.model_args,
        "iter_num": progress.iter_num,
        "best_val_loss": progress.best_val_loss,
        "train_seconds": progress.train_seconds,  # the time axis of a resumed run's metrics continues from here
        "tokens": progress.tokens,  # and its tokens axis
        "config": asdict(cfg),
        "tokenizer": setup.data.meta,
        # the other streams are where they were when that batch was drawn: since then only backward,
        # the optimizer step and evaluation ran, and none of them draws random numbers
        "rng": capture_rng_state(setup.batches.position),
    }
    if setup.lora:
        checkpoint["lora"] = setup.lora
    if setup.procs.ddp:
        checkpoint["rank_rng"] = rank_rng  # every process's streams, gathered at this step
    path = save_checkpoint(cfg.out_dir, checkpoint)
    if best:
        save_checkpoint(cfg.out_dir, {key: checkpoint[key] for key in MODEL_KEYS if key in checkpoint}, BEST_NAME)
    print(f"saved checkpoint to {path}" + (f" and the best model so far to {BEST_NAME}" if best else ""))
    if cfg.keep_checkpoints:
        save_checkpoint(cfg.out_dir, checkpoint, f"ckpt-{progress.iter_num:06d}.pt")
        for old in sorted(path.parent.glob("ckpt-[0-9]*.pt"))[: -cfg.keep_checkpoints]:
            old.unlink()
