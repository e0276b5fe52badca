"""Settings for train.py and sample.py: defaults, config files and --key=value overrides.

A config file is plain Python that assigns some of the keys below, e.g. `batch_size = 32`.
Files and overrides apply left to right, each checked against the key's type; an unknown key is
an error naming the closest known one.
"""

import difflib
import math
import sys
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

from nanogpt.errors import UserError


def setting(default, help):
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    # I/O
    out_dir: str = setting("out", "folder for the checkpoint, metrics.jsonl and loss-curve PNG")
    overwrite: bool = setting(False, "start from scratch even if out_dir already holds a checkpoint (it is replaced)")
    eval_interval: int = setting(2000, "evaluate train/val loss every this many iterations")
    log_interval: int = setting(1, "print and record the training loss every this many iterations")
    eval_iters: int = setting(200, "batches averaged for each loss estimate")
    eval_only: bool = setting(False, "evaluate once and exit")
    always_save_checkpoint: bool = setting(True, "nanoGPT's setting, accepted so its configs run; no effect: ckpt.pt is written at every eval and best.pt keeps the best model")
    keep_checkpoints: int = setting(0, "also keep the last N step checkpoints (ckpt-000500.pt ...) to roll back to; 0 keeps only ckpt.pt and best.pt")
    init_from: str = setting("scratch", "'scratch', 'resume' (from out_dir), 'auto' (resume if out_dir holds a checkpoint, else scratch) or a GPT-2 name: gpt2, gpt2-medium, gpt2-large, gpt2-xl")
    # logging
    wandb_log: bool = setting(False, "log to Weights & Biases (pip install wandb)")
    wandb_project: str = setting("owt", "wandb project name")
    wandb_run_name: str = setting("gpt2", "wandb run name")
    # data
    dataset: str = setting("openwebtext", "dataset folder under data_dir holding train.bin, val.bin, meta.json")
    data_dir: str = setting("data", "folder that holds the dataset folders")
    gradient_accumulation_steps: int = setting(40, "micro-batches per optimizer step, summed over all processes")
    batch_size: int = setting(12, "sequences per micro-batch")
    block_size: int = setting(1024, "context length in tokens")
    # model
    n_layer: int = setting(12, "transformer blocks")
    n_head: int = setting(12, "attention heads per block")
    n_embd: int = setting(768, "embedding width")
    dropout: float = setting(0.0, "dropout probability (0 for pretraining, ~0.1+ for fine-tuning small data)")
    bias: bool = setting(False, "biases in Linear and LayerNorm layers")
    rotary: bool = setting(False, "rotary position embeddings instead of a learned position table")
    rmsnorm: bool = setting(False, "RMSNorm instead of LayerNorm")
    qk_norm: bool = setting(False, "RMS-normalise queries and keys in attention")
    relu2: bool = setting(False, "ReLU^2 MLP activation instead of GELU")
    tie_embeddings: bool = setting(True, "share the token embedding with the output head")
    logit_softcap: float = setting(0.0, "if > 0, cap logits smoothly at this value (cap * tanh(logits / cap))")
    zero_init_proj: bool = setting(False, "start the residual projections at zero")
    # optimizer
    optimizer: str = setting("adamw", "'adamw', or 'muon' (Muon for the blocks' weight matrices, AdamW for the rest)")
    muon_lr: float = setting(0.02, "peak learning rate of Muon's matrices (learning_rate is AdamW's)")
    learning_rate: float = setting(6e-4, "peak learning rate")
    max_iters: int = setting(600000, "total optimizer steps")
    weight_decay: float = setting(1e-1, "AdamW weight decay on matrices")
    beta1: float = setting(0.9, "AdamW beta1")
    beta2: float = setting(0.95, "AdamW beta2")
    grad_clip: float = setting(1.0, "clip the gradient norm to this value; 0 disables")
    # learning rate schedule
    decay_lr: bool = setting(True, "decay the learning rate after warmup (False: constant)")
    lr_schedule: str = setting("cosine", "'cosine', or 'wsd' (warmup, stable, then linear decay over the last decay_fraction)")
    decay_fraction: float = setting(0.2, "with lr_schedule='wsd': share of lr_decay_iters spent decaying")
    warmup_iters: int = setting(2000, "linear warmup steps")
    lr_decay_iters: int = setting(600000, "step where the cosine decay reaches min_lr (usually max_iters)")
    min_lr: float = setting(6e-5, "floor of the learning rate (usually learning_rate / 10)")
    # system
    backend: str = setting("auto", "torch.distributed backend under torchrun: 'auto' (nccl on CUDA, gloo elsewhere), 'nccl' or 'gloo'")
    fsdp: bool = setting(False, "under torchrun, shard weights, gradients and optimizer state over the processes (FSDP2) instead of DDP")
    device: str = setting("auto", "'auto' (cuda, then mps, then cpu), or e.g. 'cpu', 'cuda', 'cuda:1', 'mps'")
    dtype: str = setting("auto", "'auto' (bfloat16 on GPUs that have it, else float16; float32 on CPU), 'float32', 'bfloat16', 'float16'")
    compile: typing.Optional[bool] = setting(None, "torch.compile the model; None means on for CUDA only, where it pays off")
    seed: int = setting(1337, "random seed")


