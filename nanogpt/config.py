"""Every script's settings: defaults, config files and --key=value overrides; train.py's and sample.py's
own, and the GPTConfig that a script's settings describe.

A config file is plain Python that assigns some of the keys below, e.g. `batch_size = 32`.
Files and overrides apply left to right, each checked against the key's type; an unknown key is
an error naming the closest known one. Each setting may also declare the interval its number must lie
in or the values its text may take; load_config refuses anything else in one sentence naming the key,
so every script checks every setting before it loads anything. Checking a setting changes nothing
outside it: what a setting chooses for the whole process is applied later, by the script's set-up.
"""

import difflib
import math
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

from nanogpt.errors import HelpRequested, SettingError
from nanogpt.files import read_utf8
from nanogpt.generation.sampling import sampling_options
from nanogpt.model import GPTConfig, architecture_switches


DTYPES = ("auto", "float32", "bfloat16", "float16")
CHECKPOINTS = ("best", "latest")
OPTIMIZERS = ("adamw", "muon", "adafactor")
LARGEST_INT = 2**62  # beyond this a count overflows torch's 64-bit integers somewhere


def setting(default, help, within=None, choices=None):
    """A config key: its default, what it means, and what it may be: `within` an interval such as
    "[0, 1)" for a number, `choices` the values a text may take."""
    return field(default=default, metadata={"help": help, "within": within, "choices": choices})


def with_declared(declared, defaults=None):
    """A decorator adding fields declared in another class (`declared`, dataclass fields) to a settings
    class, before @dataclass makes it one: each with its own help and limits, and its own default unless
    `defaults` gives the script another. Declared once, a switch or an option is a setting everywhere."""

    def add(cls):
        for f in declared:
            cls.__annotations__[f.name] = f.type
            setattr(cls, f.name, field(default=(defaults or {}).get(f.name, f.default), metadata=f.metadata))
        return cls

    return add


# GPTConfig's architecture switches (nanogpt/model.py), as train.py and bench.py take them
with_model_switches = with_declared(architecture_switches())
# Sampling's options (nanogpt/generation/sampling.py), as sample.py takes them: nanoGPT's sample.py
# defaults where they differ from the API's
with_sampling_options = with_declared(sampling_options(), defaults=dict(temperature=0.8, top_k=200))


def gpt_config(cfg, vocab_size):
    """The GPTConfig a script's settings describe: each GPTConfig field the settings have (shape,
    dropout, bias, switches), with the vocabulary size the data gives."""
    shared = {
        f.name: getattr(cfg, f.name) for f in fields(GPTConfig) if f.name != "vocab_size" and hasattr(cfg, f.name)
    }
    return GPTConfig(vocab_size=vocab_size, **shared)


