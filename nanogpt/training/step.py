"""One optimizer step, the same in train.py and in bench.py's timing of it, and the statistics it
returns by name: train.py's log records every one of them (metrics.jsonl, wandb), so a new metric is
one more entry where it is computed here."""

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch


def single_process_sync(last_micro_step):
    return contextlib.nullcontext()


@dataclass
class TrainingStep:
    """What a run's optimizer steps work with, fixed from its set-up to its end.

    gradient_sync(last_micro_step) is a context for each micro-batch (DDP reduces gradients only after
    the last); fused_loss, see nanogpt/fused_loss.py; grad_clip 0 leaves the gradients as they are."""

    model: torch.nn.Module
    optimizers: list
    scaler: torch.amp.GradScaler
    ctx: object = contextlib.nullcontext()  # autocast for the forward pass
    grad_accum: int = 1
    grad_clip: float = 0.0
    gradient_sync: Callable = single_process_sync
    fused_loss: bool = False

    def __call__(self, batch, draw_next):
        """grad_accum micro-batches forward and backward, clipping, every optimizer's step. batch is the
        first micro-batch; draw_next() gives the next one, drawn while the GPU works on the current one.
        Returns the step's statistics ({name: a scalar tensor}: reading one waits for the GPU, so the
        loop reads them only when it logs) and the batch the following step starts with."""
        X, Y = batch
        for micro_step in range(self.grad_accum):
            with self.gradient_sync(micro_step == self.grad_accum - 1):
                with self.ctx:
                    _, loss = self.model(X, Y, fused_loss=self.fused_loss)
                X, Y = draw_next()
                # the gradients sum over micro-batches; average them
                self.scaler.scale(loss / self.grad_accum).backward()
        stats = {"loss": loss.detach()}  # the last micro-batch's
        if self.grad_clip != 0.0:
            for optimizer in self.optimizers:
                self.scaler.unscale_(optimizer)
            stats["grad_norm"] = full_value(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip))
        for optimizer in self.optimizers:
            self.scaler.step(optimizer)
        self.scaler.update()
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        return stats, (X, Y)


def full_value(statistic):
    """A statistic as a plain tensor: under FSDP a norm of sharded gradients is a DTensor, gathered here,
    where every process takes part (the loop reads it on rank 0 alone)."""
    return statistic.full_tensor() if hasattr(statistic, "full_tensor") else statistic
