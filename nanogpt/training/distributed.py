"""The processes of a run: one, or torchrun's many, and everything that keeps them together.

    with processes(cfg) as procs:      # connects torchrun's processes; tears them down cleanly after
        ...procs.rank, procs.any(flag), procs.gather(value)...

It meets the other processes under a store of this attempt's own (torchrun --max-restarts), gives up
on a connection that does not come (so a restart costs one attempt, not the run), says in one line when
another process of the run is gone, and destroys the process group at the one moment that cannot
deadlock. It wraps the model for them (DDP, or FSDP's shards). SIGINT and SIGTERM become stop requests
that the training loop honours at the end of a step.
"""

import contextlib
import gc
import inspect
import os
import shlex
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from nanogpt.errors import NanoGPTError, RunError, SettingError, first_line
from nanogpt.system import compile_model, resolve_device


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

    def any(self, flag):
        """Whether flag is true in any process; every process must ask at the same point."""
        if not self.ddp:
            return bool(flag)
        value = torch.tensor(float(bool(flag)), device=self.device)
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        return value.item() > 0

    def first(self, value):
        """Rank 0's value, in every process: a choice (e.g. one measured) that all must share."""
        if not self.ddp:
            return value
        values = [value]
        torch.distributed.broadcast_object_list(values, src=0)
        return values[0]

    def gather(self, value):
        """Every process's value, as a list on rank 0 (None elsewhere); every process must call it."""
        if not self.ddp:
            return [value]
        gathered = [None] * self.world_size if self.master else None
        torch.distributed.gather_object(value, gathered, dst=0)
        return gathered


@contextlib.contextmanager
def processes(cfg):
    """This process's place in the run, connected to the others under torchrun. An error inside ends
    this process with one line (the others' errors are theirs to say); a run that ends well waits for
    every process and then tears the process group down."""
    procs = start_processes(cfg)
    try:
        yield procs
    except (NanoGPTError, RuntimeError, torch.distributed.DistError) as e:
        if not procs.ddp:
            raise
        if not isinstance(e, NanoGPTError):
            if not lost_a_peer(e):
                raise
            # the process that failed printed why; torchrun ends the others, and this one says why it ends
            e = RunError("another process of this run has ended, so this one stops too; its error is above")
        # the process group is left mid-collective or broken, and its destructor at exit can abort the
        # process ("terminate called ..."): say what happened and leave at once, as torchrun would anyway
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)
    if procs.ddp:
        # wait for rank 0's last eval and save: a process group torn down under a peer can abort it
        torch.distributed.barrier()
        # DDP's reducer and FSDP's state hold the process group too. Once the training function has
        # returned they are gone (gc.collect() for reference cycles), so destroy_process_group() drops the
        # group's last reference, and its destructor waits for gloo's worker threads without holding the
        # GIL they may need; from anywhere else it can deadlock or abort the process at exit.
        gc.collect()
        torch.distributed.destroy_process_group()


def shard(model, cfg, procs):
    """FSDP2: each block, then the rest, keeps only its shard of parameters, gradients and optimizer state
    on each process and gathers a block's full weights just for its forward and backward."""
    from torch.distributed.fsdp import fully_shard  # imported here: it would add half a second to every start-up

    if not procs.ddp:
        raise SettingError(
            "fsdp=True shards the model over processes that torchrun starts: torchrun --standalone "
            "--nproc_per_node=N train.py ..."
        )
    if cfg.optimizer != "adamw":
        raise SettingError("fsdp=True works with optimizer='adamw' only")
    for block in model.transformer.h:
        fully_shard(block)
    fully_shard(model)


