"""Train a GPT. Runs on one CPU, one GPU, or many GPUs with DDP.

    python train.py config/train_shakespeare_char.py
    python train.py config/train_shakespeare_char.py --batch_size=32 --compile=False
    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py

python train.py --help lists every setting. The file reads in the order a run happens: its settings,
its set-up (data, model, optimizers, logs), then the loop (evaluate and save, step, log, stop).
"""

import math
import os
import sys
import time
from dataclasses import dataclass, field, replace

import nanogpt  # noqa: F401  first: a Ctrl-C while torch loads ends in one line (nanogpt/__init__.py)
import torch

from nanogpt.checkpoint import CHECKPOINT_NAME, capture_rng_state
from nanogpt.command_line import load_config
from nanogpt.config import TrainSettings, gpt_config
from nanogpt.data import Dataset, TrainBatches
from nanogpt.errors import RunError, SettingError, out_of_memory_as_error, run_main
from nanogpt.files import check_writable_folder
from nanogpt.hf import is_pretrained_source, not_a_model, pretrained_block_size
from nanogpt.lora import check_lora_settings, run_lora
from nanogpt.model import GPT
from nanogpt.system import attention_kernel, autocast_context, check_attention_kernel, check_fp8
from nanogpt.system import keep_freed_memory, peak_flops, resolve_device, resolve_dtype
from nanogpt.tokenizer import tokenizer_from_meta
from nanogpt.training import distributed
from nanogpt.training.evaluation import choice_accuracy, estimate_loss, format_duration, task_items
from nanogpt.training.lr_schedule import set_learning_rate
from nanogpt.training.model_setup import build_model
from nanogpt.training.optimizers import run_optimizers, unused_settings
from nanogpt.training.resume import MODEL_SHAPE_KEYS, resumable_checkpoint, restore_optimizers
from nanogpt.training.resume import restore_random_streams, save_run
from nanogpt.training.step import TrainingStep
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
    for key, default in unused_settings(cfg).items():  # a value that is accepted is used
        raise SettingError(
            f"{key}={getattr(cfg, key)} is not used by optimizer={cfg.optimizer!r}; drop it (one a config file sets"
            f" too: --{key}={default})"
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
    with distributed.processes(cfg) as procs, attention_kernel(cfg.attention), out_of_memory_as_error(out_of_memory):
        train(cfg, procs)


def train(cfg, procs):
    setup, progress = set_up(cfg, procs)
    # from here a stop request is honoured at the end of a step; before, there is nothing to save, and a
    # signal ends the process at once (e.g. one waiting for peers that torchrun is restarting)
    setup.stop_signals = distributed.catch_stop_signals()
    stopped = training_loop(setup, progress)
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
    """What a run fixes before its first step and keeps to its end (stop_signals and wandb are filled in
    once the loop is about to start)."""

    cfg: TrainSettings
    procs: distributed.Processes
    data: Dataset
    batches: TrainBatches
    token_bytes: torch.Tensor  # each token's length in UTF-8 bytes, for bits per byte
    raw_model: GPT  # the plain module: what gets saved
    model: torch.nn.Module  # compiled where that pays: what evaluates (every call of it stays on this rank)
    step: TrainingStep  # what trains: under DDP the wrapper that all-reduces gradients, its optimizers, ...
    model_args: dict
    choice_items: list | None  # the multiple-choice items scored every hellaswag_interval steps
    lora: dict | None  # a LoRA run's adapters and base (nanogpt/lora.py): its checkpoints hold the adapters alone
    tokens_per_iter: int
    flops_per_iter: float
    device_peak: float | None  # FLOPS, for MFU
    resumed_at: int | None  # the step resumed from: its eval is already in the log
    plotter: LossPlotter | None
    wandb: object = None
    stop_signals: list = field(default_factory=list)  # names of the stop signals received


@dataclass
class Progress:
    """What changes from step to step: one object, updated in place by the loop and what it calls."""

    iter_num: int = 0
    best_val_loss: float = float("inf")
    train_seconds: float = 0.0  # training time so far, evaluations left out (continues across resume)
    tokens: int = 0  # training tokens seen so far, each step's own count (a resume may change the batch)
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
        distributed.shard(model, cfg, procs)
    optimizers = run_optimizers(cfg, procs, model, checkpoint)
    progress = Progress()
    if checkpoint is not None:
        restore_optimizers(checkpoint, model, optimizers, scaler, cfg.fsdp)
        restore_random_streams(checkpoint, procs, batches, cfg.seed)
        progress.iter_num = progress.saved_iter = checkpoint["iter_num"]
        progress.best_val_loss, progress.has_checkpoint = checkpoint["best_val_loss"], True
        progress.train_seconds = checkpoint.get("train_seconds", 0.0)
        progress.tokens = checkpoint.get("tokens", progress.iter_num * tokens_per_iter)  # older: at today's rate
    compiled, train_model = distributed.wrap_model(model, cfg, procs)
    step = TrainingStep(
        train_model,
        optimizers,
        scaler,
        ctx=autocast_context(procs.device, dtype),
        grad_accum=procs.grad_accum,
        grad_clip=cfg.grad_clip,
        gradient_sync=distributed.gradient_sync(cfg, procs, compiled, train_model),
        fused_loss=cfg.fused_loss,
    )
    setup = Setup(
        cfg=cfg,
        procs=procs,
        data=data,
        batches=batches,
        token_bytes=torch.tensor(tokenizer_from_meta(data.meta).token_byte_lengths(), device=procs.device),
        raw_model=model,
        model=compiled,
        step=step,
        model_args=model_args,
        choice_items=task_items(cfg.hellaswag_task, data.meta, cfg.block_size) if cfg.hellaswag_interval else None,
        lora=run_lora(cfg, checkpoint),
        tokens_per_iter=tokens_per_iter,
        flops_per_iter=model.estimate_flops_per_token() * tokens_per_iter,
        device_peak=peak_flops(procs.device),
        resumed_at=progress.iter_num if cfg.init_from == "resume" else None,
        plotter=LossPlotter(cfg.out_dir) if procs.master else None,
    )
    del checkpoint  # free it before training: it holds a second copy of the model and optimizer
    if procs.master:
        setup.wandb = open_run_log(cfg, progress.iter_num, tokens_per_iter, data.meta)
    return setup, progress


def prepare_process(cfg, procs, dtype, tokens_per_iter):
    """This process's settings for the run (seed, number formats, allocator) and its first lines of log."""
    if procs.device_type == "cpu":
        keep_freed_memory()
    if procs.master:
        print(f"device {procs.device}, dtype {dtype}, {procs.world_size} process(es)")
        print(
            f"tokens per iteration: {tokens_per_iter:,} = {procs.grad_accum} accumulation steps x "
            f"{procs.world_size} processes x {cfg.batch_size} sequences x {cfg.block_size} tokens"
        )
    torch.manual_seed(cfg.seed)  # the same initial weights in every process (FSDP does not broadcast them)
    if procs.device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls: much faster, accuracy unchanged in practice
        torch.backends.cudnn.allow_tf32 = True


# -- the loop ---------------------------------------------------------------------------------------------


def training_loop(setup, progress):
    """Train until max_iters or a stop signal; returns whether a signal stopped it."""
    cfg, procs = setup.cfg, setup.procs
    progress.batch, progress.last_log = setup.batches(), (progress.iter_num, progress.train_seconds)
    t_last = time.time()
    while True:
        lr = set_learning_rate(setup.step.optimizers, cfg, progress.iter_num)
        at_end = progress.iter_num == cfg.max_iters
        fresh = progress.iter_num != setup.resumed_at  # not logged before the resume
        hellaswag_due = cfg.hellaswag_interval and (progress.iter_num % cfg.hellaswag_interval == 0 or at_end)
        if hellaswag_due and (fresh or cfg.eval_only):
            evaluate_choices(setup, progress)  # every process scores its share
            t_last = time.time()  # not training time
        eval_due = (progress.iter_num % cfg.eval_interval == 0 or at_end) and fresh
        # every process's random streams go into the checkpoint: each draws dropout masks of its own
        rank_rng = procs.gather(capture_rng_state(setup.batches.position)) if eval_due and procs.ddp else None
        # FSDP's forward gathers weights from every process, so there all of them evaluate (and, with
        # rank 0's losses, stop or save together)
        if (eval_due or cfg.eval_only) and (procs.master or cfg.fsdp):
            finished = evaluate_and_save(setup, progress, lr, rank_rng)
            # under DDP the other processes are already in the next step: rank 0 joins it and they stop together
            if not finished and (not procs.ddp or cfg.fsdp):
                return stop(setup, progress)
            t_last = time.time()  # evaluation is not training time
        if cfg.eval_only or progress.iter_num >= cfg.max_iters:
            return False

        stats, progress.batch = setup.step(progress.batch, setup.batches)
        now = time.time()
        progress.iter_num += 1
        progress.tokens += setup.tokens_per_iter
        progress.train_seconds += now - t_last
        t_last = now
        if progress.iter_num % cfg.log_interval == 0 and procs.master:
            log_step(setup, progress, stats, lr)
        # under DDP every process must stop at the same step, even if only some got the signal (or got it
        # a step later), so they decide together, and only at log steps: reading the flag waits for the GPU
        if (not procs.ddp or progress.iter_num % cfg.log_interval == 0) and procs.any(setup.stop_signals):
            return stop(setup, progress)


def evaluate_and_save(setup, progress, lr, rank_rng):
    """Losses on both splits, logged by rank 0, and a checkpoint (best.pt too when val loss improved).
    Returns False when a stop request cut the evaluation short."""
    cfg, procs = setup.cfg, setup.procs
    t0 = time.time()

    def stop_requested():
        # under FSDP every process evaluates, and its forward is a collective, so they agree before each batch
        return procs.any(setup.stop_signals) if cfg.fsdp else bool(setup.stop_signals)

    announce = procs.master and not progress.evaluated
    results = estimate_loss(
        setup.model, setup.data, setup.step.ctx, setup.token_bytes, cfg, procs.device, stop_requested, announce
    )
    if results is None:
        return False
    if cfg.fsdp:
        # every process decides from these whether to save, and saving is a collective: a last-bit
        # difference between processes must not split that decision
        results = results.to(procs.device)
        torch.distributed.broadcast(results, src=0)
    train_loss, val_loss, val_bpb = results.tolist()
    progress.evaluated = True
    if procs.master:
        print(
            f"step {progress.iter_num}: train loss {train_loss:.4f}, val loss {val_loss:.4f}, val "
            f"{val_bpb:.4f} bits per byte"
        )
        log_record(
            setup,
            progress,
            "eval",
            train_loss=train_loss,
            val_loss=val_loss,
            val_bpb=val_bpb,
            lr=lr,
            eval_seconds=time.time() - t0,
        )
        setup.plotter.request()
    if not math.isfinite(val_loss):
        raise RunError(
            f"val loss is {val_loss} at step {progress.iter_num}; the last good checkpoint in {cfg.out_dir} is kept"
            " (try a lower learning_rate, or dtype=bfloat16 instead of float16)"
        )
    if progress.iter_num > 0 and not cfg.eval_only:
        improved = val_loss < progress.best_val_loss
        progress.best_val_loss = min(progress.best_val_loss, val_loss)
        save_run(setup, progress, rank_rng, best=improved)
    return True


def evaluate_choices(setup, progress):
    """Multiple-choice accuracy on hellaswag_task (see nanogpt/multiple_choice.py), logged by rank 0."""
    t0 = time.time()
    cfg, procs = setup.cfg, setup.procs
    # len(token_bytes): the tokenizer's vocabulary (a padded one's extra logits are not tokens)
    scores = choice_accuracy(
        setup.raw_model, setup.choice_items, setup.step.ctx, procs, cfg.fsdp, cfg.batch_size, len(setup.token_bytes)
    )
    if procs.master:
        print(
            f"step {progress.iter_num}: {cfg.hellaswag_task} acc_norm {scores.acc_norm:.4f}, acc {scores.acc:.4f}"
            f" ({scores.count:,} items)"
        )
        log_record(
            setup,
            progress,
            "hellaswag",
            acc=scores.acc,
            acc_norm=scores.acc_norm,
            items=scores.count,
            eval_seconds=time.time() - t0,
        )


def log_step(setup, progress, stats, lr):
    """One line and one metrics record for the step just taken (rank 0, every log_interval steps): every
    statistic the step returned (nanogpt/training/step.py), and its speed."""
    cfg = setup.cfg
    last_iter, last_seconds = progress.last_log
    seconds_per_iter = (progress.train_seconds - last_seconds) / (progress.iter_num - last_iter)
    values = {name: value.item() for name, value in stats.items()}  # .item() waits for the GPU: only here
    if not math.isfinite(values["loss"]):
        raise RunError(
            f"training loss is {values['loss']} at step {progress.iter_num}; the last good checkpoint in"
            f" {cfg.out_dir} is kept (try a lower learning_rate, or dtype=bfloat16 instead of float16)"
        )
    # smooth the step time for the ETA; the first steps include warm-up and compilation
    ms = seconds_per_iter * 1000
    progress.ms_per_iter = ms if progress.ms_per_iter is None else 0.9 * progress.ms_per_iter + 0.1 * ms
    progress.last_log = (progress.iter_num, progress.train_seconds)
    speed = dict(ms_per_iter=ms, tokens_per_sec=setup.tokens_per_iter / seconds_per_iter)
    if setup.device_peak is not None:
        speed["mfu"] = setup.flops_per_iter / seconds_per_iter / setup.device_peak
    eta = format_duration((cfg.max_iters - progress.iter_num) * progress.ms_per_iter / 1000)
    print(
        f"iter {progress.iter_num}/{cfg.max_iters}: loss {values['loss']:.4f}, lr {lr:.2e}, {ms:.1f} ms/iter,"
        f" {speed['tokens_per_sec']:,.0f} tok/s, ETA {eta}"
        + (f", MFU {speed['mfu'] * 100:.1f}%" if "mfu" in speed else "")
    )
    log_record(setup, progress, "train", **values, lr=lr, **speed)


def log_record(setup, progress, kind, **figures):
    """One record of metrics.jsonl (rank 0): its kind, the step, the figures, and where the run is (tokens
    seen, training time); the figures also go to wandb as kind/name."""
    where = dict(tokens=progress.tokens, train_seconds=progress.train_seconds)
    append_record(setup.cfg.out_dir, dict(kind=kind, iter=progress.iter_num, **figures, **where))
    if setup.wandb:
        setup.wandb.log({"iter": progress.iter_num, **{f"{kind}/{name}": value for name, value in figures.items()}})


def stop(setup, progress):
    """End the run on a stop request: save, unless the state on disk is already this one, and say how
    to go on. Returns True: the run was stopped."""
    cfg, procs = setup.cfg, setup.procs
    if progress.iter_num != progress.saved_iter:
        rank_rng = procs.gather(capture_rng_state(setup.batches.position)) if procs.ddp else None
        if procs.master or cfg.fsdp:
            save_run(setup, progress, rank_rng)
    if procs.master:
        cause = setup.stop_signals[0] if setup.stop_signals else "another process was signalled"
        if not progress.has_checkpoint:
            print(f"stopped at iter {progress.iter_num} ({cause}) before anything was trained; nothing saved")
        else:
            print(f"stopped at iter {progress.iter_num} ({cause}); resume with:")
            print(f"  {distributed.resume_command(sys.argv[1:])}")
    return True


if __name__ == "__main__":
    run_main(main)
