"""Train a GPT. Runs on one CPU, one GPU, or many GPUs with DDP.

    python train.py config/train_shakespeare_char.py
    python train.py config/train_shakespeare_char.py --batch_size=32 --compile=False
    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py

python train.py --help lists every setting.
"""

import contextlib
import gc
import inspect
import math
import os
import shlex
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.distributed import destroy_process_group, init_process_group
from torch.nn.parallel import DistributedDataParallel as DDP

from nanogpt.checkpoint import (
    BEST_NAME, CHECKPOINT_NAME, MODEL_KEYS, capture_rng_state, load_checkpoint, model_from_checkpoint, restore_rng_state,
    save_checkpoint,
)
from nanogpt.config import TrainConfig, load_config
from nanogpt.data import Dataset
from nanogpt.errors import UserError, first_line, is_out_of_memory, run_main
from nanogpt.files import check_writable_folder
from nanogpt.hf import gpt_from_pretrained, is_pretrained_source, pretrained_block_size
from nanogpt.metrics import METRICS_NAME, LossPlotter, append_record, keep_records_through, run_record
from nanogpt.model import ARCHITECTURE_SWITCHES, GPT, ConfigError, GPTConfig
from nanogpt.schedule import cosine_lr, wsd_lr
from nanogpt.step import training_step
from nanogpt.system import (
    autocast_context, check_fp8, choose_attention_kernel, compile_model, float8_training, keep_freed_memory, peak_flops,
    resolve_device, resolve_dtype,
)
from nanogpt.tokenizer import describe_vocabulary, meta_from_hf_folder, model_vocab_size, same_vocabulary, tokenizer_from_meta


def format_duration(seconds):
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


MODEL_SHAPE_KEYS = ("n_layer", "n_head", "n_embd", "bias") + ARCHITECTURE_SWITCHES


def check_resume_config(cfg, checkpoint):
    """Refuse settings that cannot continue the saved run; report the ones that change it."""
    defaults = TrainConfig()
    saved_args = checkpoint["model_args"]
    for key in MODEL_SHAPE_KEYS:
        saved = saved_args.get(key, getattr(GPTConfig(), key))  # older checkpoints lack the newer switches
        if getattr(cfg, key) != getattr(defaults, key) and getattr(cfg, key) != saved:
            raise UserError(
                f"cannot resume with {key}={getattr(cfg, key)}: the checkpoint in {cfg.out_dir} has {key}={saved};"
                f" drop the setting, or train a new model in another --out_dir"
            )
    saved_config = checkpoint.get("config", {})
    changed = [
        f"{k} {saved_config[k]!r} -> {v!r}"
        for k, v in asdict(cfg).items()
        if k in saved_config and saved_config[k] != v and k not in ("init_from", "overwrite")
    ]
    if changed:
        print("settings changed since the checkpoint: " + ", ".join(changed))


def resume_command():
    """The command line that continues this run: the launcher as it was run, then the same settings."""
    args = [a for a in sys.argv[1:] if not a.startswith(("--init_from=", "--overwrite="))]
    return shlex.join([*launcher_command(), *args, "--init_from=resume"])


