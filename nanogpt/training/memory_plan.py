"""How much memory a training step needs, worked out from the model's shape before anything is
allocated; the free memory of the device; and, when it does not fit, the switches that would.

Bytes a parameter (references/training.md, "Memory"):
    weights      4 (float32; autocast makes the bf16 copies of a layer as it runs), but a LoRA run's
                 frozen base is held in the training dtype (2 in bf16 / fp16) and only the adapters in 4
    gradients    4 for each parameter that trains (a LoRA run: the adapters alone)
    optimizer    AdamW 8 (two float32 moments); Muon 4 for its matrices (one momentum), AdamW's 8 for
                 the rest; Adafactor one row and one column a matrix, so almost nothing
Activations: what the forward pass keeps for the backward, per block about 18.5 numbers of B x T x n_embd
in the activation dtype and 2 in float32 (the residual stream), plus the output head's logits (several
B x T x vocab copies; fused_loss keeps a slice); activation checkpointing keeps each block's input and
one block's worth for its recomputation. FSDP divides weights, gradients and optimizer state by the
number of processes.
The peak: gradients are made while activations are freed, so a step peaks at weights + optimizer state
+ the larger of the two; with gradient accumulation the next micro-batch's activations stand beside
the gradients, and it peaks at the sum. (Adafactor's step adds two temporaries of its largest matrix.)
These are the bytes of the tensors; an allocator holds more: on the CPU, train.py's heap (see
nanogpt/system.py: keep_freed_memory) keeps what it frees for the next step (bench/README.md).
"""

import math
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from nanogpt.errors import SettingError
from nanogpt.lora import LORA_LAYERS
from nanogpt.model import GPT
from nanogpt.training.optimizers import unused_settings

SUGGESTED_LORA_RANK = 16


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes of one process's training step, and what the device has free (None where unknown)."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    peak: int
    parameters: int  # all of the model's
    trained: int  # those that get gradients
    free: int | None
    device: str


def model_shapes(config):
    """{name: shape} of the parameters GPT(config) has (a tied head counted once): the model itself,
    built on the meta device, which allocates nothing, so every switch counts as the model has it."""
    try:
        with torch.device("meta"):
            model = GPT(config)
    except RuntimeError as e:  # "Storage size calculation overflowed": no tensor can have this shape
        raise SettingError(
            f"a training step needs about {gib(2**63)} or more: a weight of this shape would have more bytes than"
            " a tensor can hold; make the model smaller (--n_embd, --n_layer, --block_size)"
        ) from e
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def lora_shapes(shapes, cfg):
    """{name: shape} of the LoRA adapters (A: rank x in, B: out x rank) of the targeted layers."""
    adapters = {}
    for name, (out_features, in_features) in (
        (n, s) for n, s in shapes.items() if n.endswith(".weight") and len(s) == 2
    ):
        layer = name[: -len(".weight")]
        if layer.startswith("transformer.h.") and layer.endswith(LORA_LAYERS[cfg.lora_targets]):
            adapters[f"{layer}.lora_A"] = (cfg.lora_rank, in_features)
            adapters[f"{layer}.lora_B"] = (out_features, cfg.lora_rank)
    return adapters


def optimizer_bytes(shapes, optimizer):
    """Optimizer state of the parameters `shapes` (see the module's table)."""
    if optimizer == "adafactor":
        return sum(4 * (sum(s) if len(s) >= 2 else math.prod(s)) for s in shapes.values())
    if optimizer == "muon":  # the blocks' matrices: one momentum; the rest: AdamW
        return sum(
            (4 if name.startswith("transformer.h.") and len(s) == 2 else 8) * math.prod(s) for name, s in shapes.items()
        )
    return sum(8 * math.prod(s) for s in shapes.values())


def activation_bytes(config, cfg, dtype, device_type):
    """What one micro-batch's forward pass keeps for the backward, and the output head's gradients at
    the start of the backward (see the module; the counts are of torch 2.13's saved tensors, measured
    with saved-tensor hooks)."""
    B, T, C, V = cfg.batch_size, min(cfg.block_size, config.block_size), config.n_embd, config.vocab_size
    act = 4 if dtype == "float32" else 2
    per_token = 18.5 * act + 8  # bytes per channel of a block: 82 in float32, 45 under bfloat16 autocast
    per_token += 14 * config.qk_norm + 3 * act * config.rotary + 8 * config.rmsnorm
    if cfg.dropout > 0:
        per_token += 2 * (act if device_type == "cpu" else 1)  # a mask each for two dropouts a block
    if cfg.lora_rank and cfg.lora_dropout > 0:  # each adapter's dropped-out copy of its layer's input (and mask)
        per_token += sum(4 if layer == "mlp.c_proj" else 1 for layer in LORA_LAYERS[cfg.lora_targets]) * (act + 0.5)
    per_block = B * T * C * per_token
    if cfg.dropout > 0 and device_type == "cpu":
        # cpu_dropout's attention keeps its mask: a byte a score it computes
        per_block += B * config.n_head * T * T * 5 // 8
    if cfg.activation_checkpointing:
        blocks = config.n_layer * B * T * C * 4 + per_block  # the blocks' inputs, and one block recomputed
    else:
        blocks = config.n_layer * per_block
    embeddings = B * T * C * 8.5  # the embeddings' sum and the final norm's input and output
    if cfg.fused_loss:  # a slice of logits at a time; the head's gradients are kept from the forward pass
        head = B * T * C * 4 + V * C * 4 + min(B * T, 4096) * V * (8.5 if act == 4 else 10.5)
    else:  # the log-softmax kept, and in the backward the gradients of it and of the logits (measured)
        head = B * T * V * (16 if act == 4 else 18.5)
    return int(blocks + embeddings + head)