@dataclass
@with_model_switches
class TrainSettings:
    # I/O
    out_dir: str = setting("out", "folder for the checkpoint, metrics.jsonl and loss-curve PNG")
    overwrite: bool = setting(False, "start from scratch even if out_dir already holds a checkpoint (it is replaced)")
    eval_interval: int = setting(2000, "evaluate train/val loss every this many iterations", within="[1, inf)")
    log_interval: int = setting(1, "print and record the training loss every this many iterations", within="[1, inf)")
    eval_iters: int = setting(200, "batches averaged for each loss estimate", within="[1, inf)")
    eval_only: bool = setting(False, "evaluate once and exit")
    hellaswag_interval: int = setting(
        0,
        "score hellaswag_task every this many iterations (acc, acc_norm in metrics.jsonl); 0: never",
        within="[0, inf)",
    )
    hellaswag_task: str = setting(
        "hellaswag",
        "with hellaswag_interval: 'hellaswag' (its validation set, downloaded once into data/hellaswag/) or "
        "a .jsonl file of multiple-choice items",
    )
    always_save_checkpoint: bool = setting(
        True,
        "nanoGPT's setting, accepted so its configs run; no effect: ckpt.pt is written at every eval and "
        "best.pt keeps the best model",
    )
    keep_checkpoints: int = setting(
        0,
        "also keep the last N step checkpoints (ckpt-000500.pt ...) to roll back to; 0 keeps only ckpt.pt and best.pt",
        within="[0, inf)",
    )
    init_from: str = setting(
        "scratch",
        "'scratch', 'resume' (from out_dir), 'auto' (resume if out_dir holds a checkpoint, else scratch) or "
        "a GPT-2 name: gpt2, gpt2-medium, gpt2-large, gpt2-xl",
    )
    # logging
    wandb_log: bool = setting(False, "log to Weights & Biases (pip install wandb)")
    wandb_project: str = setting("owt", "wandb project name")
    wandb_run_name: str = setting("gpt2", "wandb run name")
    # data
    dataset: str = setting("openwebtext", "dataset folder under data_dir holding train.bin, val.bin, meta.json")
    data_dir: str = setting("data", "folder that holds the dataset folders")
    gradient_accumulation_steps: int = setting(
        40, "micro-batches per optimizer step, summed over all processes", within="[1, inf)"
    )
    batch_size: int = setting(12, "sequences per micro-batch", within="[1, inf)")
    block_size: int = setting(1024, "context length in tokens", within="[1, inf)")
    # model
    n_layer: int = setting(12, "transformer blocks", within="[1, inf)")
    n_head: int = setting(12, "attention heads per block", within="[1, inf)")
    n_embd: int = setting(768, "embedding width", within="[1, inf)")
    dropout: float = setting(
        0.0, "dropout probability (0 for pretraining, ~0.1+ for fine-tuning small data)", within="[0, 1)"
    )
    bias: bool = setting(False, "biases in Linear and LayerNorm layers")
    # the architecture switches (rotary, rmsnorm, ...) come from GPTConfig: see with_model_switches
    # optimizer
    optimizer: str = setting(
        "adamw",
        "'adamw'; 'muon' (Muon for the blocks' weight matrices, AdamW for the rest); or 'adafactor' "
        "(factored second moments, no first: about 4 bytes a parameter less optimizer state than AdamW's 8)",
        choices=OPTIMIZERS,
    )
    muon_lr: float = setting(
        0.02, "peak learning rate of Muon's matrices (learning_rate is AdamW's)", within="[0, inf)"
    )
    muon_dtype: str = setting(
        "auto",
        "Muon's Newton-Schulz number format: 'auto' (bfloat16 where its matmuls are fast: GPUs, CPUs with "
        "AVX-512 BF16 or AMX; else float32; a resumed run keeps its checkpoint's), 'bfloat16' or 'float32'",
        choices=("auto", "bfloat16", "float32"),
    )
    learning_rate: float = setting(6e-4, "peak learning rate", within="[0, inf)")
    max_iters: int = setting(600000, "total optimizer steps", within="[0, inf)")
    weight_decay: float = setting(1e-1, "AdamW weight decay on matrices", within="[0, inf)")
    beta1: float = setting(0.9, "AdamW beta1", within="[0, 1)")
    beta2: float = setting(0.95, "AdamW beta2", within="[0, 1)")
    grad_clip: float = setting(1.0, "clip the gradient norm to this value; 0 disables", within="[0, inf)")
    # learning rate schedule
    decay_lr: bool = setting(True, "decay the learning rate after warmup (False: constant)")
    lr_schedule: str = setting(
        "cosine",
        "'cosine', or 'wsd' (warmup, stable, then linear decay over the last decay_fraction)",
        choices=("cosine", "wsd"),
    )
    decay_fraction: float = setting(
        0.2, "with lr_schedule='wsd': share of lr_decay_iters spent decaying", within="[0, 1]"
    )
    warmup_iters: int = setting(2000, "linear warmup steps", within="[0, inf)")
    lr_decay_iters: int = setting(
        600000, "step where the cosine decay reaches min_lr (usually max_iters)", within="[0, inf)"
    )
    min_lr: float = setting(6e-5, "floor of the learning rate (usually learning_rate / 10)", within="[0, inf)")
    # system
    backend: str = setting(
        "auto",
        "torch.distributed backend under torchrun: 'auto' (nccl on CUDA, gloo elsewhere), 'nccl' or 'gloo'",
        choices=("auto", "nccl", "gloo"),
    )
    connect_timeout: int = setting(
        120,
        "under torchrun: seconds the processes may take to connect to each other; then each exits, so that "
        "torchrun --max-restarts starts them again",
        within="[1, 86400]",
    )
    fsdp: bool = setting(
        False, "under torchrun, shard weights, gradients and optimizer state over the processes (FSDP2) instead of DDP"
    )
    device: str = setting("auto", "'auto' (cuda, then mps, then cpu), or e.g. 'cpu', 'cuda', 'cuda:1', 'mps'")
    dtype: str = setting(
        "auto",
        "'auto' (bfloat16 on GPUs that have it, else float16; float32 on CPU), 'float32', 'bfloat16', 'float16'",
        choices=DTYPES,
    )
    compile: typing.Optional[bool] = setting(
        None, "torch.compile the model; None means on for CUDA only, where it pays off"
    )
    attention: str = setting(
        "auto",
        "training's attention kernel on CUDA: 'auto' (torch's choice), 'flash', 'cudnn' or 'efficient' "
        "(bench/gpu_train.sh times each)",
        choices=("auto", "flash", "cudnn", "efficient"),
    )
    fused_loss: bool = setting(
        False,
        "work out the output head's loss and gradients a slice of tokens at a time, never holding the whole "
        "batch's logits (nanogpt/fused_loss.py): less memory",
    )
    fp8: bool = setting(
        False,
        "float8 matmuls in the blocks' Linear layers through torchao (NVIDIA compute capability 8.9+, dtype "
        "bfloat16; best with compile=True)",
    )
    # fitting a model in memory (references/training.md, "Memory"): each is off by default
    lora_rank: int = setting(
        0,
        "LoRA: train rank-R adapters beside the pretrained weights, which stay frozen (0: off, every weight trains)",
        within="[0, 65536]",
    )
    lora_alpha: float = setting(
        16.0, "LoRA: the adapters' output is scaled by lora_alpha / lora_rank", within="(0, inf)"
    )
    lora_targets: str = setting(
        "both",
        "LoRA: the Linear layers that get adapters: 'attention' (c_attn, c_proj), 'mlp' (c_fc, c_proj) or 'both'",
        choices=("attention", "mlp", "both"),
    )
    lora_dropout: float = setting(0.0, "LoRA: dropout on the adapters' input", within="[0, 1)")
    activation_checkpointing: bool = setting(
        False,
        "keep only each block's input in the forward pass and recompute the rest in the backward: the same "
        "gradients, less activation memory, about a third more compute",
    )
    memory_check: str = setting(
        "error",
        "before the model loads, estimate a training step's memory against the device's free memory: 'error' "
        "stops if it does not fit (naming what would), 'warn' goes on, 'off' skips it",
        choices=("error", "warn", "off"),
    )
    seed: int = setting(1337, "random seed")


