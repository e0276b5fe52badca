"""The CPU dropout paths against plain PyTorch: the same sums, the same gradients, the same statistics."""

import math

import pytest
import torch

from nanogpt import cpu_dropout
from nanogpt.model import GPT, GPTConfig


def qkv_views(B, H, T, hs, seed):
    """q, k, v as the model makes them: (B, H, T, hs) views of one (B, T, 3 * H * hs) projection."""
    qkv = torch.randn(B, T, 3 * H * hs, generator=torch.Generator().manual_seed(seed), requires_grad=True)
    q, k, v = (t.view(B, T, H, hs).transpose(1, 2) for t in qkv.split(H * hs, dim=2))
    return qkv, q, k, v


def kept_weights(B, H, T, p, seed):
    """The attention weights attention_with_dropout keeps for a given seed, read off its output: with
    v the identity (hs = T), output row i is row i of the dropped-out weights."""
    _, q, k, _ = qkv_views(B, H, T, T, seed=1)
    v = torch.eye(T).expand(B, H, T, T)
    torch.manual_seed(seed)
    return cpu_dropout.attention_with_dropout(q, k, v, p) != 0


@pytest.mark.parametrize("B,H,T,hs", [(2, 3, 16, 8), (40, 2, 128, 16), (3, 1, 7, 4), (2, 2, 1, 8)])
def test_attention_with_dropout_matches_plain_attention(B, H, T, hs):
    """Output and q/k/v gradients equal softmax-dropout-matmul written out in full, with the same kept
    weights. The shapes cover several batch chunks (40 x 2 x 128), a T that is not a multiple of the row
    blocks, one head, one token."""
    p, seed = 0.2, 7
    kept = kept_weights(B, H, T, p, seed)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    assert not kept[..., ~causal].any()
    qkv, q, k, v = qkv_views(B, H, T, T, seed=1)
    grad = torch.randn(B, H, T, T)

    torch.manual_seed(seed)
    cpu_dropout.attention_with_dropout(q, k, v, p).backward(grad)
    ours = qkv.grad.clone()

    qkv.grad = None
    att = (q @ k.transpose(-2, -1) / math.sqrt(T)).masked_fill(~causal, float("-inf")).softmax(dim=-1)
    reference = torch.where(kept, att / (1 - p), 0.0) @ v
    reference.backward(grad)
    torch.manual_seed(seed)
    torch.testing.assert_close(cpu_dropout.attention_with_dropout(q, k, v, p), reference)
    torch.testing.assert_close(ours, qkv.grad)


def test_attention_with_dropout_repeats_with_the_seed_and_drops_p():
    first, again, other = (kept_weights(16, 4, 64, 0.2, seed) for seed in (3, 3, 4))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    causal = torch.ones(64, 64, dtype=torch.bool).tril()
    dropped = 1 - first[..., causal].float().mean().item()
    assert abs(dropped - 0.2) < 0.01  # 133k weights: the standard error is 0.0011


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
def test_dropout_drops_p_and_keeps_the_mean(p):
    x = torch.rand(1000, 1000) + 1.0
    torch.manual_seed(0)
    y = cpu_dropout.dropout(x, p)
    assert abs((y == 0).float().mean().item() - p) < 0.003  # 1M draws: the standard error is <= 0.0005
    torch.testing.assert_close(y[y != 0], x[y != 0] / (1 - p))
    assert abs(y.mean().item() / x.mean().item() - 1) < 0.003


def test_model_trains_with_dropout_on_the_cpu_paths(monkeypatch):
    """A dropout-0.2 GPT in training mode goes through cpu_dropout, and its gradients are those of the
    same kept weights: eval mode (no dropout) and train mode differ, train mode repeats with the seed,
    and a few steps lower the loss on a fixed batch."""
    calls = {"dropout": 0, "attention_with_dropout": 0}
    for name in calls:  # counted on the way through, the functions themselves unchanged
        original = getattr(cpu_dropout, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(cpu_dropout, name, counted)
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=50, dropout=0.2))
    x = torch.randint(50, (4, 32))
    y = torch.roll(x, -1, dims=1)
    model.eval()
    _, eval_loss = model(x, y)
    model.train()
    torch.manual_seed(1)
    _, train_loss = model(x, y)
    torch.manual_seed(1)
    _, train_loss_again = model(x, y)
    assert train_loss.item() == train_loss_again.item() != eval_loss.item()
    # each train-mode forward: dropout on the embeddings and on each block's attention and MLP outputs,
    # attention_with_dropout on each block's attention weights
    assert calls == {"dropout": 2 * (1 + 2 * 2), "attention_with_dropout": 2 * 2}

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        _, loss = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_torch_dropout_serves_outside_eager_cpu_training():
    """Under torch.compile the model hands dropout back to torch (inductor draws its own masks); in eval
    mode, or at p = 0, dropout returns its input."""
    from nanogpt.model import dropout, eager_cpu

    x = torch.randn(8, 8)
    assert eager_cpu(x)
    compiled = torch.compile(lambda t: t + 1 if eager_cpu(t) else t - 1, backend="eager")
    assert torch.equal(compiled(x), x - 1)
    assert torch.equal(dropout(x, 0.2, training=False), x)
    assert torch.equal(dropout(x, 0.0, training=True), x)
