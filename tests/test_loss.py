"""fused_loss=True: the output head's loss and gradients a slice at a time (nanogpt/fused_loss.py) are the plain
loss's, in the function, in the whole model and in a training run."""

import json

import pytest
import torch
import torch.nn.functional as F

from helpers import TINY_TRAIN, run_script
from nanogpt.fused_loss import linear_cross_entropy
from nanogpt.model import GPT, GPTConfig
from nanogpt.training.optimizers import make_optimizers
from nanogpt.training.step import TrainingStep


def plain_loss(x, weight, targets, softcap):
    logits = x @ weight.t()
    if softcap > 0:
        logits = softcap * torch.tanh(logits.float() / softcap)
    return F.cross_entropy(logits.reshape(-1, weight.size(0)).float(), targets.reshape(-1), ignore_index=-1)


def loss_and_grads(loss_fn, x, weight, targets, softcap):
    x, weight = x.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = loss_fn(x, weight, targets, softcap)
    (3.0 * loss).backward()  # a scale on the loss must reach the gradients
    return loss.detach(), x.grad, weight.grad


@pytest.mark.parametrize("softcap", [0.0, 2.0])
def test_slices_give_the_plain_loss_and_gradients(softcap):
    torch.manual_seed(0)
    x, weight = torch.randn(3, 50, 32), torch.randn(101, 32)
    targets = torch.randint(0, 101, (3, 50))
    targets[0, :7] = -1  # not counted, as F.cross_entropy's ignore_index
    expected = loss_and_grads(plain_loss, x, weight, targets, softcap)
    # 150 tokens in slices of 16: ten slices, the last one short
    got = loss_and_grads(lambda *a: linear_cross_entropy(*a, slice_rows=16), x, weight, targets, softcap)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
    assert not got[1][0, :7].any() and got[1][0, 7:].abs().min() > 0  # an uncounted token gets no gradient


@pytest.mark.slow
@pytest.mark.parametrize("tie_embeddings", [True, False])
def test_the_model_trains_the_same_with_the_fused_loss(tie_embeddings):
    torch.manual_seed(0)
    model = GPT(
        GPTConfig(
            n_layer=2,
            n_head=2,
            n_embd=32,
            block_size=16,
            vocab_size=97,
            logit_softcap=15.0,
            tie_embeddings=tie_embeddings,
        )
    )
    x, y = torch.randint(0, 97, (4, 16)), torch.randint(0, 97, (4, 16))
    results = []
    for fused in (False, True):
        model.zero_grad(set_to_none=True)
        logits, loss = model(x, y, fused_loss=fused)
        loss.backward()
        results.append((logits, loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (plain_logits, plain, plain_grads), (fused_logits, fused, fused_grads) = results
    assert plain_logits is not None and fused_logits is None  # the whole batch's logits are never made
    torch.testing.assert_close(fused, plain, rtol=1e-6, atol=1e-6)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    with torch.no_grad():  # evaluation: the plain path, logits and all
        logits, loss = model(x, y, fused_loss=True)
    assert logits is not None and torch.allclose(loss, plain)


def test_the_training_step_takes_the_fused_path_only_when_asked():
    """train.py and bench.py pass fused_loss to nanogpt/training/step.py; what made the loss the model
    returned to the step shows it."""
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=97))
    optimizers = make_optimizers(model, 0.0, 1e-3, (0.9, 0.95), "cpu")
    batch = torch.randint(0, 97, (2, 16)), torch.randint(0, 97, (2, 16))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    made_by, forward = {}, model.forward

    def forward_seen_by_the_step(*args, **kwargs):
        logits, loss = forward(*args, **kwargs)
        made_by[kwargs["fused_loss"]] = loss.grad_fn.name()
        return logits, loss

    model.forward = forward_seen_by_the_step
    for fused in (False, True):
        stats, _ = TrainingStep(model, optimizers, scaler, grad_accum=2, grad_clip=1.0, fused_loss=fused)(
            batch, lambda: batch
        )
        assert set(stats) == {"loss", "grad_norm"} and stats["loss"].grad_fn is None  # read by name, detached
    assert "LinearCrossEntropy" in made_by[True] and "LinearCrossEntropy" not in made_by[False], made_by


@pytest.mark.slow
def test_train_py_with_fused_loss_logs_the_same_losses(data_dir, tmp_path):
    common = [
        *TINY_TRAIN,
        "--dataset=shakespeare_char",
        f"--data_dir={data_dir}",
        "--max_iters=20",
        "--lr_decay_iters=20",
        "--eval_interval=20",
        "--eval_iters=2",
        "--log_interval=1",
        "--logit_softcap=30",
    ]
    losses = {}
    for fused in (False, True):
        out = tmp_path / f"fused_{fused}"
        result = run_script("train.py", *common, f"--fused_loss={fused}", f"--out_dir={out}")
        assert result.returncode == 0, result.stderr
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        losses[fused] = [r["loss"] for r in records if r["kind"] == "train"]
    assert len(losses[True]) == 20
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
    assert losses[True][-1] < losses[True][0] - 0.5  # and it learns