@dataclass
class SampleConfig:
    out_dir: str = setting("out", "folder holding the checkpoint to sample from (with init_from='resume')")
    init_from: str = setting("resume", "'resume' (checkpoint in out_dir) or a GPT-2 name: gpt2, gpt2-medium, gpt2-large, gpt2-xl")
    start: str = setting("\n", "prompt text, FILE:path to read it from a file, or - to read it from stdin")
    prompts: str = setting("", "a file of prompts, one a line (or .jsonl with a 'prompt' field a line): one completion each, instead of --start")
    batch_size: int = setting(0, "with --prompts, how many prompts are generated together; 0 for all")
    output: str = setting("", "with --prompts, write one {\"prompt\": ..., \"completion\": ...} a line to this .jsonl file, in input order")
    stop: str = setting("", "end a sample where this text appears (the text itself is not printed); GPT-2 BPE samples also end at <|endoftext|>")
    num_samples: int = setting(10, "how many samples to draw from --start (generated together, as one batch)")
    max_new_tokens: int = setting(500, "tokens generated per sample")
    temperature: float = setting(0.8, "1.0 samples the model as is; lower is more conservative; 0 is greedy")
    top_k: typing.Optional[int] = setting(200, "sample only among the top_k most likely tokens; None for all")
    top_p: typing.Optional[float] = setting(None, "nucleus sampling: only the most likely tokens that together reach top_p probability; None for all")
    stream: typing.Optional[bool] = setting(None, "print tokens as they are generated; None means on when num_samples is 1")
    use_cache: bool = setting(True, "decode with a key/value cache (same tokens as without, much faster)")
    seed: int = setting(1337, "random seed; the same seed gives the same samples")
    checkpoint: str = setting("best", "with init_from='resume': 'best' (best.pt, the lowest val loss) or 'latest' (ckpt.pt, where training stopped)")
    device: str = setting("auto", "'auto' (cuda, then mps, then cpu), or e.g. 'cpu', 'cuda', 'mps'")
    dtype: str = setting("auto", "'auto', 'float32', 'bfloat16' or 'float16'")


# the smallest value each numeric training setting may take; every float must also be finite
TRAIN_MINIMUMS = dict(
    eval_interval=1, log_interval=1, eval_iters=1, keep_checkpoints=0, gradient_accumulation_steps=1, batch_size=1, block_size=1,
    n_layer=1, n_head=1, n_embd=1, logit_softcap=0.0, muon_lr=0.0, learning_rate=0.0, max_iters=0,
    weight_decay=0.0, beta1=0.0, beta2=0.0, grad_clip=0.0, decay_fraction=0.0, warmup_iters=0,
    lr_decay_iters=0, min_lr=0.0,
)
BELOW_ONE = ("beta1", "beta2")  # AdamW's betas are averaging weights: 1 would never move


