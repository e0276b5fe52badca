"""Every script's settings classes: train.py's and sample.py's own (the other scripts declare theirs beside
their code), the model switches and sampling options they take from where those are declared, and the
GPTConfig that a script's settings describe. How settings are declared, read and checked is
nanogpt/command_line.py's.
"""

import typing
from dataclasses import dataclass, field, fields

from nanogpt.command_line import setting
from nanogpt.generation.sampling import sampling_options
from nanogpt.model import GPTConfig, architecture_switches


DTYPES = ("auto", "float32", "bfloat16", "float16")
CHECKPOINTS = ("best", "latest")
OPTIMIZERS = ("adamw", "muon", "adafactor")


def quantize_setting():
    """--quantize, as sample.py, serve.py and eval.py read it (nanogpt/generation/int8_weights.py)."""
    return setting(
        "none",
        "'none', or 'int8': each matrix stored as int8 with a scale per output row (a quarter of float32's "
        "bytes to read per token), its matmuls in --dtype; auto is then bfloat16 on the CPU",
        choices=("none", "int8"),
    )


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


TRAIN_KEYS = frozenset(f.name for f in fields(TrainSettings))  # a training config's keys (bench.py reads such files)


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
    quantize: str = quantize_setting()