def launcher_command():
    """`python train.py`, or under torchrun its command up to the script, read from the torchrun process
    (this process's parent) on Linux, else rebuilt from what torchrun tells its workers."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:  # set by torchrun
        return ["python", "train.py"]
    try:
        argv = [a.decode() for a in Path(f"/proc/{os.getppid()}/cmdline").read_bytes().split(b"\0")[:-1]]
        script = next(i for i, a in enumerate(argv) if Path(a).name == "train.py")
    except (OSError, UnicodeDecodeError, StopIteration):
        return ["torchrun", f"--nnodes={os.environ.get('GROUP_WORLD_SIZE', 1)}", f"--nproc_per_node={os.environ.get('LOCAL_WORLD_SIZE', 1)}", "train.py"]
    launcher = argv[: script + 1]
    if Path(launcher[0]).name.startswith("python"):
        launcher[0] = "python"
        if len(launcher) > 1 and Path(launcher[1]).name == "torchrun":  # the torchrun script run by python
            launcher = ["torchrun", *launcher[2:]]
    elif Path(launcher[0]).name == "torchrun":
        launcher[0] = "torchrun"
    return launcher


def main():
    try:
        train_with_clear_errors()
    except UserError as e:
        if not torch.distributed.is_initialized():
            raise
        # the process group is left mid-collective or broken, and its destructor at exit can abort the
        # process ("terminate called ..."): say what happened and leave at once, as torchrun would anyway
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)
    if torch.distributed.is_initialized():
        # DDP's reducer and FSDP's state hold the process group too. Once train() has returned they are
        # gone (gc.collect() for reference cycles), so destroy_process_group() drops the group's last
        # reference, and its destructor waits for gloo's worker threads without holding the GIL they may
        # need; from anywhere else it can deadlock or abort the process at exit.
        gc.collect()
        destroy_process_group()


def train_with_clear_errors():
    """train(), with running out of memory and losing another process of the run each said in one line."""
    try:
        train()
    except (MemoryError, RuntimeError) as e:
        if lost_a_peer(e):
            # the process that failed printed why; torchrun ends the others, and this one says why it ends
            raise UserError("another process of this run has ended, so this one stops too; its error is above") from None
        if not is_out_of_memory(e):
            raise
        cfg = load_config(TrainConfig, sys.argv[1:])
        raise UserError(
            f"out of memory with batch_size={cfg.batch_size}, block_size={cfg.block_size}: lower --batch_size and raise"
            f" --gradient_accumulation_steps by the same factor (tokens per iteration stay the same), or lower --block_size"
        ) from None


def lost_a_peer(error):
    """A collective that failed because another process of the run is gone (it failed, or was killed)."""
    peer_gone = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "remote worker")
    return torch.distributed.is_initialized() and (
        isinstance(error, torch.distributed.DistError) or any(text in str(error) for text in peer_gone)
    )


def read_settings(argv):
    """The run's settings, refused in one sentence if they cannot work, before any data or model loads:
    each key against what it declares (nanogpt/config.py), then what depends on more than one key."""
    cfg = load_config(TrainConfig, argv)
    if cfg.init_from not in ("scratch", "resume", "auto"):
        if not is_pretrained_source(cfg.init_from):
            raise UserError(f"unknown init_from {cfg.init_from!r}; use 'scratch', 'resume', 'auto', a GPT-2 name (gpt2, gpt2-medium, gpt2-large, gpt2-xl) or a Hugging Face model folder")
        pretrained_positions = pretrained_block_size(cfg.init_from)  # also checks the name or folder
        if cfg.block_size > pretrained_positions:
            raise UserError(f"block_size {cfg.block_size} is larger than the {pretrained_positions} positions {cfg.init_from} was trained with; use --block_size={pretrained_positions} or less")
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if cfg.gradient_accumulation_steps % world_size != 0:
        raise UserError(
            f"gradient_accumulation_steps ({cfg.gradient_accumulation_steps}) must be a multiple of the number of"
            f" processes ({world_size}), e.g. --gradient_accumulation_steps={world_size * max(1, cfg.gradient_accumulation_steps // world_size)}"
        )
    try:
        GPTConfig(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, **{key: getattr(cfg, key) for key in ARCHITECTURE_SWITCHES})
    except ConfigError as e:  # the model's own shape checks, without building it
        raise UserError(str(e)) from None
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    if cfg.fp8:
        check_fp8(device, dtype)
    choose_attention_kernel(cfg.attention, device)
    return cfg


def train():
    cfg = read_settings(sys.argv[1:])
    if cfg.init_from == "auto":
        # for restarts (torchrun --max-restarts, a requeued job): continue the run if it has saved, else start it
        cfg.init_from = "resume" if os.path.exists(os.path.join(cfg.out_dir, CHECKPOINT_NAME)) else "scratch"
    procs = start_processes(cfg)
    run = set_up(cfg, procs)
    # from here a stop request is honoured at the end of a step; before, there is nothing to save, and a
    # signal ends the process at once (e.g. one waiting for peers that torchrun is restarting)
    run.stop_signals = catch_stop_signals()
    stopped = training_loop(run)
    if procs.master:
        run.plotter.finish()
    if procs.master and not stopped:
        print(f"done: best val loss {run.best_val_loss:.4f}; checkpoint, {METRICS_NAME} and loss.png in {cfg.out_dir}")
    if procs.ddp:
        # wait for rank 0's last eval and save: a process group torn down under a peer can abort it
        torch.distributed.barrier()


def catch_stop_signals():
    """SIGINT (Ctrl-C) and SIGTERM (e.g. a cluster pre-empting the job) finish the current step and save.
    Returns the list the names of the signals received are appended to."""
    stop_signals = []

    def request_stop(signum, frame):
        if stop_signals and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without saving
        stop_signals.append(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    return stop_signals


@dataclass
class Processes:
    """This process's place in the run: one process, or one of torchrun's."""

    ddp: bool  # started by torchrun
    rank: int
    world_size: int
    device: str
    grad_accum: int  # micro-batches per optimizer step in this process

    @property
    def master(self):
        return self.rank == 0  # this process logs and saves

    @property
    def device_type(self):
        return self.device.split(":")[0]


def start_processes(cfg):
    ddp = int(os.environ.get("RANK", -1)) != -1
    if not ddp:
        return Processes(False, 0, 1, resolve_device(cfg.device), cfg.gradient_accumulation_steps)
    device = resolve_device(cfg.device)
    rank, local_rank, world_size = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    if device.startswith("cuda"):
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    # NCCL talks between GPUs only (and CPU builds of torch lack it); gloo runs anywhere
    backend = cfg.backend if cfg.backend != "auto" else ("nccl" if device.startswith("cuda") else "gloo")
    # torchrun's rendezvous has gathered the processes before they connect, so a connection not made
    # in connect_timeout is not coming
    with connect_deadline(cfg.connect_timeout):
        try:
            init_process_group(backend=backend, store=attempt_store(rank, world_size), rank=rank, world_size=world_size)
            torch.distributed.barrier()  # every process connected to every other
        except (RuntimeError, torch.distributed.DistError) as e:
            raise UserError(f"could not connect to the other processes of this run ({first_line(e)}); torchrun --max-restarts starts them again") from None
    return Processes(True, rank, world_size, device, cfg.gradient_accumulation_steps // world_size)


def attempt_store(rank, world_size):
    """The store the processes meet in (torchrun's, or one rank 0 serves), under a prefix of this attempt's
    own. torchrun --max-restarts keeps one store for every attempt; without the prefix a restarted
    process could read the address a process of the previous attempt left there and connect to a port no
    one listens on any more (pytorch/pytorch#135712; seen here as gloo's connect refused or hanging)."""
    torchrun_serves = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = torch.distributed.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
        is_master=rank == 0 and not torchrun_serves, multi_tenant=not torchrun_serves,
    )
    return torch.distributed.PrefixStore(f"nanogpt/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


@contextlib.contextmanager
def connect_deadline(seconds):
    """End the process if the block has not finished in time: under torchrun --max-restarts a hung
    connection then costs one restart instead of the whole run."""
    connected = threading.Event()

    def watch():
        if not connected.wait(seconds):
            print(f"error: the processes of this run did not all connect within {seconds} s; giving up so torchrun can restart them", file=sys.stderr, flush=True)
            os._exit(1)

    threading.Thread(target=watch, daemon=True).start()
    try:
        yield
    finally:
        connected.set()


class Run:
    """Everything the training loop, evaluation and saving share."""


def set_up(cfg, procs):
    """Data, model, optimizers (restored on resume), wrappers and the run's log files."""
    run = Run()
    run.cfg, run.procs = cfg, procs
    run.dtype = resolve_dtype(cfg.dtype, procs.device)
    if procs.device_type == "cpu":
        keep_freed_memory()
    run.tokens_per_iter = procs.grad_accum * procs.world_size * cfg.batch_size * cfg.block_size
    if procs.master:
        print(f"device {procs.device}, dtype {run.dtype}, {procs.world_size} process(es)")
        print(
            f"tokens per iteration: {run.tokens_per_iter:,} = {procs.grad_accum} accumulation steps x {procs.world_size} processes"
            f" x {cfg.batch_size} sequences x {cfg.block_size} tokens"
        )
    torch.manual_seed(cfg.seed)  # the same initial weights in every process (FSDP does not broadcast them)
    if procs.device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls: much faster, accuracy unchanged in practice
        torch.backends.cudnn.allow_tf32 = True
    run.ctx = autocast_context(procs.device, run.dtype)
    if procs.master:
        check_writable_folder(cfg.out_dir, "out_dir")

    run.data = Dataset(cfg.data_dir, cfg.dataset)
    run.data.check_length(cfg.block_size)
    # each token's length in UTF-8 bytes, for bits per byte
    run.token_bytes = torch.tensor(tokenizer_from_meta(run.data.meta).token_byte_lengths(), device=procs.device)
    run.batch_generator = torch.Generator().manual_seed(cfg.seed)  # the same in every process: see get_batch

    model, run.model_args, checkpoint = build_model(cfg, run.data, procs.master)
    run.iter_num = checkpoint["iter_num"] if checkpoint else 0
    run.best_val_loss = checkpoint["best_val_loss"] if checkpoint else float("inf")
    run.train_seconds = checkpoint.get("train_seconds", 0.0) if checkpoint else 0.0
    model.to(procs.device)
    if procs.master:
        print(f"model: {model.get_num_params() / 1e6:.2f}M parameters")
    if cfg.fp8:
        swapped = float8_training(model)
        if procs.master:
            print(f"fp8: {swapped} Linear layers run their matmuls in float8")
    if procs.rank > 0:
        torch.manual_seed(cfg.seed + procs.rank)  # but dropout masks of its own

    # float16 needs loss scaling to keep small gradients from flushing to zero; bfloat16 does not
    run.scaler = torch.amp.GradScaler(procs.device_type, enabled=(run.dtype == "float16"))
    if cfg.fsdp:
        shard(model, cfg, procs)
    run.optimizers = model.configure_optimizers(
        cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), procs.device_type, cfg.optimizer, cfg.muon_lr
    )
    if checkpoint is not None:
        restore_training_state(run, model, checkpoint)
    del checkpoint  # free it before training: it holds a second copy of the model and optimizer
    run.resumed_at = run.iter_num if cfg.init_from == "resume" else None  # its eval is already in the log
    run.saved_iter = run.iter_num  # the step whose state is on disk (or, at 0, can be made again from the seed)
    run.has_checkpoint = cfg.init_from == "resume"
    run.rank_rng = None
    run.eval_timed = False
    wrap_model(run, model)
    open_logs(run)
    run.flops_per_iter = model.estimate_flops_per_token() * run.tokens_per_iter
    run.device_peak = peak_flops(procs.device)
    return run


def shard(model, cfg, procs):
    """FSDP2: each block, then the rest, keeps only its shard of parameters, gradients and optimizer state
    on each process and gathers a block's full weights just for its forward and backward."""
    from torch.distributed.fsdp import fully_shard  # imported here: it would add half a second to every start-up

    if not procs.ddp:
        raise UserError("fsdp=True shards the model over processes that torchrun starts: torchrun --standalone --nproc_per_node=N train.py ...")
    if cfg.optimizer != "adamw":
        raise UserError("fsdp=True works with optimizer='adamw' only")
    for block in model.transformer.h:
        fully_shard(block)
    fully_shard(model)


def wrap_model(run, model):
    """run.raw_model, the plain module (what gets saved); run.model, compiled where that pays (what
    evaluates: every call of it stays on this rank); run.train_model, under DDP the wrapper that
    all-reduces gradients (what trains)."""
    procs = run.procs
    run.raw_model = model
    run.model = compile_model(model, run.cfg.compile, procs.device)
    run.train_model = run.model
    if procs.ddp and not run.cfg.fsdp:
        # The model's only buffers (rotary tables) are constants, the same on every rank, so DDP need not
        # broadcast them before each forward; left on, that broadcast is a collective, and rank 0's
        # evaluation alone would issue one the other ranks never join. (torch 2.13 renamed the switch.)
        renamed = "forward_sync_buffers" in inspect.signature(DDP).parameters
        no_buffer_sync = {"forward_sync_buffers" if renamed else "broadcast_buffers": False}
        device_ids = [int(procs.device.split(":")[1])] if procs.device_type == "cuda" else None
        run.train_model = DDP(run.model, device_ids=device_ids, **no_buffer_sync)


def open_logs(run):
    """metrics.jsonl (started afresh, or cut back to the resumed step) and wandb, on rank 0."""
    cfg, procs = run.cfg, run.procs
    run.wandb = None
    run.plotter = LossPlotter(cfg.out_dir) if procs.master else None
    if procs.master:
        os.makedirs(cfg.out_dir, exist_ok=True)
        if run.iter_num == 0:
            open(os.path.join(cfg.out_dir, METRICS_NAME), "w").close()
        else:
            keep_records_through(cfg.out_dir, run.iter_num)
        # what compare.py reads to tell runs apart; a resumed run adds one where it continues
        append_record(cfg.out_dir, run_record(cfg, run.iter_num, run.tokens_per_iter, run.data.meta))
    if cfg.wandb_log and procs.master:
        try:
            import wandb
        except ImportError:
            raise UserError("wandb_log=True needs wandb: pip install wandb (or pip install -e '.[wandb]')") from None
        wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name, config=asdict(cfg))
        run.wandb = wandb


