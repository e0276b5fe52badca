"""Train a GPT. Runs on one CPU, one GPU, or many GPUs with DDP.

    python train.py config/train_shakespeare_char.py
    python train.py config/train_shakespeare_char.py --batch_size=32 --compile=False
    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py

python train.py --help lists every setting. The file reads in the order a run happens: its settings,
its set-up (data, model, optimizers, logs), then the loop (evaluate and save, step, log, stop).
"""

import contextlib
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, replace

import nanogpt  # noqa: F401  first: a Ctrl-C while torch loads ends in one line (nanogpt/__init__.py)
import torch

from nanogpt.checkpoint import (
    BEST_NAME,
    CHECKPOINT_NAME,
    MODEL_KEYS,
    capture_rng_state,
    model_from_checkpoint,
    save_checkpoint,
)
from nanogpt.config import TrainSettings, gpt_config, load_config
from nanogpt.data import Dataset, TrainBatches
from nanogpt.errors import DataError, RunError, SettingError, out_of_memory_as_error, run_main
from nanogpt.files import check_writable_folder
from nanogpt.hf import gpt_from_pretrained, is_pretrained_source, not_a_model, pretrained_block_size, pretrained_config
from nanogpt.lora import adapter_state, adapters_note, add_adapters, check_lora_settings, lora_record, run_lora
from nanogpt.model import GPT, GPTConfig, architecture_switches
from nanogpt.system import (
    attention_kernel,
    autocast_context,
    check_attention_kernel,
    check_fp8,
    float8_training,
    keep_freed_memory,
    peak_flops,
    resolve_device,
    resolve_dtype,
)
from nanogpt.tokenizer import (
    describe_vocabulary,
    meta_from_hf_folder,
    model_vocab_size,
    same_vocabulary,
    tokenizer_from_meta,
)
from nanogpt.training.distributed import catch_stop_signals, processes, resume_command, shard, wrap_model
from nanogpt.training.evaluation import choice_accuracy, estimate_loss, format_duration, task_items
from nanogpt.training.lr_schedule import set_learning_rate
from nanogpt.training.memory_plan import check_memory
from nanogpt.training.optimizers import run_optimizers
from nanogpt.training.resume import (
    MODEL_SHAPE_KEYS,
    full_state,
    resumable_checkpoint,
    restore_optimizers,
    restore_random_streams,
)
from nanogpt.training.step import training_step
from nanogpt.training.train_log import METRICS_NAME, LossPlotter, append_record, open_run_log

# -- settings ---------------------------------------------------------------------------------------------


def read_settings(argv):
    """The run's settings, refused in one sentence if they cannot work, before any data or model loads
    (and changing nothing else): each key against what it declares (nanogpt/config.py), then what
    depends on more than one key."""
    cfg = load_config(TrainSettings, argv)
    if cfg.init_from not in ("scratch", "resume", "auto"):
        if not is_pretrained_source(cfg.init_from):
            raise not_a_model(
                cfg.init_from,
                "'scratch', 'resume', 'auto', a GPT-2 name (gpt2, gpt2-medium, gpt2-large, gpt2-xl) or a "
                "Hugging Face model folder",
            )
        pretrained_positions = pretrained_block_size(cfg.init_from)  # also checks the name or folder
        if cfg.block_size > pretrained_positions:
            raise SettingError(
                f"block_size {cfg.block_size} is larger than the {pretrained_positions} positions "
                f"{cfg.init_from} was trained with; use --block_size={pretrained_positions} or less"
            )
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if cfg.gradient_accumulation_steps % world_size != 0:
        raise SettingError(
            f"gradient_accumulation_steps ({cfg.gradient_accumulation_steps}) must be a multiple of the number of"
            f" processes ({world_size}), e.g. "
            f"--gradient_accumulation_steps={world_size * max(1, cfg.gradient_accumulation_steps // world_size)}"
        )
    gpt_config(cfg, vocab_size=1)  # the model's own shape checks, without building it
    if cfg.lora_rank:
        check_lora_settings(cfg)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    if cfg.fp8:
        check_fp8(device, dtype)
    check_attention_kernel(cfg.attention, device)
    return cfg


def main():
    cfg = read_settings(sys.argv[1:])
    if cfg.init_from == "auto":
        # for restarts (torchrun --max-restarts, a requeued job): continue the run if it has saved, else start it
        cfg = replace(
            cfg, init_from="resume" if os.path.exists(os.path.join(cfg.out_dir, CHECKPOINT_NAME)) else "scratch"
        )
    out_of_memory = (
        f"out of memory with batch_size={cfg.batch_size}, block_size={cfg.block_size}: lower --batch_size and raise"
        " --gradient_accumulation_steps by the same factor (tokens per iteration stay the same), lower "
        "--block_size, or make the model smaller"
    )
    with processes(cfg) as procs, attention_kernel(cfg.attention), out_of_memory_as_error(out_of_memory):
        train(cfg, procs)