def check_train_config(cfg):
    """Refuse a setting that cannot work, in one sentence naming it, before anything loads."""
    for key, minimum in TRAIN_MINIMUMS.items():
        value = getattr(cfg, key)
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{key} must be a finite number, got {value}")
        if value < minimum:
            raise UserError(f"{key} must be at least {minimum}, got {value}")
    for key in BELOW_ONE:
        if getattr(cfg, key) >= 1:
            raise UserError(f"{key} must be below 1, got {getattr(cfg, key)}")
    if cfg.decay_fraction > 1:
        raise UserError(f"decay_fraction is a share of lr_decay_iters, at most 1, got {cfg.decay_fraction}")
    if not 0 <= cfg.dropout < 1:  # NaN too
        raise UserError(f"dropout is a probability of dropping, at least 0 and below 1, not {cfg.dropout}")
    if cfg.backend not in ("auto", "nccl", "gloo"):
        raise UserError(f"unknown backend {cfg.backend!r}; use auto, nccl or gloo")


def _unwrap_optional(hint):
    """Optional[X] -> (X, True); X -> (X, False)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0], True
    return hint, False


def _type_name(hint):
    base, optional = _unwrap_optional(hint)
    return base.__name__ + (" or None" if optional else "")


def parse_text(key, text, hint):
    """Turn the text of a --key=value override into the key's type."""
    base, optional = _unwrap_optional(hint)
    if optional and text == "None":
        return None
    try:
        if base is bool:
            lowered = text.lower()
            if lowered in ("true", "1", "yes"):
                return True
            if lowered in ("false", "0", "no"):
                return False
            raise ValueError
        if base is int:
            return int(text)
        if base is float:
            return float(text)
    except ValueError:
        raise UserError(f"--{key} expects {_type_name(hint)}, got {text!r}") from None
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]  # quotes kept by the shell, as in --init_from="'gpt2'"
    return text


def check_value(key, value, hint, where):
    """Check a value set in a config file against the key's type. An int is fine where a float is wanted."""
    base, optional = _unwrap_optional(hint)
    if value is None and optional:
        return None
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, base) and not (base is int and isinstance(value, bool)):
        return value
    raise UserError(f"{key} in {where} must be {_type_name(hint)}, got {value!r}")


def _unknown_key(key, config_cls, where):
    names = [f.name for f in fields(config_cls)]
    close = difflib.get_close_matches(key, names, n=1)
    hint = f"; did you mean {close[0]}?" if close else "; run with --help to list the keys"
    return UserError(f"unknown config key {key!r} in {where}{hint}")


def _read_config_file(path):
    """Run a config file and return the settings it assigns (module-level names without a leading _)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file {path} not found (config files live in config/, e.g. config/train_shakespeare_char.py)")
    namespace = {}
    try:
        exec(compile(p.read_text(), str(p), "exec"), namespace)
    except Exception as e:
        raise UserError(f"config file {path} could not be run: {type(e).__name__}: {e}") from None
    return {
        k: v
        for k, v in namespace.items()
        if not k.startswith("_") and not isinstance(v, (types.ModuleType, types.FunctionType, type))
    }


def help_text(config_cls, script):
    lines = [
        f"usage: python {script} [config/file.py ...] [--key=value ...]",
        "",
        "Config files and overrides apply left to right. Keys, defaults and meanings:",
    ]
    hints = typing.get_type_hints(config_cls)
    for f in fields(config_cls):
        lines.append(f"  --{f.name}={f.default!r}  ({_type_name(hints[f.name])})")
        lines.append(f"      {f.metadata['help']}")
    return "\n".join(lines)


def load_config(config_cls, argv, script="train.py"):
    """Build a config from defaults, then each config file / --key=value in argv, in order."""
    if any(a in ("-h", "--help") for a in argv):
        print(help_text(config_cls, script))
        sys.exit(0)
    hints = typing.get_type_hints(config_cls)
    values = {}
    for arg in argv:
        if not arg.startswith("--"):
            for key, value in _read_config_file(arg).items():
                if key not in hints:
                    raise _unknown_key(key, config_cls, arg)
                values[key] = check_value(key, value, hints[key], arg)
            continue
        if "=" not in arg:
            raise UserError(f"override {arg} needs a value: write it as {arg}=VALUE")
        key, text = arg[2:].split("=", 1)
        if key not in hints:
            raise _unknown_key(key, config_cls, "the command line")
        values[key] = parse_text(key, text, hints[key])
    return config_cls(**values)
