"""Time the training step alone, without the training script's extras: ms/iter, tokens/s, MFU.

    python bench.py                                   # GPT-2 124M, batch 12 x 1024, OpenWebText batches
    python bench.py --real_data=False --batch_size=1 --block_size=256 --device=cpu   # random tokens, CPU-sized
    python bench.py --compile=True --dtype=bfloat16   # on a GPU
    python bench.py config/train_gpt2_modern.py --real_data=False --gradient_accumulation_steps=1   # a config's step

Same --key=value settings as train.py (python bench.py --help); a training config's other keys (out_dir,
learning rates, schedule) do not change the step's cost and are left out.
"""

import sys
import time
from dataclasses import dataclass
from typing import Optional

import nanogpt  # noqa: F401  first: a Ctrl-C while torch loads ends in one line (nanogpt/__init__.py)
import torch

from nanogpt.command_line import load_config, setting
from nanogpt.config import DTYPES, TRAIN_KEYS, as_train_settings, gpt_config, train_setting, with_model_switches
from nanogpt.data import Dataset
from nanogpt.errors import DataError, run_main
from nanogpt.lora import add_adapters, adapters_note, check_peft, lora_record
from nanogpt.model import GPT, architecture_switches
from nanogpt.system import (
    attention_kernel,
    autocast_context,
    check_attention_kernel,
    check_fp8,
    compile_model,
    current_memory_mb,
    float8_training,
    keep_freed_memory,
    peak_flops,
    peak_memory_mb,
    reset_peak_memory,
    resolve_device,
    resolve_dtype,
)
from nanogpt.tokenizer import model_vocab_size
from nanogpt.training.memory_plan import available_memory, plan_memory, plan_table
from nanogpt.training.optimizers import make_optimizers, newton_schulz_dtype
from nanogpt.training.step import TrainingStep


@dataclass
@with_model_switches  # rotary, rmsnorm, ...: GPTConfig's switches, as train.py takes them
class BenchSettings:
    batch_size: int = setting(12, "sequences per step", within="[1, inf)")
    block_size: int = setting(1024, "tokens per sequence", within="[1, inf)")
    n_layer: int = setting(12, "transformer blocks (GPT-2 124M: 12)", within="[1, inf)")
    n_head: int = setting(12, "attention heads", within="[1, inf)")
    n_embd: int = setting(768, "embedding width", within="[1, inf)")
    bias: bool = setting(False, "biases in Linear and LayerNorm layers")
    dropout: float = setting(0.0, "dropout rate (the spec's char model trains with 0.2)", within="[0, 1)")
    gradient_accumulation_steps: int = setting(1, "micro-batches per step, as train.py's", within="[1, 100000]")
    grad_clip: float = setting(
        1.0, "clip the gradient norm at this value (0: no clipping), as train.py", within="[0, inf)"
    )
    optimizer: str = train_setting("optimizer")
    real_data: bool = setting(True, "draw batches from data_dir/dataset/train.bin; False: random tokens")
    dataset: str = setting("openwebtext", "prepared dataset to draw batches from")
    data_dir: str = setting("data", "folder holding the dataset folders")
    warmup_iters: int = setting(10, "untimed steps first (compilation, allocator warm-up)", within="[0, inf)")
    iters: int = setting(20, "timed steps", within="[1, inf)")
    device: str = setting("auto", "'auto' (cuda, then mps, then cpu), or e.g. 'cpu', 'cuda'")
    dtype: str = setting("auto", "'auto', 'float32', 'bfloat16' or 'float16'", choices=DTYPES)
    compile: Optional[bool] = setting(None, "torch.compile; None means on for CUDA only")
    muon_lr: float = train_setting("muon_lr")
    muon_dtype: str = train_setting("muon_dtype")
    attention: str = train_setting("attention")
    fused_loss: bool = train_setting("fused_loss")
    fp8: bool = train_setting("fp8")
    activation_checkpointing: bool = train_setting("activation_checkpointing")
    lora_rank: int = setting(
        0,
        "LoRA adapters of this rank on every block (on random weights, frozen), as a fine-tune with lora_rank trains",
        within="[0, 65536]",
    )
    lora_alpha: float = train_setting("lora_alpha")
    lora_targets: str = train_setting("lora_targets")
    lora_dropout: float = train_setting("lora_dropout")
    seed: int = setting(1337, "random seed")


def read_settings(argv):
    """The settings, refused in one sentence if they cannot work, before any data or model loads."""
    cfg = load_config(BenchSettings, argv, script="bench.py", ignored_keys=TRAIN_KEYS)
    gpt_config(cfg, vocab_size=50304)  # the model's own shape checks, without building it
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    if cfg.fp8:
        check_fp8(device, dtype)
    check_attention_kernel(cfg.attention, device)
    if cfg.lora_rank:
        check_peft()
    return cfg


