"""Muon with its Newton–Schulz iterations batched over every matrix of one shape.

torch.optim.Muon orthogonalises one matrix at a time: for a GPT block's six matrices and five
iterations that is dozens of small matmul launches per block per step, which leaves a GPU waiting on
Python. The blocks' matrices come in a few shapes (GPT-2: 4 of them), so stacking the updates of one
shape and iterating on the stack does the same arithmetic in a handful of batched launches. The
settings and the optimizer state are torch.optim.Muon's own, so checkpoints of either resume with
the other.
"""

import math

import torch


def orthogonalize(updates, coefficients, steps, eps, dtype=torch.bfloat16):
    """Newton–Schulz on a stack of matrices (k, m, n): each one's update pushed towards U V^T of its
    SVD, as torch.optim.Muon does one matrix at a time (quintic iteration, Keller Jordan's
    coefficients). bfloat16 is the usual precision; float32 is for checking."""
    a, b, c = coefficients
    x = updates.to(dtype)
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the wide orientation: its Gram matrix is the smaller one
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # spectral norm at most 1
    for _ in range(steps):
        gram = x @ x.mT
        gram_update = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.baddbmm(x, gram_update, x, beta=a)
    return x.mT if tall else x


def orthogonalize_shared(updates, *args):
    """orthogonalize() of a stack, the work split between the processes of a DDP run: every process
    holds the same (all-reduced) updates, orthogonalises its share of the matrices, and all gather the
    results, so N processes do 1/N of it each."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return orthogonalize(updates, *args)
    world, rank = dist.get_world_size(), dist.get_rank()
    share = -(-len(updates) // world)
    # zero matrices pad the stack to equal shares; they stay zero and are dropped after the gather
    padded = torch.cat([updates, updates.new_zeros(share * world - len(updates), *updates.shape[1:])])
    mine = orthogonalize(padded[rank * share : (rank + 1) * share], *args).contiguous()
    gathered = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(gathered, mine)
    return torch.cat(gathered)[: len(updates)]


def lr_scale(shape, adjust_lr_fn):
    """torch.optim.Muon's per-shape rate adjustment."""
    rows, cols = shape[:2]
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return math.sqrt(max(1, rows / cols))  # "original" (and None)


class BatchedMuon(torch.optim.Muon):
    """torch.optim.Muon's update, with the orthogonalisation batched by shape and, under DDP, split
    between the processes. (FSDP, where each process holds only a shard of each matrix, is refused.)
    ns_dtype, a param group setting (so checkpoints keep it): the Newton–Schulz iterations' number
    format, torch.optim.Muon's bfloat16 by default, float32 where bfloat16 matmuls are slow."""

    def __init__(self, params, ns_dtype="bfloat16", **settings):
        super().__init__(params, **settings)
        for group in self.param_groups:
            group.setdefault("ns_dtype", ns_dtype)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            buffers = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
                buffers.append(state["momentum_buffer"])
            momentum = group["momentum"]
            torch._foreach_lerp_(buffers, grads, 1 - momentum)
            updates = torch._foreach_lerp(grads, buffers, momentum) if group["nesterov"] else buffers
            lr = float(group["lr"])
            if group["weight_decay"]:
                torch._foreach_mul_(params, 1 - lr * group["weight_decay"])
            by_shape = {}
            for p, update in zip(params, updates):
                by_shape.setdefault(tuple(p.shape), []).append((p, update))
            for shape, pairs in by_shape.items():
                ortho = orthogonalize_shared(
                    torch.stack([u for _, u in pairs]),
                    group["ns_coefficients"],
                    group["ns_steps"],
                    group["eps"],
                    getattr(torch, group.get("ns_dtype", "bfloat16")),  # checkpoints from before ns_dtype: bfloat16
                )
                torch._foreach_add_(
                    [p for p, _ in pairs], list(ortho.unbind(0)), alpha=-lr * lr_scale(shape, group["adjust_lr_fn"])
                )
        return loss