def train(cfg, procs):
    setup, progress = set_up(cfg, procs)
    # from here a stop request is honoured at the end of a step; before, there is nothing to save, and a
    # signal ends the process at once (e.g. one waiting for peers that torchrun is restarting)
    setup = replace(setup, stop_signals=catch_stop_signals())
    progress, stopped = training_loop(setup, progress)
    if procs.master:
        setup.plotter.finish()
    if procs.master and not stopped:
        print(
            f"done: best val loss {progress.best_val_loss:.4f}; checkpoint, {METRICS_NAME} and loss.png in "
            f"{cfg.out_dir}"
        )


# -- set-up -----------------------------------------------------------------------------------------------


@dataclass
class Setup:
    """What a run fixes before its first step and keeps to its end."""

    cfg: TrainSettings
    procs: object  # nanogpt.training.distributed.Processes
    ctx: object  # autocast for the forward pass
    data: Dataset
    batches: TrainBatches
    token_bytes: torch.Tensor  # each token's length in UTF-8 bytes, for bits per byte
    raw_model: GPT  # the plain module: what gets saved
    model: torch.nn.Module  # compiled where that pays: what evaluates (every call of it stays on this rank)
    train_model: torch.nn.Module  # under DDP the wrapper that all-reduces gradients: what trains
    model_args: dict
    choice_items: list | None  # the multiple-choice items scored every hellaswag_interval steps
    lora: dict | None  # a LoRA run's adapters and base (nanogpt/lora.py): its checkpoints hold the adapters alone
    optimizers: list
    scaler: torch.amp.GradScaler
    tokens_per_iter: int
    flops_per_iter: float
    device_peak: float | None  # FLOPS, for MFU
    resumed_at: int | None  # the step resumed from: its eval is already in the log
    plotter: LossPlotter | None
    wandb: object
    stop_signals: list  # names of the stop signals received


@dataclass
class Progress:
    """What changes from step to step; the loop passes it on and gets it back."""

    iter_num: int = 0
    best_val_loss: float = float("inf")
    train_seconds: float = 0.0  # training time so far, evaluations left out (continues across resume)
    batch: tuple = None  # the next micro-batch (x, y)
    saved_iter: int = 0  # the step whose state is on disk (or, at 0, can be made again from the seed)
    has_checkpoint: bool = False
    evaluated: bool = False  # this process has evaluated once (the first evaluation says how long they take)
    ms_per_iter: float | None = None  # smoothed, for the ETA
    last_log: tuple = (0, 0.0)  # (iter_num, train_seconds) at the last log line


def set_up(cfg, procs):
    """Data, model, optimizers (restored on resume), wrappers and the run's log files."""
    if procs.master:  # before anything is spent on what would go in it
        check_writable_folder(cfg.out_dir, "out_dir")
    dtype = resolve_dtype(cfg.dtype, procs.device)
    data = Dataset(cfg.data_dir, cfg.dataset)
    checkpoint, cfg = resumable_checkpoint(cfg, data) if cfg.init_from == "resume" else (None, cfg)
    tokens_per_iter = procs.grad_accum * procs.world_size * cfg.batch_size * cfg.block_size
    prepare_process(cfg, procs, dtype, tokens_per_iter)
    data.check_length(cfg.block_size)
    batches = TrainBatches(data, cfg.batch_size, cfg.block_size, procs.device, cfg.seed, procs.rank, procs.world_size)
    model, model_args = build_model(cfg, data, procs, dtype, checkpoint)
    # what gets recorded is what runs: a fine-tuned model's shape is the pretrained one's
    cfg = replace(cfg, **{key: model_args[key] for key in (*MODEL_SHAPE_KEYS, "block_size")})
    # float16 needs loss scaling to keep small gradients from flushing to zero; bfloat16 does not
    scaler = torch.amp.GradScaler(procs.device_type, enabled=(dtype == "float16"))
    if cfg.fsdp:
        shard(model, cfg, procs)
    optimizers = run_optimizers(cfg, procs, model, checkpoint)
    progress = Progress()
    if checkpoint is not None:
        restore_optimizers(checkpoint, model, optimizers, scaler, cfg.fsdp)
        restore_random_streams(checkpoint, procs, batches, cfg.seed)
        resumed = checkpoint["iter_num"]
        progress = Progress(
            resumed,
            checkpoint["best_val_loss"],
            checkpoint.get("train_seconds", 0.0),
            saved_iter=resumed,
            has_checkpoint=True,
        )
    compiled, train_model = wrap_model(model, cfg, procs)
    setup = Setup(
        cfg=cfg,
        procs=procs,
        ctx=autocast_context(procs.device, dtype),
        data=data,
        batches=batches,
        token_bytes=torch.tensor(tokenizer_from_meta(data.meta).token_byte_lengths(), device=procs.device),
        raw_model=model,
        model=compiled,
        train_model=train_model,
        model_args=model_args,
        optimizers=optimizers,
        scaler=scaler,
        choice_items=task_items(cfg.hellaswag_task, data.meta, cfg.block_size) if cfg.hellaswag_interval else None,
        lora=run_lora(cfg, checkpoint),
        tokens_per_iter=tokens_per_iter,
        flops_per_iter=model.estimate_flops_per_token() * tokens_per_iter,
        device_peak=peak_flops(procs.device),
        resumed_at=progress.iter_num if cfg.init_from == "resume" else None,
        plotter=LossPlotter(cfg.out_dir) if procs.master else None,
        wandb=None,
        stop_signals=[],
    )
    del checkpoint  # free it before training: it holds a second copy of the model and optimizer
    return replace(
        setup, wandb=open_run_log(cfg, progress.iter_num, tokens_per_iter, data.meta) if procs.master else None
    ), progress