def as_train_settings(cfg):
    """TrainSettings holding another script's values of the keys it shares with train.py (bench.py's),
    the rest at train.py's defaults: for what takes a run's settings, such as the memory plan."""
    return TrainSettings(**{key: getattr(cfg, key) for key in TrainSettings.__dataclass_fields__ if hasattr(cfg, key)})


def train_setting(name):
    """TrainSettings' key `name` (default, meaning, limits), for another script that takes it too."""
    declared = TrainSettings.__dataclass_fields__[name]
    return field(default=declared.default, metadata=declared.metadata)


@dataclass
@with_sampling_options  # temperature, top_k, top_p, ...
class SampleSettings:
    out_dir: str = setting("out", "folder holding the checkpoint to sample from (with init_from='resume')")
    init_from: str = setting(
        "resume", "'resume' (checkpoint in out_dir) or a GPT-2 name: gpt2, gpt2-medium, gpt2-large, gpt2-xl"
    )
    start: str = setting("\n", "prompt text, FILE:path to read it from a file, or - to read it from stdin")
    prompts: str = setting(
        "",
        "a file of prompts, one a line (or .jsonl with a 'prompt' field a line): one completion each, "
        "instead of --start",
    )
    chat: bool = setting(
        False,
        "talk to a chat fine-tuned model (config/finetune_chat.py) turn by turn; with --prompts, a .jsonl of "
        '{"messages": [...]} conversations to answer',
    )
    system: str = setting("", "with --chat, a system message that opens the conversation")
    batch_size: int = setting(
        0, "with --prompts, how many prompts are generated together; 0 for all", within="[0, inf)"
    )
    output: str = setting(
        "",
        'with --prompts, write one {"prompt": ..., "completion": ...} a line to this .jsonl file, in input order '
        '(with --chat, each conversation with its answer: {"messages": [...]})',
    )
    stop: str = setting(
        "",
        "end a sample where this text appears (the text itself is not printed); GPT-2 BPE samples also end "
        "at <|endoftext|>",
    )
    num_samples: int = setting(
        10, "how many samples to draw from --start (generated together, as one batch)", within="[1, inf)"
    )
    max_new_tokens: int = setting(500, "tokens generated per sample", within="[1, inf)")
    stream: typing.Optional[bool] = setting(
        None, "print tokens as they are generated; None means on when num_samples is 1"
    )
    use_cache: bool = setting(True, "decode with a key/value cache (same tokens as without, much faster)")
    seed: int = setting(1337, "random seed; the same seed gives the same samples")
    checkpoint: str = setting(
        "best",
        "with init_from='resume': 'best' (best.pt, the lowest val loss) or 'latest' (ckpt.pt, where training stopped)",
        choices=CHECKPOINTS,
    )
    device: str = setting("auto", "'auto' (cuda, then mps, then cpu), or e.g. 'cpu', 'cuda', 'mps'")
    dtype: str = setting("auto", "'auto', 'float32', 'bfloat16' or 'float16'", choices=DTYPES)


