"""The optimizers a GPT trains with: AdamW, or Muon for the blocks' matrices with AdamW for the rest."""

import inspect

import torch

from nanogpt.config import TrainSettings
from nanogpt.system import bfloat16_matmul_speed
from nanogpt.training.muon import BatchedMuon


# the settings each optimizer reads besides learning_rate and weight_decay: another's, set away from its
# default, would go unused, so train.py refuses it (unused_settings)
OPTIMIZER_SETTINGS = {
    "adamw": ("beta1", "beta2"),
    "muon": ("beta1", "beta2", "muon_lr", "muon_dtype"),
    "adafactor": (),  # no first moment; its second moment's decay is its own schedule
}


def unused_settings(cfg, optimizer=None):
    """{key: its default} of the settings cfg sets away from their defaults that `optimizer` (cfg's own
    unless given) does not read."""
    defaults, optimizer = TrainSettings(), optimizer or cfg.optimizer
    others = sorted({k for keys in OPTIMIZER_SETTINGS.values() for k in keys} - set(OPTIMIZER_SETTINGS[optimizer]))
    return {k: getattr(defaults, k) for k in others if getattr(cfg, k) != getattr(defaults, k)}


def make_optimizers(
    model, weight_decay, learning_rate, betas, device_type, optimizer="adamw", muon_lr=0.02, ns_dtype="bfloat16"
):
    """A list of optimizers. Each param group keeps its peak rate in 'base_lr'; the schedule scales it.

    adamw: AdamW for everything; matrices are decayed, biases and norm gains are not.
    muon: Muon for the 2-D weight matrices inside the blocks (it orthogonalises each update, so
    every direction of a matrix learns at the same rate), AdamW for embeddings, head and vectors;
    ns_dtype is its Newton–Schulz number format (see newton_schulz_dtype).
    adafactor: torch's Adafactor for everything, for when memory is short: it keeps no first moment and
    a matrix's second moment as one row and one column, almost no state against AdamW's 8 bytes a
    parameter. Its step is relative: lr times the RMS of the weight it changes.
    Only parameters that require gradients are optimised (a LoRA run's adapters).
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    hidden_matrices = [p for n, p in named if n.startswith("transformer.h.") and p.dim() == 2]
    muon_params = hidden_matrices if optimizer == "muon" else []
    in_muon = {id(p) for p in muon_params}
    adam_params = [p for _, p in named if id(p) not in in_muon]
    groups = [
        {"params": [p for p in adam_params if p.dim() >= 2], "weight_decay": weight_decay, "base_lr": learning_rate},
        {"params": [p for p in adam_params if p.dim() < 2], "weight_decay": 0.0, "base_lr": learning_rate},
    ]
    if optimizer == "adafactor":
        return [torch.optim.Adafactor(groups, lr=learning_rate)]
    # the fused kernel updates every tensor in one pass instead of a dozen small ops per tensor
    # (on a 2-core CPU it cut the optimizer step from 1.8 to 0.6 ms for the CPU config's model)
    use_fused = device_type in ("cuda", "cpu") and "fused" in inspect.signature(torch.optim.AdamW).parameters
    extra = dict(fused=True) if use_fused else dict()
    optimizers = [torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **extra)]
    if muon_params:
        # Keller Jordan's scaling ("original"), for which lr ~0.02 is the usual choice; no weight decay.
        # torch.optim.Muon's update, with the matrices of one shape orthogonalised together (muon.py)
        muon = BatchedMuon(muon_params, ns_dtype, lr=muon_lr, weight_decay=0.0, adjust_lr_fn="original")
        muon.param_groups[0]["base_lr"] = muon_lr
        optimizers.append(muon)
    return optimizers


def newton_schulz_dtype(setting, device, checkpoint=None):
    """(Muon's Newton–Schulz number format, why): the setting when it names one; else the one a resumed
    run's checkpoint used (another choice would break an exact resume); else bfloat16 where its matmuls
    run at least about as fast as float32 ones (GPUs, CPUs with AVX-512 BF16 or AMX), float32 elsewhere."""
    if setting != "auto":
        return setting, "as muon_dtype says"
    saved = checkpoint["optimizer"] if checkpoint is not None else []
    if isinstance(saved, list) and len(saved) > 1:  # AdamW's state and Muon's (bfloat16 before the choice)
        return saved[1]["param_groups"][0].get("ns_dtype", "bfloat16"), "as the checkpoint's run chose"
    speed = bfloat16_matmul_speed(device)
    return ("bfloat16" if speed >= 0.8 else "float32"), f"bfloat16 matmuls run {speed:.2f}x float32's speed here"


def run_optimizers(cfg, procs, model, checkpoint):
    """A training run's optimizers (cfg: train.py's settings); with Muon, its Newton-Schulz number
    format chosen and said, the same in every process."""
    ns_dtype, why = (
        newton_schulz_dtype(cfg.muon_dtype, procs.device, checkpoint) if cfg.optimizer == "muon" else ("bfloat16", "")
    )
    ns_dtype = procs.first(ns_dtype)  # as rank 0 chose: a measured choice could differ between processes
    if procs.master and why:
        print(f"muon: Newton-Schulz in {ns_dtype} ({why})")
    return make_optimizers(
        model,
        cfg.weight_decay,
        cfg.learning_rate,
        (cfg.beta1, cfg.beta2),
        procs.device_type,
        cfg.optimizer,
        cfg.muon_lr,
        ns_dtype,
    )
