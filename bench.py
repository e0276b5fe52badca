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

import torch

from nanogpt.config import DTYPES, load_config, setting, train_setting
from nanogpt.data import Dataset
from nanogpt.errors import UserError, run_main
from nanogpt.model import ARCHITECTURE_SWITCHES, GPT, ConfigError, GPTConfig
from nanogpt.step import training_step
from nanogpt.system import (
    autocast_context, check_fp8, choose_attention_kernel, compile_model, float8_training, keep_freed_memory, peak_flops,
    peak_memory_mb, reset_peak_memory, resolve_device, resolve_dtype,
)
from nanogpt.tokenizer import model_vocab_size


@dataclass
class BenchConfig:
    batch_size: int = setting(12, "sequences per step", within="[1, inf)")
    block_size: int = setting(1024, "tokens per sequence", within="[1, inf)")
    n_layer: int = setting(12, "transformer blocks (GPT-2 124M: 12)", within="[1, inf)")
    n_head: int = setting(12, "attention heads", within="[1, inf)")
    n_embd: int = setting(768, "embedding width", within="[1, inf)")
    bias: bool = setting(False, "biases in Linear and LayerNorm layers")
    dropout: float = setting(0.0, "dropout rate (the spec's char model trains with 0.2)", within="[0, 1)")
    gradient_accumulation_steps: int = setting(1, "micro-batches per step, as train.py's", within="[1, 100000]")
    grad_clip: float = setting(1.0, "clip the gradient norm at this value (0: no clipping), as train.py", within="[0, inf)")
    optimizer: str = setting("adamw", "'adamw', or 'muon' for the blocks' matrices (AdamW for the rest)", choices=("adamw", "muon"))
    real_data: bool = setting(True, "draw batches from data_dir/dataset/train.bin; False: random tokens")
    dataset: str = setting("openwebtext", "prepared dataset to draw batches from")
    data_dir: str = setting("data", "folder holding the dataset folders")
    warmup_iters: int = setting(10, "untimed steps first (compilation, allocator warm-up)", within="[0, inf)")
    iters: int = setting(20, "timed steps", within="[1, inf)")
    device: str = setting("auto", "'auto' (cuda, then mps, then cpu), or e.g. 'cpu', 'cuda'")
    dtype: str = setting("auto", "'auto', 'float32', 'bfloat16' or 'float16'", choices=DTYPES)
    compile: Optional[bool] = setting(None, "torch.compile; None means on for CUDA only")
    rotary: bool = train_setting("rotary")
    rmsnorm: bool = train_setting("rmsnorm")
    qk_norm: bool = train_setting("qk_norm")
    relu2: bool = train_setting("relu2")
    tie_embeddings: bool = train_setting("tie_embeddings")
    logit_softcap: float = train_setting("logit_softcap")
    zero_init_proj: bool = train_setting("zero_init_proj")
    muon_lr: float = train_setting("muon_lr")
    attention: str = train_setting("attention")
    fused_loss: bool = train_setting("fused_loss")
    fp8: bool = train_setting("fp8")
    seed: int = setting(1337, "random seed")


def model_config(cfg, vocab_size):
    return GPTConfig(
        n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size, bias=cfg.bias,
        vocab_size=vocab_size, dropout=cfg.dropout, **{key: getattr(cfg, key) for key in ARCHITECTURE_SWITCHES},
    )


def read_settings(argv):
    """The settings, refused in one sentence if they cannot work, before any data or model loads."""
    cfg = load_config(BenchConfig, argv, script="bench.py", ignore_train_keys=True)
    try:
        model_config(cfg, vocab_size=50304)
    except ConfigError as e:  # the model's own shape checks, without building it
        raise UserError(str(e)) from None
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    if cfg.fp8:
        check_fp8(device, dtype)
    choose_attention_kernel(cfg.attention, device)
    return cfg


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

    if cfg.real_data:
        try:
            data = Dataset(cfg.data_dir, cfg.dataset)
        except UserError as e:
            raise UserError(f"{e}, or time random tokens with --real_data=False") from None
        data.check_length(cfg.block_size)
        vocab_size = model_vocab_size(data.meta)  # padded as train.py pads it
        generator = torch.Generator().manual_seed(cfg.seed)

        def get_batch():
            return data.get_batch("train", cfg.batch_size, cfg.block_size, device, generator)
    else:
        vocab_size = 50304
        x = torch.randint(vocab_size, (cfg.batch_size, cfg.block_size), device=device)
        y = torch.randint(vocab_size, (cfg.batch_size, cfg.block_size), device=device)

        def get_batch():
            return x, y

    model = GPT(model_config(cfg, vocab_size)).to(device)
    if cfg.fp8:
        print(f"fp8: {float8_training(model)} Linear layers run their matmuls in float8")
    optimizers = model.configure_optimizers(0.1, 1e-4, (0.9, 0.95), device.split(":")[0], cfg.optimizer, cfg.muon_lr)
    flops_per_step = model.estimate_flops_per_token() * cfg.gradient_accumulation_steps * cfg.batch_size * cfg.block_size
    print(
        f"{model.get_num_params() / 1e6:.1f}M parameters, {cfg.gradient_accumulation_steps} x {cfg.batch_size} x {cfg.block_size} tokens a step,"
        f" optimizer {cfg.optimizer}, device {device}, dtype {dtype}"
    )
    switches = (*ARCHITECTURE_SWITCHES, "attention", "fused_loss")
    changed = [f"{key}={getattr(cfg, key)}" for key in switches if getattr(cfg, key) != getattr(BenchConfig, key)]
    if changed:
        print(f"changed from GPT-2: {', '.join(changed)}")
    step_model = compile_model(model, cfg.compile, device)
    ctx = autocast_context(device, dtype)
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=(dtype == "float16"))

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    batch = get_batch()
    for stage, steps in (("warm-up", cfg.warmup_iters), ("timed", cfg.iters)):
        sync()
        reset_peak_memory(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            # train.py's step itself; no .item() inside the timed loop, which would wait for the GPU
            loss, batch = training_step(
                step_model, optimizers, scaler, ctx, cfg.gradient_accumulation_steps, cfg.grad_clip, batch, get_batch, fused_loss=cfg.fused_loss
            )
        sync()
        seconds = time.perf_counter() - t0
        if steps:
            print(f"{stage}: {steps} steps, last loss {loss.item() * cfg.gradient_accumulation_steps:.6f}")
    ms = seconds / cfg.iters * 1000
    tokens_per_sec = cfg.gradient_accumulation_steps * cfg.batch_size * cfg.block_size * cfg.iters / seconds
    achieved = flops_per_step * cfg.iters / seconds
    print(f"time per iteration: {ms:.2f} ms, {tokens_per_sec:,.0f} tokens/s, {achieved / 1e12:.3f} TFLOPS achieved")
    print(f"peak memory of the timed steps: {peak_memory_mb(device):,.0f} MiB ({'allocated by torch' if device.startswith('cuda') else 'resident set'})")
    peak = peak_flops(device)
    if peak is None:
        print(f"MFU: n/a (no peak FLOPS known for {device})")
    elif device == "cpu":
        print(f"MFU: {achieved / peak * 100:.1f}% of this CPU's measured float32 matmul peak, {peak / 1e9:.0f} GFLOPS")
    else:
        print(f"MFU: {achieved / peak * 100:.1f}% of {peak / 1e12:.0f} TFLOPS")


if __name__ == "__main__":
    run_main(main)