def unwrap_optional(hint):
    """Optional[X] -> (X, True); X -> (X, False)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0], True
    return hint, False


def _type_name(hint):
    base, optional = unwrap_optional(hint)
    return base.__name__ + (" or None" if optional else "")


def parse_text(key, text, hint):
    """Turn the text of a --key=value override into the key's type."""
    base, optional = unwrap_optional(hint)
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
        raise SettingError(f"--{key} expects {_type_name(hint)}, got {text!r}") from None
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]  # quotes kept by the shell, as in --init_from="'gpt2'"
    return text


def check_value(key, value, hint, where):
    """Check a value set in a config file against the key's type. An int is fine where a float is wanted."""
    base, optional = unwrap_optional(hint)
    if value is None and optional:
        return None
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, base) and not (base is int and isinstance(value, bool)):
        return value
    raise SettingError(f"{key} in {where} must be {_type_name(hint)}, got {value!r}")


def _unknown_key(key, config_cls, where):
    names = [f.name for f in fields(config_cls)]
    close = difflib.get_close_matches(key, names, n=1)
    hint = f"; did you mean {close[0]}?" if close else "; run with --help to list the keys"
    return SettingError(f"unknown config key {key!r} in {where}{hint}")


def _read_config_file(path):
    """Run a config file and return the settings it assigns (module-level names without a leading _)."""
    p = Path(path)
    if p.is_dir():
        raise SettingError(
            f"config file {path} is a folder; name a file in it (config files live in config/, e.g. "
            "config/train_shakespeare_char.py)"
        )
    if not p.is_file():
        raise SettingError(
            f"config file {path} not found (config files live in config/, e.g. config/train_shakespeare_char.py)"
        )
    namespace, source = {}, read_utf8(p, "config file")
    try:
        exec(compile(source, str(p), "exec"), namespace)
    except (Exception, SystemExit) as e:  # SystemExit: a config that calls exit() is not a config
        raise SettingError(f"config file {path} could not be run: {type(e).__name__}: {e}") from None
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


def load_config(config_cls, argv, script="train.py", ignore_train_keys=False):
    """Build a config from defaults, then each config file / --key=value in argv, in order.
    ignore_train_keys: a config file may also set train.py's keys, which are then left out (bench.py
    times the step of a training config)."""
    if any(a in ("-h", "--help") for a in argv):
        raise HelpRequested(help_text(config_cls, script))
    hints = typing.get_type_hints(config_cls)
    values = {}
    for arg in argv:
        if not arg.startswith("--"):
            for key, value in _read_config_file(arg).items():
                if key not in hints and ignore_train_keys and key in TrainSettings.__dataclass_fields__:
                    continue
                if key not in hints:
                    raise _unknown_key(key, config_cls, arg)
                values[key] = check_value(key, value, hints[key], arg)
            continue
        if "=" not in arg and arg[2:] in hints and unwrap_optional(hints[arg[2:]])[0] is bool:
            arg += "=True"  # a switch on its own turns it on: --chat
        if "=" not in arg:
            raise SettingError(f"override {arg} needs a value: write it as {arg}=VALUE")
        key, text = arg[2:].split("=", 1)
        if key not in hints:
            raise _unknown_key(key, config_cls, "the command line")
        values[key] = parse_text(key, text, hints[key])
    cfg = config_cls(**values)
    check_settings(cfg)
    return cfg


def describe_interval(within):
    """'[1, inf)' -> 'at least 1'; '(0, 1]' -> 'above 0 and at most 1'."""
    low, high = (text.strip() for text in within[1:-1].split(","))
    parts = []
    if low != "-inf":
        parts.append(("at least " if within[0] == "[" else "above ") + low)
    if high != "inf":
        parts.append(("at most " if within[-1] == "]" else "below ") + high)
    return " and ".join(parts)


def in_interval(value, within):
    low, high = (float(text) for text in within[1:-1].split(","))
    above_low = value >= low if within[0] == "[" else value > low
    below_high = value <= high if within[-1] == "]" else value < high
    return above_low and below_high  # False for NaN


def check_settings(cfg):
    """Refuse any setting outside what its key declares, in one sentence naming the key and what works.
    Every float must be finite; a text whose default is not empty must not be empty."""
    for f in fields(cfg):
        value, within, choices = getattr(cfg, f.name), f.metadata.get("within"), f.metadata.get("choices")
        if value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise SettingError(f"{f.name} must be a finite number, got {value}")
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= LARGEST_INT:
            raise SettingError(f"{f.name} is too large ({value}); it must be below 2**62")
        if within and not in_interval(value, within):
            raise SettingError(f"{f.name} must be {describe_interval(within)}, got {value}")
        if choices and value not in choices:
            raise SettingError(f"unknown {f.name} {value!r}; use {', '.join(choices[:-1])} or {choices[-1]}")
        if isinstance(value, str) and f.default and not value:
            raise SettingError(f"{f.name} cannot be empty (its default is {f.default!r})")