def wrap_model(model, cfg, procs):
    """(the model compiled where that pays, what evaluates; under DDP its wrapper, what trains)."""
    compiled = compile_model(model, cfg.compile, procs.device)
    if not procs.ddp or cfg.fsdp:
        return compiled, compiled
    # The model's only buffers (rotary tables) are constants, the same on every rank, so DDP need not
    # broadcast them before each forward; left on, that broadcast is a collective, and rank 0's
    # evaluation alone would issue one the other ranks never join. (torch 2.13 renamed the switch.)
    renamed = "forward_sync_buffers" in inspect.signature(DDP).parameters
    no_buffer_sync = {"forward_sync_buffers" if renamed else "broadcast_buffers": False}
    device_ids = [int(procs.device.split(":")[1])] if procs.device_type == "cuda" else None
    return compiled, DDP(compiled, device_ids=device_ids, **no_buffer_sync)


def gradient_sync(cfg, procs, model, train_model):
    """The context each micro-batch runs in (nanogpt/training/step.py): under DDP and FSDP the
    gradients are reduced only once, after the last micro-batch of a step."""

    def sync(last_micro_step):
        if cfg.fsdp:
            model.set_requires_gradient_sync(last_micro_step)
        if procs.ddp and not cfg.fsdp and not last_micro_step:
            return train_model.no_sync()
        return contextlib.nullcontext()

    return sync


def start_processes(cfg):
    device = resolve_device(cfg.device)
    if int(os.environ.get("RANK", -1)) == -1:
        return Processes(False, 0, 1, device, cfg.gradient_accumulation_steps)
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
            torch.distributed.init_process_group(
                backend=backend, store=attempt_store(rank, world_size), rank=rank, world_size=world_size
            )
            torch.distributed.barrier()  # every process connected to every other
        except (RuntimeError, torch.distributed.DistError) as e:
            raise RunError(
                f"could not connect to the other processes of this run ({first_line(e)}); torchrun "
                "--max-restarts starts them again"
            ) from None
    return Processes(True, rank, world_size, device, cfg.gradient_accumulation_steps // world_size)


def attempt_store(rank, world_size):
    """The store the processes meet in (torchrun's, or one rank 0 serves), under a prefix of this attempt's
    own. torchrun --max-restarts keeps one store for every attempt; without the prefix a restarted
    process could read the address a process of the previous attempt left there and connect to a port no
    one listens on any more (pytorch/pytorch#135712; seen here as gloo's connect refused or hanging)."""
    torchrun_serves = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = torch.distributed.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world_size,
        is_master=rank == 0 and not torchrun_serves,
        multi_tenant=not torchrun_serves,
    )
    return torch.distributed.PrefixStore(f"nanogpt/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


@contextlib.contextmanager
def connect_deadline(seconds):
    """End the process if the block has not finished in time: under torchrun --max-restarts a hung
    connection then costs one restart instead of the whole run."""
    connected = threading.Event()

    def watch():
        if not connected.wait(seconds):
            print(
                f"error: the processes of this run did not all connect within {seconds} s; giving up so "
                "torchrun can restart them",
                file=sys.stderr,
                flush=True,
            )
            os._exit(1)

    threading.Thread(target=watch, daemon=True).start()
    try:
        yield
    finally:
        connected.set()


def lost_a_peer(error):
    """A collective that failed because another process of the run is gone (it failed, or was killed)."""
    peer_gone = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "remote worker")
    return torch.distributed.is_initialized() and (
        isinstance(error, torch.distributed.DistError) or any(text in str(error) for text in peer_gone)
    )


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


def resume_command(argv):
    """The command line that continues this run: the launcher as it was run, then the same settings."""
    args = [a for a in argv if not a.startswith(("--init_from=", "--overwrite="))]
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
        return [
            "torchrun",
            f"--nnodes={os.environ.get('GROUP_WORLD_SIZE', 1)}",
            f"--nproc_per_node={os.environ.get('LOCAL_WORLD_SIZE', 1)}",
            "train.py",
        ]
    launcher = argv[: script + 1]
    if Path(launcher[0]).name.startswith("python"):
        launcher[0] = "python"
        if len(launcher) > 1 and Path(launcher[1]).name == "torchrun":  # the torchrun script run by python
            launcher = ["torchrun", *launcher[2:]]
    elif Path(launcher[0]).name == "torchrun":
        launcher[0] = "torchrun"
    return launcher
