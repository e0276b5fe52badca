"""KV-cache decoding gives exactly the tokens of full recomputation; sample.py's options and errors."""

import subprocess
import sys

import pytest
import torch

from conftest import REPO, SCRIPT_TIMEOUT, assert_user_error, run_script
from nanogpt.model import GPT, GPTConfig, context_start, sample_next_token


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50, bias=True)).eval()


@pytest.mark.parametrize(
    "settings",
    [dict(temperature=0), dict(temperature=1.0), dict(temperature=0.8, top_k=10), dict(temperature=1.2, top_p=0.7)],
)
@pytest.mark.parametrize("prompt_len", [1, 5, 23])  # 23 > block_size: the prompt itself is cut
def test_cached_equals_uncached(small_model, settings, prompt_len):
    prompt = torch.randint(50, (3, prompt_len), generator=torch.Generator().manual_seed(prompt_len))
    new = 70  # several times past block_size (16), so the context is cut and re-encoded repeatedly
    cached = small_model.generate(prompt, new, generator=torch.Generator().manual_seed(5), use_cache=True, **settings)
    uncached = small_model.generate(prompt, new, generator=torch.Generator().manual_seed(5), use_cache=False, **settings)
    assert cached.shape == (3, prompt_len + new)
    assert torch.equal(cached, uncached)


def test_cached_logits_match_a_full_forward(small_model):
    """Feeding tokens one at a time through the cache gives the logits of one full forward pass."""
    from nanogpt.model import KVCache

    idx = torch.randint(50, (2, 16))
    cache = KVCache(small_model.config)
    steps = [small_model(idx[:, t : t + 1], cache=cache)[0][:, -1] for t in range(16)]
    full, _ = small_model(idx, targets=idx)  # with targets: logits at every position
    torch.testing.assert_close(torch.stack(steps, dim=1), full, atol=1e-5, rtol=0)


def test_context_start_keeps_the_context_within_block_size():
    block = 16
    for length in range(1, 200):
        start = context_start(length, block)
        window = length - start
        assert 1 <= window <= block
        if length > block:
            assert window >= block // 2
        # the context only moves by re-encoding: it either stays put or jumps to keep the last half
        if length > 1:
            prev = context_start(length - 1, block)
            assert start == prev or length - start == block // 2


def test_top_p_keeps_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    draws = {sample_next_token(logits, 1.0, None, 0.75, torch.Generator().manual_seed(s)).item() for s in range(200)}
    assert draws == {0, 1}  # 0.5 + 0.3 reaches 0.75; tokens 2 and 3 are never drawn
    draws = {sample_next_token(logits, 1.0, None, 0.1, torch.Generator().manual_seed(s)).item() for s in range(50)}
    assert draws == {0}


def sample(out_dir, *args, **kwargs):
    return run_script("sample.py", f"--out_dir={out_dir}", "--device=cpu", *args, **kwargs)


def test_sample_py_cached_and_uncached_print_the_same(trained_run):
    out_dir, _ = trained_run
    args = ("--num_samples=3", "--max_new_tokens=80", "--start=ROMEO:", "--seed=3")  # block_size is 32
    cached, uncached = sample(out_dir, *args), sample(out_dir, *args, "--use_cache=False")
    assert cached.returncode == 0, cached.stderr
    assert cached.stdout == uncached.stdout


def test_streamed_output_equals_the_batch_output(trained_run):
    out_dir, _ = trained_run
    args = ("--num_samples=1", "--max_new_tokens=60", "--start=ROMEO:")
    streamed, whole = sample(out_dir, *args, "--stream=True"), sample(out_dir, *args, "--stream=False")
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout == whole.stdout


def test_prompt_from_stdin(trained_run):
    out_dir, _ = trained_run
    result = subprocess.run(
        [sys.executable, "sample.py", f"--out_dir={out_dir}", "--start=-", "--num_samples=1", "--max_new_tokens=20"],
        cwd=REPO, input="JULIET:\n", capture_output=True, text=True, timeout=SCRIPT_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("JULIET:\n")


@pytest.mark.parametrize(
    "arg,fragment",
    [
        ("--max_new_tokens=0", "max_new_tokens must be at least 1"),
        ("--top_k=66", "top_k must be between 1 and the vocabulary size 65"),
        ("--top_k=0", "top_k must be between 1"),
        ("--top_p=0", "top_p must be in (0, 1]"),
        ("--top_p=1.5", "top_p must be in (0, 1]"),
        ("--start=", "the prompt is empty"),
        ("--temperature=-1", "temperature must be 0"),
    ],
)
def test_bad_sampling_settings(trained_run, arg, fragment):
    out_dir, _ = trained_run
    assert_user_error(sample(out_dir, arg), fragment)
