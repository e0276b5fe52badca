"""Learning-rate schedules, as functions of the iteration number, and the rate a run's settings give."""

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


def wsd_lr(it, learning_rate, min_lr, warmup_iters, lr_decay_iters, decay_fraction):
    """Warmup-stable-decay: linear warmup, flat at learning_rate, then a linear decay to min_lr over
    the last decay_fraction of lr_decay_iters. The long flat stretch learns fast; the short decay
    at the end collects the gain."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    decay_start = lr_decay_iters * (1 - decay_fraction)
    if it < decay_start:
        return learning_rate
    if it >= lr_decay_iters:
        return min_lr
    progress = (it - decay_start) / (lr_decay_iters - decay_start)
    return learning_rate + progress * (min_lr - learning_rate)


def learning_rate(cfg, it):
    """AdamW's learning rate at step it; every param group is scaled by the same factor."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    if cfg.lr_schedule == "wsd":
        return wsd_lr(it, cfg.learning_rate, cfg.min_lr, cfg.warmup_iters, cfg.lr_decay_iters, cfg.decay_fraction)
    return cosine_lr(it, cfg.learning_rate, cfg.min_lr, cfg.warmup_iters, cfg.lr_decay_iters)


def set_learning_rate(optimizers, cfg, it):
    """Set every param group's rate for step it; returns AdamW's."""
    lr = learning_rate(cfg, it)
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * (lr / cfg.learning_rate if cfg.learning_rate else 0.0)
    return lr