def build_model(cfg, data, master):
    """The model to train, its constructor arguments, and the checkpoint it resumes (None otherwise)."""
    if cfg.init_from != "resume" and os.path.exists(os.path.join(cfg.out_dir, CHECKPOINT_NAME)) and not cfg.overwrite:
        raise UserError(
            f"{cfg.out_dir} already holds a checkpoint; continue it with --init_from=resume,"
            f" choose another --out_dir, or replace it with --overwrite=True"
        )
    checkpoint = None
    if cfg.init_from == "scratch":
        if master:
            print("training a new model from scratch")
        vocab_size = model_vocab_size(data.meta)
        model_args = dict(
            n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size,
            bias=cfg.bias, vocab_size=vocab_size, dropout=cfg.dropout,
            **{key: getattr(cfg, key) for key in ARCHITECTURE_SWITCHES},
        )
        model = GPT(GPTConfig(**model_args))
    elif cfg.init_from == "resume":
        if master:
            print(f"resuming from {cfg.out_dir}")
        # loaded into CPU memory: on a GPU a second copy of the model and optimizer could run it out of memory
        checkpoint = load_checkpoint(cfg.out_dir)
        check_resume_config(cfg, checkpoint)
        if not same_vocabulary(checkpoint["tokenizer"], data.meta):
            raise UserError(
                f"the checkpoint in {cfg.out_dir} was trained on {describe_vocabulary(checkpoint['tokenizer'])} but dataset"
                f" {cfg.dataset!r} has {describe_vocabulary(data.meta)}; resume with the dataset it was trained on"
            )
        # the architecture comes from the checkpoint; only dropout may change on resume
        model_args = dict(checkpoint["model_args"], dropout=cfg.dropout)
        model = model_from_checkpoint(checkpoint, dropout=cfg.dropout)
    else:
        model = pretrained_model(cfg, data)
        model_args = asdict(model.config)
    if cfg.block_size < model.config.block_size:
        model.crop_block_size(cfg.block_size)
        model_args["block_size"] = cfg.block_size
    return model, model_args, checkpoint