def available_memory(device):
    """Bytes free for this process: its GPU's free memory, or its share of the machine's available RAM
    (Linux; the processes of a run on one machine share it); None where unknown."""
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info(torch.device(device))[0]
    meminfo = Path("/proc/meminfo")
    if device == "cpu" and sys.platform.startswith("linux") and meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 // int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return None


def plan_memory(config, cfg, dtype, device, world_size=1, free=None):
    """The MemoryPlan of training `config` (a GPTConfig: the shape) with cfg's choices (batch, dtype,
    optimizer, LoRA, checkpointing, fused_loss, fsdp)."""
    shapes = model_shapes(config)
    n_params = sum(math.prod(s) for s in shapes.values())
    if cfg.lora_rank:
        trained = lora_shapes(shapes, cfg)
        n_trained = sum(math.prod(s) for s in trained.values())
        weights = n_params * (4 if dtype == "float32" else 2) + n_trained * 4
    else:
        trained, n_trained, weights = shapes, n_params, n_params * 4
    gradients, optimizer = n_trained * 4, optimizer_bytes(trained, cfg.optimizer)
    if cfg.fsdp:
        weights, gradients, optimizer = (-(-b // world_size) for b in (weights, gradients, optimizer))
    activations = activation_bytes(config, cfg, dtype, device.split(":")[0])
    accumulating = cfg.gradient_accumulation_steps // world_size > 1
    # Adafactor works a matrix at a time through full-size temporaries: about two of the largest
    step_temporaries = 8 * max(math.prod(s) for s in trained.values()) if cfg.optimizer == "adafactor" else 0
    backward = gradients + activations if accumulating else activations
    peak = weights + optimizer + max(backward, gradients + step_temporaries)
    return MemoryPlan(weights, gradients, optimizer, activations, peak, n_params, n_trained, free, device)


def gib(n):
    """Bytes as GiB, or MiB below one GiB."""
    return f"{n / 2**30:,.2f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


def plan_table(plan, cfg, dtype):
    """The plan as a few lines for the log."""
    trained = f"{plan.trained / 1e6:,.2f}M of them train" if plan.trained != plan.parameters else "all train"
    free = (
        f"; {gib(plan.free)} free on {plan.device}"
        if plan.free is not None
        else f"; free memory of {plan.device} unknown"
    )
    return "\n".join(
        [
            f"memory plan, per process ({plan.parameters / 1e6:,.2f}M parameters, {trained}; {dtype}):",
            f"  weights      {gib(plan.weights):>12}",
            f"  gradients    {gib(plan.gradients):>12}",
            f"  optimizer    {gib(plan.optimizer):>12}  ({cfg.optimizer})",
            f"  activations  {gib(plan.activations):>12}  (one micro-batch, {cfg.batch_size} x "
            f"{cfg.block_size} tokens)",
            f"  peak         {gib(plan.peak):>12}{free}",
        ]
    )


def remedies(cfg, pretrained):
    """(flags, settings) that lower a step's memory: each switch alone, then all of them together."""
    switches = []
    if pretrained and not cfg.lora_rank:
        switches.append(
            dict(
                lora_rank=SUGGESTED_LORA_RANK,
                **({"optimizer": "adamw", **unused_settings(cfg, "adamw")} if cfg.optimizer == "muon" else {}),
            )
        )
    if not cfg.activation_checkpointing:
        switches.append(dict(activation_checkpointing=True))
    if cfg.optimizer != "adafactor" and not cfg.lora_rank:  # a LoRA run's optimizer state is small anyway
        switches.append(dict(optimizer="adafactor", **unused_settings(cfg, "adafactor")))  # its unused betas reset
    if not cfg.fused_loss:
        switches.append(dict(fused_loss=True))
    if len(switches) > 1:
        together = {k: v for switch in switches for k, v in switch.items()}
        if "lora_rank" in together:
            together["optimizer"] = switches[0].get("optimizer", cfg.optimizer)
        switches.append(together)
    return [(" ".join(f"--{k}={v}" for k, v in s.items() if getattr(cfg, k) != v), replace(cfg, **s)) for s in switches]


def check_memory_plan(plan, config, cfg, dtype, world_size, pretrained):
    """Refuse, in one sentence, a step that needs more than the device has free, naming what would fit."""
    if plan.free is None or plan.peak <= plan.free or cfg.memory_check == "off":
        return
    options = []
    for flags, changed in remedies(cfg, pretrained):
        peak = plan_memory(config, changed, dtype, plan.device, world_size).peak
        if peak < plan.peak:  # e.g. checkpointing a single block, or fused_loss on a small vocabulary, saves nothing
            options.append(f"{flags} ({gib(peak)}{'' if peak <= plan.free else ', still too much'})")
    message = (
        f"a training step needs about {gib(plan.peak)} (weights {gib(plan.weights)}, gradients {gib(plan.gradients)},"
        f" optimizer {gib(plan.optimizer)}, activations {gib(plan.activations)}) but {plan.device} has "
        f"{gib(plan.free)} free"
        + (f"; these need less: {'; '.join(options)}" if options else "")
        + "; or lower --batch_size (raising --gradient_accumulation_steps by the same factor)"
    )
    if cfg.memory_check == "warn":
        print(f"warning: {message}; going on (memory_check='warn')")
        return
    raise SettingError(message + ", or pass --memory_check=warn to start anyway")


def check_memory(shape, cfg, dtype, procs, pretrained):
    """Print the plan of training `shape` (rank 0) and stop if the device cannot hold it."""
    plan = plan_memory(shape, cfg, dtype, procs.device, procs.world_size, available_memory(procs.device))
    if procs.master:
        print(plan_table(plan, cfg, dtype))
    check_memory_plan(plan, shape, cfg, dtype, procs.world_size, pretrained)
