"""Cross-entropy of the output head without the logits of the whole batch (train.py's fused_loss=True).

The plain loss, F.cross_entropy(lm_head(x).float(), targets), holds the (tokens, vocab) logits several
times over: in the autocast dtype, as float32, and its log-softmax kept for the backward pass. For GPT-2
124M at 12 x 1024 tokens a 50,304-way float32 copy alone is 2.5 GB. Here the head runs over slices of
the tokens; each slice's logits live only while its loss and its gradients (softmax minus one-hot) are
worked out, in the forward pass, so the backward pass has nothing to recompute and only scales them.
"""

import torch


class LinearCrossEntropy(torch.autograd.Function):
    """mean over counted tokens of cross_entropy(x @ weight.T), targets of -1 not counted, with GPT's
    optional logit soft-capping (softcap * tanh(logits / softcap)). x (N, C), weight (V, C), targets (N,)."""

    @staticmethod
    def forward(ctx, x, weight, targets, softcap, slice_rows):
        counted = targets != -1
        scale = 1.0 / counted.sum()  # the mean's divisor, applied to each slice's gradient
        loss = torch.zeros((), dtype=torch.float32, device=x.device)
        grad_x = torch.empty_like(x)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32)
        for start in range(0, x.size(0), slice_rows):
            xs, ts, kept = (
                x[start : start + slice_rows],
                targets[start : start + slice_rows],
                counted[start : start + slice_rows],
            )
            head = xs @ weight.t()  # under autocast: the autocast dtype, as the plain path's head
            logits = head.float()
            if softcap > 0:
                capped = torch.tanh(logits / softcap)
                logits = softcap * capped
            lse = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(1, ts.clamp_min(0)[:, None])[:, 0]
            loss += torch.where(kept, lse - picked, 0.0).sum()
            # d(loss)/d(logits) = (softmax - one_hot) / count for counted tokens, 0 for the others
            grad = logits.sub_(lse[:, None]).exp_()
            grad[torch.arange(len(ts), device=ts.device), ts.clamp_min(0)] -= 1.0
            grad *= torch.where(kept, scale, 0.0)[:, None]
            if softcap > 0:
                grad *= 1.0 - capped * capped
            grad = grad.to(head.dtype)
            grad_x[start : start + slice_rows] = grad @ weight
            grad_weight += grad.t() @ xs
        ctx.save_for_backward(grad_x, grad_weight.to(weight.dtype))
        return loss * scale

    @staticmethod
    def backward(ctx, grad_loss):
        grad_x, grad_weight = ctx.saved_tensors
        return grad_x * grad_loss, grad_weight * grad_loss, None, None, None


def linear_cross_entropy(x, weight, targets, softcap=0.0, slice_rows=4096):
    """The loss of the head `weight` on hidden states x (B, T, C) for targets (B, T); see the module."""
    return LinearCrossEntropy.apply(x.reshape(-1, x.size(-1)), weight, targets.reshape(-1), softcap, slice_rows)