def pretrained_model(cfg, data):
    """GPT-2 weights (a name or a Hugging Face folder), after checking they fit the data and settings."""
    changed = [key for key in ARCHITECTURE_SWITCHES if getattr(cfg, key) != getattr(TrainConfig(), key)]
    if changed:
        raise UserError(f"{', '.join(changed)} cannot be used with pretrained GPT-2 weights ({cfg.init_from}), which were trained without them")
    pretrained_meta = meta_from_hf_folder(cfg.init_from)
    if not same_vocabulary(pretrained_meta, data.meta):
        hint = (
            " use --dataset=shakespeare (python data/shakespeare/prepare.py) or python data/custom/prepare.py --tokenizer=gpt2"
            if pretrained_meta["tokenizer"] == "gpt2" else " use the dataset it was trained on"
        )
        raise UserError(f"{cfg.init_from} reads {describe_vocabulary(pretrained_meta)}, but dataset {cfg.dataset!r} has {describe_vocabulary(data.meta)};{hint}")
    return gpt_from_pretrained(cfg.init_from, dropout=cfg.dropout)


def restore_training_state(run, model, checkpoint):
    """Optimizer moments, loss scale and random streams from a checkpoint: an exact resume."""
    cfg = run.cfg
    saved = checkpoint["optimizer"]
    saved = saved if isinstance(saved, list) else [saved]  # one AdamW in older checkpoints
    if len(saved) != len(run.optimizers):
        raise UserError(f"the checkpoint in {cfg.out_dir} was trained with another optimizer; resume without changing --optimizer")
    for optimizer, state in zip(run.optimizers, saved):
        # the moments come from the checkpoint; the settings (rates, betas, decay) from this run's config
        settings = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
        if cfg.fsdp or any(isinstance(key, str) for key in state["state"]):
            # saved by parameter name (an FSDP run's full state dict): maps onto sharded and plain models
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
        else:
            optimizer.load_state_dict(state)
        for group, setting in zip(optimizer.param_groups, settings):
            group.update(setting)
    if "scaler" in checkpoint:
        run.scaler.load_state_dict(checkpoint["scaler"])
    # continue every random stream exactly where the saved run was
    if "rng" in checkpoint:
        procs, rank_rng = run.procs, checkpoint.get("rank_rng")
        if rank_rng is not None and len(rank_rng) == procs.world_size:
            restore_rng_state(rank_rng[procs.rank], run.batch_generator)  # this process's own streams
        else:
            restore_rng_state(checkpoint["rng"], run.batch_generator)
            if procs.rank > 0:  # rank 0's streams (another number of processes, or an older checkpoint)
                torch.manual_seed(cfg.seed + procs.rank + run.iter_num)
    elif run.procs.master:
        print("note: this checkpoint holds no random state (saved by an older version); the resumed run will draw other batches")