def prepare_process(cfg, procs, dtype, tokens_per_iter):
    """This process's settings for the run (seed, number formats, allocator) and its first lines of log."""
    if procs.device_type == "cpu":
        keep_freed_memory()
    if procs.master:
        print(f"device {procs.device}, dtype {dtype}, {procs.world_size} process(es)")
        print(
            f"tokens per iteration: {tokens_per_iter:,} = {procs.grad_accum} accumulation steps x "
            f"{procs.world_size} processes"
            f" x {cfg.batch_size} sequences x {cfg.block_size} tokens"
        )
    torch.manual_seed(cfg.seed)  # the same initial weights in every process (FSDP does not broadcast them)
    if procs.device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls: much faster, accuracy unchanged in practice
        torch.backends.cudnn.allow_tf32 = True


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
    if not same_vocabulary(pretrained_meta, data.meta):
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
    return add_adapters(model, lora_record(cfg, cfg.init_from), getattr(torch, dtype)) if cfg.lora_rank else model


# -- the loop ---------------------------------------------------------------------------------------------


def training_loop(setup, progress):
    """Train until max_iters or a stop signal; returns the final Progress and whether a signal stopped it."""
    cfg, procs = setup.cfg, setup.procs
    progress = replace(progress, batch=setup.batches(), last_log=(progress.iter_num, progress.train_seconds))
    t_last = time.time()
    while True:
        lr = set_learning_rate(setup.optimizers, cfg, progress.iter_num)
        at_end, fresh = (
            progress.iter_num == cfg.max_iters,
            progress.iter_num != setup.resumed_at,
        )  # fresh: not logged before resume
        if (
            cfg.hellaswag_interval
            and (progress.iter_num % cfg.hellaswag_interval == 0 or at_end)
            and (fresh or cfg.eval_only)
        ):
            evaluate_choices(setup, progress)  # every process scores its share
            t_last = time.time()  # not training time
        eval_due = (progress.iter_num % cfg.eval_interval == 0 or at_end) and fresh
        # every process's random streams go into the checkpoint: each draws dropout masks of its own
        rank_rng = procs.gather(capture_rng_state(setup.batches.position)) if eval_due and procs.ddp else None
        # FSDP's forward gathers weights from every process, so there all of them evaluate (and, with
        # rank 0's losses, stop or save together)
        if (eval_due or cfg.eval_only) and (procs.master or cfg.fsdp):
            progress, finished = evaluate_and_save(setup, progress, lr, rank_rng)
            # under DDP the other processes are already in the next step: rank 0 joins it and they stop together
            if not finished and (not procs.ddp or cfg.fsdp):
                return stop(setup, progress), True
            t_last = time.time()  # evaluation is not training time
        if cfg.eval_only or progress.iter_num >= cfg.max_iters:
            return progress, False

        loss, batch = optimizer_step(setup, progress.batch)
        now = time.time()
        progress = replace(
            progress, iter_num=progress.iter_num + 1, train_seconds=progress.train_seconds + now - t_last, batch=batch
        )
        t_last = now
        if progress.iter_num % cfg.log_interval == 0 and procs.master:
            progress = log_step(setup, progress, loss, lr)
        # under DDP every process must stop at the same step, even if only some got the signal (or got it
        # a step later), so they decide together, and only at log steps: reading the flag waits for the GPU
        if (not procs.ddp or progress.iter_num % cfg.log_interval == 0) and procs.any(setup.stop_signals):
            return stop(setup, progress), True


