"""One optimizer step, the same in train.py and in bench.py's timing of it."""

import contextlib

import torch


def single_process_sync(last_micro_step):
    return contextlib.nullcontext()


def training_step(
    model,
    optimizers,
    scaler,
    ctx,
    grad_accum,
    grad_clip,
    batch,
    draw_next,
    gradient_sync=single_process_sync,
    fused_loss=False,
):
    """grad_accum micro-batches forward and backward, clipping, every optimizer's step. batch is the
    first micro-batch; draw_next() gives the next one, drawn while the GPU works on the current one.
    gradient_sync(last_micro_step) is a context for each micro-batch (DDP reduces gradients only after
    the last); fused_loss, see nanogpt/fused_loss.py. Returns the last micro-batch's loss (a tensor: reading it
    waits for the GPU) and the batch the following step starts with."""
    X, Y = batch
    for micro_step in range(grad_accum):
        with gradient_sync(micro_step == grad_accum - 1):
            with ctx:
                _, loss = model(X, Y, fused_loss=fused_loss)
                loss = loss / grad_accum  # the gradients sum over micro-batches; average them
            X, Y = draw_next()
            scaler.scale(loss).backward()
    if grad_clip != 0.0:
        for optimizer in optimizers:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    for optimizer in optimizers:
        scaler.step(optimizer)
    scaler.update()
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    return loss, (X, Y)