@torch.no_grad()
def estimate_loss(run):
    """Mean loss over eval_iters batches per split, or None if a stop request came first (an evaluation
    can take minutes). The batches are the same at every eval (a fixed seed), so the curve shows the
    model changing, not the batches."""
    cfg = run.cfg
    results = torch.zeros(3)  # train loss, val loss, val bits per byte
    run.model.eval()
    t0 = time.time()
    for i, split in enumerate(("train", "val")):
        generator = torch.Generator().manual_seed(cfg.seed + 1)
        losses, text_bytes = torch.zeros(cfg.eval_iters), torch.zeros((), dtype=torch.long, device=run.procs.device)
        for k in range(cfg.eval_iters):
            if eval_stop_requested(run):
                run.model.train()
                return None
            X, Y = run.data.get_batch(split, cfg.batch_size, cfg.block_size, run.procs.device, generator)
            with run.ctx:
                _, loss = run.model(X, Y)
            losses[k] = loss.item()
            if split == "val":
                text_bytes += run.token_bytes[Y].sum()
            if not run.eval_timed:
                report_eval_time(run, time.time() - t0)
        results[i] = losses.mean()
        if split == "val":
            # nats over every target token / the UTF-8 bytes of their text / ln 2: comparable across tokenizers
            results[2] = losses.sum() * Y.numel() / max(text_bytes.item(), 1) / math.log(2)
    run.model.train()
    if cfg.fsdp:
        # every process decides from these whether to save, and saving is a collective: a last-bit
        # difference between processes must not split that decision
        results = results.to(run.procs.device)
        torch.distributed.broadcast(results, src=0)
    return dict(train=results[0].item(), val=results[1].item(), val_bpb=results[2].item())