def batch_source(cfg, device):
    """(the vocabulary size, a function giving the next batch): the dataset's batches, or one batch of
    random tokens again and again."""
    if not cfg.real_data:
        x, y = (torch.randint(50304, (cfg.batch_size, cfg.block_size), device=device) for _ in range(2))
        return 50304, lambda: (x, y)
    try:
        data = Dataset(cfg.data_dir, cfg.dataset)
    except DataError as e:
        raise DataError(f"{e}, or time random tokens with --real_data=False") from None
    data.check_length(cfg.block_size)
    generator = torch.Generator().manual_seed(cfg.seed)
    # the vocabulary padded as train.py pads it
    return model_vocab_size(data.meta), lambda: data.get_batch(
        "train", cfg.batch_size, cfg.block_size, device, generator
    )


def build(cfg, device, dtype, vocab_size):
    """The model as train.py builds it (its memory plan first), its optimizers, and a line about what
    differs from GPT-2."""
    plan_settings = as_train_settings(cfg)
    print(
        plan_table(
            plan_memory(gpt_config(cfg, vocab_size), plan_settings, dtype, device, free=available_memory(device)),
            plan_settings,
            dtype,
        )
    )
    model = GPT(gpt_config(cfg, vocab_size))
    if cfg.lora_rank:
        add_adapters(model, lora_record(cfg, "random weights"), getattr(torch, dtype))
    model.to(device)
    if cfg.fp8:
        print(f"fp8: {float8_training(model)} Linear layers run their matmuls in float8")
    ns_dtype, why = newton_schulz_dtype(cfg.muon_dtype, device) if cfg.optimizer == "muon" else ("bfloat16", "")
    optimizers = make_optimizers(
        model, 0.1, 1e-4, (0.9, 0.95), device.split(":")[0], cfg.optimizer, cfg.muon_lr, ns_dtype
    )
    print(
        f"{model.get_num_params() / 1e6:.1f}M parameters{adapters_note(model)}, "
        f"{cfg.gradient_accumulation_steps} x {cfg.batch_size} x {cfg.block_size} tokens a step,"
        f" optimizer {cfg.optimizer}, device {device}, dtype {dtype}"
        + (f"; Newton-Schulz in {ns_dtype} ({why})" if why else "")
    )
    switches = [f.name for f in architecture_switches()] + ["attention", "fused_loss", "activation_checkpointing"]
    changed = [
        f"{key}={getattr(cfg, key)}"
        for key in switches
        if getattr(cfg, key) != BenchSettings.__dataclass_fields__[key].default
    ]
    if changed:
        print(f"changed from GPT-2: {', '.join(changed)}")
    return model, optimizers


def time_steps(cfg, model, optimizers, device, dtype, get_batch):
    """Seconds of cfg.iters of train.py's own step, after cfg.warmup_iters untimed ones."""
    step_model = compile_model(model, cfg.compile, device)
    ctx = autocast_context(device, dtype)
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=(dtype == "float16"))

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    step = TrainingStep(
        step_model,
        optimizers,
        scaler,
        ctx=ctx,
        grad_accum=cfg.gradient_accumulation_steps,
        grad_clip=cfg.grad_clip,
        fused_loss=cfg.fused_loss,
    )
    batch = get_batch()
    for stage, steps in (("warm-up", cfg.warmup_iters), ("timed", cfg.iters)):
        sync()
        reset_peak_memory(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            # no .item() inside the timed loop, which would wait for the GPU
            stats, batch = step(batch, get_batch)
        sync()
        seconds = time.perf_counter() - t0
        if steps:
            print(f"{stage}: {steps} steps, last loss {stats['loss'].item():.6f}")
    return seconds


def main():
    cfg = read_settings(sys.argv[1:])
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    if device == "cpu":
        keep_freed_memory()  # as train.py does
    torch.manual_seed(cfg.seed)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    vocab_size, get_batch = batch_source(cfg, device)
    memory_before = current_memory_mb(device)
    model, optimizers = build(cfg, device, dtype, vocab_size)
    with attention_kernel(cfg.attention):
        seconds = time_steps(cfg, model, optimizers, device, dtype, get_batch)
    tokens = cfg.gradient_accumulation_steps * cfg.batch_size * cfg.block_size
    achieved = model.estimate_flops_per_token() * tokens * cfg.iters / seconds
    print(
        f"time per iteration: {seconds / cfg.iters * 1000:.2f} ms, {tokens * cfg.iters / seconds:,.0f} "
        f"tokens/s, {achieved / 1e12:.3f} TFLOPS achieved"
    )
    peak_mb = peak_memory_mb(device)
    print(
        f"peak memory of the timed steps: {peak_mb:,.0f} MiB "
        f"({'allocated by torch' if device.startswith('cuda') else 'resident set'}),"
        f" {peak_mb - memory_before:,.0f} MiB above the process before the model was built"
    )
    peak = peak_flops(device)
    if peak is None:
        print(f"MFU: n/a (no peak FLOPS known for {device})")
    elif device == "cpu":
        print(f"MFU: {achieved / peak * 100:.1f}% of this CPU's measured float32 matmul peak, {peak / 1e9:.0f} GFLOPS")
    else:
        print(f"MFU: {achieved / peak * 100:.1f}% of {peak / 1e12:.0f} TFLOPS")


if __name__ == "__main__":
    run_main(main)