def evaluate_and_save(setup, progress, lr, rank_rng):
    """Losses on both splits, logged by rank 0, and a checkpoint (best.pt too when val loss improved).
    Returns the Progress after it and False when a stop request cut the evaluation short."""
    cfg, procs = setup.cfg, setup.procs
    t0 = time.time()

    def stop_requested():
        # under FSDP every process evaluates, and its forward is a collective, so they agree before each batch
        return procs.any(setup.stop_signals) if cfg.fsdp else bool(setup.stop_signals)

    results = estimate_loss(
        setup.model,
        setup.data,
        setup.ctx,
        setup.token_bytes,
        cfg,
        procs.device,
        stop_requested,
        announce=procs.master and not progress.evaluated,
    )
    if results is None:
        return progress, False
    if cfg.fsdp:
        # every process decides from these whether to save, and saving is a collective: a last-bit
        # difference between processes must not split that decision
        results = results.to(procs.device)
        torch.distributed.broadcast(results, src=0)
    losses = dict(train=results[0].item(), val=results[1].item(), val_bpb=results[2].item())
    progress = replace(progress, evaluated=True)
    if procs.master:
        log_eval(setup, progress, losses, lr, time.time() - t0)
    if not math.isfinite(losses["val"]):
        raise RunError(
            f"val loss is {losses['val']} at step {progress.iter_num}; the last good checkpoint in "
            f"{cfg.out_dir} is kept (try a lower learning_rate, or dtype=bfloat16 instead of float16)"
        )
    if progress.iter_num > 0 and not cfg.eval_only:
        improved = losses["val"] < progress.best_val_loss
        progress = replace(progress, best_val_loss=min(progress.best_val_loss, losses["val"]))
        progress = save(setup, progress, rank_rng, best=improved)
    return progress, True


def log_eval(setup, progress, losses, lr, seconds):
    print(
        f"step {progress.iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}, val "
        f"{losses['val_bpb']:.4f} bits per byte"
    )
    append_record(
        setup.cfg.out_dir,
        dict(
            kind="eval",
            iter=progress.iter_num,
            train_loss=losses["train"],
            val_loss=losses["val"],
            val_bpb=losses["val_bpb"],
            lr=lr,
            tokens=progress.iter_num * setup.tokens_per_iter,
            train_seconds=progress.train_seconds,
            eval_seconds=seconds,
        ),
    )
    setup.plotter.request()
    if setup.wandb:
        setup.wandb.log({"iter": progress.iter_num, "train/loss": losses["train"], "val/loss": losses["val"], "lr": lr})


def evaluate_choices(setup, progress):
    """Multiple-choice accuracy on hellaswag_task (see nanogpt/multiple_choice.py), logged by rank 0."""
    t0 = time.time()
    # len(token_bytes): the tokenizer's vocabulary (a padded one's extra logits are not tokens)
    scores = choice_accuracy(
        setup.raw_model,
        setup.choice_items,
        setup.ctx,
        setup.procs,
        setup.cfg.fsdp,
        setup.cfg.batch_size,
        len(setup.token_bytes),
    )
    if not setup.procs.master:
        return
    print(
        f"step {progress.iter_num}: {setup.cfg.hellaswag_task} acc_norm {scores.acc_norm:.4f}, acc "
        f"{scores.acc:.4f} ({scores.count:,} items)"
    )
    append_record(
        setup.cfg.out_dir,
        dict(
            kind="hellaswag",
            iter=progress.iter_num,
            acc=scores.acc,
            acc_norm=scores.acc_norm,
            items=scores.count,
            tokens=progress.iter_num * setup.tokens_per_iter,
            train_seconds=progress.train_seconds,
            eval_seconds=time.time() - t0,
        ),
    )
    if setup.wandb:
        setup.wandb.log({"iter": progress.iter_num, "hellaswag/acc": scores.acc, "hellaswag/acc_norm": scores.acc_norm})