def eval_stop_requested(run):
    """A stop request, checked between eval batches. Under FSDP every process evaluates, and its
    forward is a collective, so they agree before each batch; under DDP rank 0 evaluates alone."""
    stop = bool(run.stop_signals)
    if run.cfg.fsdp:
        flag = torch.tensor(float(stop), device=run.procs.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        stop = flag.item() > 0
    return stop


def report_eval_time(run, first_batch_seconds):
    """Once the first eval batch is timed, say how long every evaluation will take if that is long: the
    evaluation at step 0 comes before any step, and a run set up too big would otherwise sit silent."""
    run.eval_timed = True
    seconds = first_batch_seconds * 2 * run.cfg.eval_iters
    if seconds > 30 and run.procs.master:
        print(
            f"note: each evaluation will take about {format_duration(seconds)} (2 x {run.cfg.eval_iters} batches at"
            f" {first_batch_seconds:.2f} s each); --eval_iters and --eval_interval set how many and how often"
        )


def learning_rate(cfg, it):
    """AdamW's learning rate at step it; every param group is scaled by the same factor."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    if cfg.lr_schedule == "wsd":
        return wsd_lr(it, cfg.learning_rate, cfg.min_lr, cfg.warmup_iters, cfg.lr_decay_iters, cfg.decay_fraction)
    return cosine_lr(it, cfg.learning_rate, cfg.min_lr, cfg.warmup_iters, cfg.lr_decay_iters)


def save(run, best=False):
    """Write ckpt.pt, the full state, from rank 0; with best, also best.pt (the model alone), and with
    keep_checkpoints a numbered copy. Under FSDP every process must call it: the full weights are
    gathered from all shards, so the files are the same as an unsharded run's."""
    if run.cfg.fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

        full = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state = get_model_state_dict(run.raw_model, options=full)
        optimizer_states = [get_optimizer_state_dict(run.raw_model, optimizer, options=full) for optimizer in run.optimizers]
    else:
        model_state, optimizer_states = run.raw_model.state_dict(), [optimizer.state_dict() for optimizer in run.optimizers]
    run.saved_iter, run.has_checkpoint = run.iter_num, True
    if not run.procs.master:
        return
    checkpoint = {
        "model": model_state,
        "optimizer": optimizer_states,
        "scaler": run.scaler.state_dict(),
        "model_args": run.model_args,
        "iter_num": run.iter_num,
        "best_val_loss": run.best_val_loss,
        "train_seconds": run.train_seconds,  # the time axis of a resumed run's metrics continues from here
        "config": asdict(run.cfg),
        "tokenizer": run.data.meta,
        # the other streams are where they were when that batch was drawn: since then only backward,
        # the optimizer step and evaluation ran, and none of them draws random numbers
        "rng": capture_rng_state(run.batch_rng),
    }
    if run.procs.ddp:
        checkpoint["rank_rng"] = run.rank_rng  # gathered at this step by gather_rank_rng
    out_dir = run.cfg.out_dir
    path = save_checkpoint(out_dir, checkpoint)
    if best:
        save_checkpoint(out_dir, {key: checkpoint[key] for key in MODEL_KEYS}, BEST_NAME)
    print(f"saved checkpoint to {path}" + (f" and the best model so far to {BEST_NAME}" if best else ""))
    if run.cfg.keep_checkpoints:
        save_checkpoint(out_dir, checkpoint, f"ckpt-{run.iter_num:06d}.pt")
        for old in sorted(Path(out_dir).glob("ckpt-[0-9]*.pt"))[: -run.cfg.keep_checkpoints]:
            old.unlink()


def evaluate_and_save(run, lr):
    """Losses on both splits, logged by rank 0, and a checkpoint (best.pt too when val loss improved).
    Returns False when a stop request cut the evaluation short."""
    cfg = run.cfg
    t0 = time.time()
    losses = estimate_loss(run)
    if losses is None:
        return False
    if run.procs.master:
        print(f"step {run.iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}, val {losses['val_bpb']:.4f} bits per byte")
        append_record(cfg.out_dir, dict(
            kind="eval", iter=run.iter_num, train_loss=losses["train"], val_loss=losses["val"], val_bpb=losses["val_bpb"], lr=lr,
            tokens=run.iter_num * run.tokens_per_iter, train_seconds=run.train_seconds, eval_seconds=time.time() - t0,
        ))
        run.plotter.request()
        if run.wandb:
            run.wandb.log({"iter": run.iter_num, "train/loss": losses["train"], "val/loss": losses["val"], "lr": lr})
    if not math.isfinite(losses["val"]):
        raise UserError(f"val loss is {losses['val']} at step {run.iter_num}; the last good checkpoint in {cfg.out_dir} is kept (try a lower learning_rate, or dtype=bfloat16 instead of float16)")
    if run.iter_num > 0 and not cfg.eval_only:
        improved = losses["val"] < run.best_val_loss
        run.best_val_loss = min(run.best_val_loss, losses["val"])
        save(run, best=improved)
    return True


def optimizer_step(run):
    """One optimizer step over grad_accum micro-batches (nanogpt/step.py, which bench.py times too);
    returns the last micro-batch's loss (a tensor)."""
    cfg, procs = run.cfg, run.procs

    def gradient_sync(last_micro_step):
        # under DDP / FSDP, reduce the gradients only once, after the last micro-batch
        if cfg.fsdp:
            run.model.set_requires_gradient_sync(last_micro_step)
        if procs.ddp and not cfg.fsdp and not last_micro_step:
            return run.train_model.no_sync()
        return contextlib.nullcontext()

    loss, _ = training_step(
        run.train_model, run.optimizers, run.scaler, run.ctx, procs.grad_accum, cfg.grad_clip, (run.X, run.Y),
        lambda: draw_batch(run), gradient_sync, cfg.fused_loss,
    )
    return loss


def draw_batch(run):
    """The next training batch. The batch generator's state from before it was drawn goes into
    checkpoints, so a resumed run draws that batch again: an exact resume."""
    cfg, procs = run.cfg, run.procs
    run.batch_rng = run.batch_generator.get_state()
    run.X, run.Y = run.data.get_batch("train", cfg.batch_size, cfg.block_size, procs.device, run.batch_generator, procs.rank, procs.world_size)
    return run.X, run.Y


def log_step(run, loss, lr):
    """One line and one metrics record for the step just taken (rank 0, every log_interval steps)."""
    cfg = run.cfg
    last_iter, last_seconds = run.last_log
    seconds_per_iter = (run.train_seconds - last_seconds) / (run.iter_num - last_iter)
    run.last_log = (run.iter_num, run.train_seconds)
    loss_value = loss.item() * run.procs.grad_accum  # .item() waits for the GPU, so only at log time
    if not math.isfinite(loss_value):
        raise UserError(f"training loss is {loss_value} at step {run.iter_num}; the last good checkpoint in {cfg.out_dir} is kept (try a lower learning_rate, or dtype=bfloat16 instead of float16)")
    # smooth the step time for the ETA; the first steps include warm-up and compilation
    ms = seconds_per_iter * 1000
    run.ms_per_iter = ms if run.ms_per_iter is None else 0.9 * run.ms_per_iter + 0.1 * ms
    tokens_per_sec = run.tokens_per_iter / seconds_per_iter
    eta = format_duration((cfg.max_iters - run.iter_num) * run.ms_per_iter / 1000)
    line = f"iter {run.iter_num}/{cfg.max_iters}: loss {loss_value:.4f}, lr {lr:.2e}, {ms:.1f} ms/iter, {tokens_per_sec:,.0f} tok/s, ETA {eta}"
    record = dict(
        kind="train", iter=run.iter_num, loss=loss_value, lr=lr, ms_per_iter=ms, tokens_per_sec=tokens_per_sec,
        tokens=run.iter_num * run.tokens_per_iter, train_seconds=run.train_seconds,
    )
    if run.device_peak is not None:
        record["mfu"] = run.flops_per_iter / seconds_per_iter / run.device_peak
        line += f", MFU {record['mfu'] * 100:.1f}%"
    print(line)
    append_record(cfg.out_dir, record)
    if run.wandb:
        run.wandb.log({"iter": run.iter_num, "train/loss_batch": loss_value, "lr": lr, "tokens_per_sec": tokens_per_sec})


def stop_requested(run):
    """Whether to stop after this step. Under DDP every process must stop at the same step, even if only
    some got the signal (or got it a step later), so they decide together, and only at log steps,
    because reading the agreed flag back waits for the GPU."""
    if not run.procs.ddp:
        return bool(run.stop_signals)
    if run.iter_num % run.cfg.log_interval != 0:
        return False
    flag = torch.tensor(float(bool(run.stop_signals)), device=run.procs.device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return flag.item() > 0


def stop(run):
    """End the run on a stop request: save, unless the state on disk is already this one, and say how
    to go on."""
    cfg, procs = run.cfg, run.procs
    if run.iter_num != run.saved_iter:
        if procs.ddp:
            gather_rank_rng(run)
        if procs.master or cfg.fsdp:
            save(run)
    if procs.master:
        cause = run.stop_signals[0] if run.stop_signals else "another process was signalled"
        if not run.has_checkpoint:
            print(f"stopped at iter {run.iter_num} ({cause}) before anything was trained; nothing saved")
            return
        print(f"stopped at iter {run.iter_num} ({cause}); resume with:")
        print(f"  {resume_command()}")


def gather_rank_rng(run):
    """Every process's random streams (each draws dropout masks of its own), gathered on rank 0 for the
    checkpoint, so a resumed run continues each one: an exact resume under DDP too. Every process must
    call it at the same step."""
    procs = run.procs
    state = capture_rng_state(run.batch_rng)
    run.rank_rng = [None] * procs.world_size if procs.master else None
    torch.distributed.gather_object(state, run.rank_rng, dst=0)


def training_loop(run):
    """Train until max_iters or a stop signal; returns whether a signal stopped it."""
    cfg, procs = run.cfg, run.procs
    draw_batch(run)
    t_last, run.ms_per_iter, run.last_log = time.time(), None, (run.iter_num, run.train_seconds)
    while True:
        lr = learning_rate(cfg, run.iter_num)
        for optimizer in run.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * (lr / cfg.learning_rate if cfg.learning_rate else 0.0)

        eval_due = (run.iter_num % cfg.eval_interval == 0 or run.iter_num == cfg.max_iters) and run.iter_num != run.resumed_at
        # FSDP's forward gathers weights from every process, so there all of them evaluate (and, with
        # rank 0's losses, stop or save together)
        if eval_due and procs.ddp:
            gather_rank_rng(run)
        if (eval_due or cfg.eval_only) and (procs.master or cfg.fsdp):
            finished = evaluate_and_save(run, lr)
            # under DDP the other processes are already in the next step: rank 0 joins it and they stop together
            if not finished and (not procs.ddp or cfg.fsdp):
                stop(run)
                return True
            t_last = time.time()  # evaluation is not training time
        if cfg.eval_only or run.iter_num >= cfg.max_iters:
            return False

        loss = optimizer_step(run)
        run.iter_num += 1
        now = time.time()
        run.train_seconds, t_last = run.train_seconds + now - t_last, now
        if run.iter_num % cfg.log_interval == 0 and procs.master:
            log_step(run, loss, lr)

        if stop_requested(run):
            stop(run)
            return True


if __name__ == "__main__":
    run_main(main)
