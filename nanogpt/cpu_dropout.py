"""Dropout on the CPU at the speed of the matmuls around it.

torch's own CPU dropout is slow in two places (measured on a 2-core AMD EPYC, torch 2.13):
- `bernoulli_`, which draws the masks, makes one draw at a time on one thread: about 7.5 ns per element,
  15% of a 6 x 384 training step at dropout 0.2. `drop_mask` cuts four 16-bit numbers from each 64-bit
  draw instead: the same Bernoulli(p) (p rounded to 1/65536) at about 1.5 ns per element.
- With dropout, scaled_dot_product_attention leaves its fused CPU kernel for a fallback that builds
  every T x T score matrix of the batch at once and keeps them all for the backward: three times the
  fused kernel's time. `attention_with_dropout` does the same sums a few heads at a time, so the scores
  are still in cache when they are used, skips the blocks the causal mask hides, and recomputes the
  scores in the backward instead of storing them (as flash attention does). Of the T x T matrices it
  keeps only the dropout mask, one byte a score.
Both draw from torch's CPU generator, so torch.manual_seed and saved RNG states repeat a run exactly.
They serve eager CPU training; on GPUs and under torch.compile the model keeps torch's own dropout.
"""

import math

import torch

# 2^20 scores (4 MB in float32) per chunk of the batch: they stay in the CPU's cache between the ops
# that use them (2^19 and 2^21 were slower here)
SCORES_PER_CHUNK = 1 << 20
# query rows split into this many blocks; block j needs keys up to its own end, which skips
# (n - 1) / 2n of the T x T scores that the causal mask would hide anyway
ROW_BLOCKS = 4


def drop_mask(shape, p):
    """Bool tensor of the given shape, True (dropped) with probability p for each element."""
    n = math.prod(shape)
    bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None).view(torch.int16)[:n]
    return (bits < round(p * 65536) - 32768).view(shape)


def dropout(x, p):
    """Inverted dropout of a CPU tensor in training: zero each element with probability p, scale the
    rest by 1 / (1 - p)."""
    keep_scale = torch.where(drop_mask(x.shape, p), 0.0, 1.0 / (1.0 - p)).to(x.dtype)
    return x * keep_scale


def attention_with_dropout(q, k, v, p):
    """Causal attention, softmax(q k^T / sqrt(hs)) v with dropout p on the attention weights, for
    q, k, v of shape (B, H, T, hs) on the CPU. Like torch's fused kernel it reads and writes the
    (B, T, H, hs) layout that the projection makes; only cache-sized chunks are put heads-first."""
    return _AttentionWithDropout.apply(q, k, v, p).transpose(1, 2)


def _chunks(B, H, T):
    """Slices of the batch, each small enough for its heads' T x T scores to stay in cache."""
    step = max(1, SCORES_PER_CHUNK // (H * T * T))
    return [slice(i, i + step) for i in range(0, B, step)]


def _blocks(T, dtype):
    """(query rows, number of keys they see, the causal mask over those as an additive bias) for each
    row block of a causal T x T attention."""
    size = -(-T // ROW_BLOCKS)
    blocks = []
    for start in range(0, T, size):
        end = min(start + size, T)
        causal_bias = torch.full((end - start, end), float("-inf"), dtype=dtype).triu(start + 1)
        blocks.append((slice(start, end), end, causal_bias))
    return blocks


def _heads_first(x):
    """(b, T, H, hs) -> a contiguous (b * H, T, hs), each head's T x hs matrix in one piece."""
    b, T, H, hs = x.shape
    return x.transpose(1, 2).reshape(b * H, T, hs)


def _scores(q, k, rows, keys, causal_bias):
    """Softmax weights of the query rows over their first `keys` keys, the later ones masked out."""
    return torch.baddbmm(
        causal_bias, q[:, rows], k[:, :keys].transpose(1, 2), alpha=1.0 / math.sqrt(q.size(-1))
    ).softmax(dim=-1)


class _AttentionWithDropout(torch.autograd.Function):
    """Takes q, k, v as (B, H, T, hs) views and returns the output as (B, T, H, hs)."""

    @staticmethod
    def forward(ctx, q, k, v, p):
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, T, H, hs), as the projection laid them out
        B, T, H, hs = q.shape
        out = torch.empty(B, T, H, hs, dtype=q.dtype)
        masks = []
        blocks = _blocks(T, q.dtype)
        for batch in _chunks(B, H, T):
            qc, kc, vc = (_heads_first(t[batch]) for t in (q, k, v))
            out_c = torch.empty_like(qc)
            for rows, keys, causal_bias in blocks:
                att = _scores(qc, kc, rows, keys, causal_bias)
                masks.append(drop_mask(att.shape, p))
                out_c[:, rows] = torch.bmm(att.masked_fill_(masks[-1], 0.0), vc[:, :keys])
            out[batch] = out_c.mul_(1.0 / (1.0 - p)).view(-1, H, T, hs).transpose(1, 2)
        ctx.save_for_backward(q, k, v, out, *masks)
        ctx.p = p
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, *masks = ctx.saved_tensors
        B, T, H, hs = q.shape
        grads = [torch.empty(B, T, H, hs, dtype=q.dtype) for _ in range(3)]
        masks = iter(masks)
        blocks = _blocks(T, q.dtype)
        for batch in _chunks(B, H, T):
            qc, kc, vc, out_c, grad_out_c = (_heads_first(t[batch]) for t in (q, k, v, out, grad_out))
            # softmax backward needs rowsum(dP * P) per query, which equals rowsum(dO * O)
            row_dot = (grad_out_c * out_c).sum(dim=-1, keepdim=True)
            grad_out_c = grad_out_c * (1.0 / (1.0 - ctx.p))
            grad_q, grad_k, grad_v = torch.empty_like(qc), torch.zeros_like(kc), torch.zeros_like(vc)
            for rows, keys, causal_bias in blocks:
                att = _scores(qc, kc, rows, keys, causal_bias)
                dropped = next(masks)
                grad_scores = torch.bmm(grad_out_c[:, rows], vc[:, :keys].transpose(1, 2)).masked_fill_(dropped, 0.0)
                grad_scores.sub_(row_dot[:, rows]).mul_(att)
                grad_v[:, :keys] += torch.bmm(att.masked_fill_(dropped, 0.0).transpose(1, 2), grad_out_c[:, rows])
                grad_q[:, rows] = torch.bmm(grad_scores, kc[:, :keys])
                grad_k[:, :keys] += torch.bmm(grad_scores.transpose(1, 2), qc[:, rows])
            scale = 1.0 / math.sqrt(hs)
            for grad, grad_c in zip(grads, (grad_q.mul_(scale), grad_k.mul_(scale), grad_v)):
                grad[batch] = grad_c.view(-1, H, T, hs).transpose(1, 2)
        return *(grad.transpose(1, 2) for grad in grads), None
