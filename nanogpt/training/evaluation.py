"""train.py's evaluations: the loss estimate (mean loss of both splits, and val bits per byte) and
multiple-choice accuracy (HellaSwag) every hellaswag_interval steps."""

import math
import time

import torch

from nanogpt.errors import DataError
from nanogpt.multiple_choice import Scores, accuracy, loglikelihoods, read_items, task_file
from nanogpt.tokenizer import tokenizer_from_meta


def format_duration(seconds):
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


@torch.no_grad()
def estimate_loss(model, data, ctx, token_bytes, cfg, device, stop_requested, announce=False):
    """Mean loss over cfg.eval_iters batches per split and val bits per byte, or None if stop_requested()
    came true first (an evaluation can take minutes; it is asked before every batch). The batches are
    the same at every eval (a fixed seed), so the curve shows the model changing, not the batches.
    announce: say after the first batch how long an evaluation takes, if that is long."""
    results = torch.zeros(3)  # train loss, val loss, val bits per byte
    model.eval()
    t0 = time.time()
    for i, split in enumerate(("train", "val")):
        generator = torch.Generator().manual_seed(cfg.seed + 1)
        losses, text_bytes = torch.zeros(cfg.eval_iters), torch.zeros((), dtype=torch.long, device=device)
        nats = torch.zeros((), device=device)
        for k in range(cfg.eval_iters):
            if stop_requested():
                model.train()
                return None
            X, Y = data.get_batch(split, cfg.batch_size, cfg.block_size, device, generator)
            with ctx:
                _, loss = model(X, Y)
            losses[k] = loss.item()
            if split == "val":  # a target of -1 (a chat dataset's prompt) is neither loss nor text
                counted = Y >= 0
                nats += loss.float() * counted.sum()
                text_bytes += (token_bytes[Y.clamp_min(0)] * counted).sum()
            if announce and i == k == 0:
                report_eval_time(time.time() - t0, cfg.eval_iters)
        results[i] = losses.mean()
        if split == "val":
            # nats over every target token / the UTF-8 bytes of their text / ln 2: comparable across tokenizers
            results[2] = nats.item() / max(text_bytes.item(), 1) / math.log(2)
    model.train()
    return results


def report_eval_time(first_batch_seconds, eval_iters):
    """The evaluation at step 0 comes before any step, and a run set up too big would otherwise sit
    silent: say how long every evaluation will take, if that is long."""
    seconds = first_batch_seconds * 2 * eval_iters
    if seconds > 30:
        print(
            f"note: each evaluation will take about {format_duration(seconds)} (2 x {eval_iters} batches at"
            f" {first_batch_seconds:.2f} s each); --eval_iters and --eval_interval set how many and how often"
        )


def task_items(task, tokenizer_meta, block_size):
    """The multiple-choice items a run scores (hellaswag_task), read once before training: a task the
    model's tokenizer cannot read (HellaSwag for a character-level model) is refused here."""
    try:
        return read_items(task_file(task, "--hellaswag_task"), tokenizer_from_meta(tokenizer_meta), block_size)
    except DataError as e:
        raise DataError(f"hellaswag_interval cannot score {task}: {e}") from None


def choice_accuracy(model, items, ctx, procs, fsdp, batch_size, vocab_size):
    """Scores on the items. Under DDP each process scores every world_size-th item and the counts are
    summed, so every process must call it at the same step; under FSDP a forward pass is collective, so
    every process scores them all in the same batches."""
    share = items if fsdp or not procs.ddp else items[procs.rank :: procs.world_size]
    scores = accuracy(loglikelihoods(model, share, batch_size, procs.device, vocab_size, ctx), share)
    if procs.ddp and not fsdp:
        counts = torch.tensor([scores.correct, scores.correct_norm, scores.count], device=procs.device)
        torch.distributed.all_reduce(counts)
        scores = Scores(*counts.tolist())
    return scores