def save(setup, progress, rank_rng, best=False):
    """Write ckpt.pt, the full state, from rank 0; with best, also best.pt (the model alone), and with
    keep_checkpoints a numbered copy. Under FSDP every process must call it (see full_state)."""
    cfg = setup.cfg
    model_state, optimizer_states = full_state(setup.raw_model, setup.optimizers, cfg.fsdp)
    progress = replace(progress, saved_iter=progress.iter_num, has_checkpoint=True)
    if not setup.procs.master:
        return progress
    if setup.lora:
        model_state = adapter_state(model_state)
    checkpoint = {
        "model": model_state,
        "optimizer": optimizer_states,
        "scaler": setup.scaler.state_dict(),
        "model_args": setup.model_args,
        "iter_num": progress.iter_num,
        "best_val_loss": progress.best_val_loss,
        "train_seconds": progress.train_seconds,  # the time axis of a resumed run's metrics continues from here
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
    return progress


def optimizer_step(setup, batch):
    """One optimizer step over grad_accum micro-batches (nanogpt/training/step.py, which bench.py times
    too); returns the last micro-batch's loss (a tensor) and the next step's first batch."""
    cfg, procs = setup.cfg, setup.procs

    def gradient_sync(last_micro_step):
        # under DDP / FSDP, reduce the gradients only once, after the last micro-batch
        if cfg.fsdp:
            setup.model.set_requires_gradient_sync(last_micro_step)
        if procs.ddp and not cfg.fsdp and not last_micro_step:
            return setup.train_model.no_sync()
        return contextlib.nullcontext()

    return training_step(
        setup.train_model,
        setup.optimizers,
        setup.scaler,
        setup.ctx,
        procs.grad_accum,
        cfg.grad_clip,
        batch,
        setup.batches,
        gradient_sync,
        cfg.fused_loss,
    )


def log_step(setup, progress, loss, lr):
    """One line and one metrics record for the step just taken (rank 0, every log_interval steps)."""
    cfg = setup.cfg
    last_iter, last_seconds = progress.last_log
    seconds_per_iter = (progress.train_seconds - last_seconds) / (progress.iter_num - last_iter)
    loss_value = loss.item() * setup.procs.grad_accum  # .item() waits for the GPU, so only at log time
    if not math.isfinite(loss_value):
        raise RunError(
            f"training loss is {loss_value} at step {progress.iter_num}; the last good checkpoint in "
            f"{cfg.out_dir} is kept (try a lower learning_rate, or dtype=bfloat16 instead of float16)"
        )
    # smooth the step time for the ETA; the first steps include warm-up and compilation
    ms = seconds_per_iter * 1000
    smoothed = ms if progress.ms_per_iter is None else 0.9 * progress.ms_per_iter + 0.1 * ms
    tokens_per_sec = setup.tokens_per_iter / seconds_per_iter
    eta = format_duration((cfg.max_iters - progress.iter_num) * smoothed / 1000)
    line = (
        f"iter {progress.iter_num}/{cfg.max_iters}: loss {loss_value:.4f}, lr {lr:.2e}, {ms:.1f} ms/iter, "
        f"{tokens_per_sec:,.0f} tok/s, ETA {eta}"
    )
    record = dict(
        kind="train",
        iter=progress.iter_num,
        loss=loss_value,
        lr=lr,
        ms_per_iter=ms,
        tokens_per_sec=tokens_per_sec,
        tokens=progress.iter_num * setup.tokens_per_iter,
        train_seconds=progress.train_seconds,
    )
    if setup.device_peak is not None:
        record["mfu"] = setup.flops_per_iter / seconds_per_iter / setup.device_peak
        line += f", MFU {record['mfu'] * 100:.1f}%"
    print(line)
    append_record(cfg.out_dir, record)
    if setup.wandb:
        setup.wandb.log(
            {"iter": progress.iter_num, "train/loss_batch": loss_value, "lr": lr, "tokens_per_sec": tokens_per_sec}
        )
    return replace(progress, ms_per_iter=smoothed, last_log=(progress.iter_num, progress.train_seconds))


def stop(setup, progress):
    """End the run on a stop request: save, unless the state on disk is already this one, and say how
    to go on."""
    cfg, procs = setup.cfg, setup.procs
    if progress.iter_num != progress.saved_iter:
        rank_rng = procs.gather(capture_rng_state(setup.batches.position)) if procs.ddp else None
        if procs.master or cfg.fsdp:
            progress = save(setup, progress, rank_rng)
    if procs.master:
        cause = setup.stop_signals[0] if setup.stop_signals else "another process was signalled"
        if not progress.has_checkpoint:
            print(f"stopped at iter {progress.iter_num} ({cause}) before anything was trained; nothing saved")
        else:
            print(f"stopped at iter {progress.iter_num} ({cause}); resume with:")
            print(f"  {resume_command(sys.argv[1:])}")
    return progress


if __name__ == "__main__":
    run_main(main)
