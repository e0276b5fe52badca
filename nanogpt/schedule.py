"""Learning-rate schedules, as functions of the iteration number."""

import math


def cosine_lr(it, learning_rate, min_lr, warmup_iters, lr_decay_iters):
    """Linear warmup to learning_rate, cosine decay to min_lr at lr_decay_iters, then flat."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    progress = (it - warmup_iters) / max(1, lr_decay_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * progress))  # goes 1 -> 0
    return min_lr + coeff * (learning_rate - min_lr)
