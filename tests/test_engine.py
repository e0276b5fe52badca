"""The generation engine: cached, fixed-span (what a CUDA graph replays) and uncached decoding give the
same tokens; each row of a batch equals its prompt alone; the sampler draws from the right distribution.
The CUDA tests run where a GPU is present (bench/gpu_decode.sh runs them on a lent one)."""

import pytest
import torch

from nanogpt.generation.engine import Engine, Rows, context_start, inference_model
from nanogpt.generation.kv_cache import Decode, KVCache, Prefill
from nanogpt.generation.sampling import Sampling, sample_tokens, stream_key
from nanogpt.model import GPT, GPTConfig

SETTINGS = [Sampling(0), Sampling(1.0, seed=3), Sampling(0.8, top_k=10, seed=4), Sampling(1.2, top_p=0.7, seed=5)]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def small_model(device="cpu", **switches):
    torch.manual_seed(0)
    config = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50, bias=True, **switches)
    return inference_model(GPT(config), device, "float32")


def prompts(*lengths, vocab=50):
    generator = torch.Generator().manual_seed(sum(lengths))
    return [torch.randint(vocab, (n,), generator=generator).tolist() for n in lengths]


@pytest.mark.parametrize("sampling", SETTINGS)
@pytest.mark.parametrize(
    "switches", [{}, dict(rotary=True, qk_norm=True, relu2=True, tie_embeddings=False, logit_softcap=15.0)]
)
def test_cached_fixed_span_and_uncached_give_the_same_tokens(sampling, switches):
    """70 new tokens: several times past block_size (16), so contexts are cut and re-encoded repeatedly,
    and the 23-token prompt is cut before the first step."""
    model = small_model(**switches)
    batch = prompts(1, 5, 23)
    cached = Engine(model).generate(batch, 70, sampling)
    assert [len(row) for row in cached] == [70, 70, 70]
    assert Engine(model, fixed_span=True).generate(batch, 70, sampling) == cached
    assert Engine(model, use_cache=False).generate(batch, 70, sampling) == cached


def test_each_row_equals_its_prompt_alone():
    """Prompts of 1, 7 and 40 characters in one batch, each at its own position and cache length: first the
    logits of a decode step (1e-5), then the tokens of a short greedy and a seeded generation."""
    torch.manual_seed(0)
    model = inference_model(
        GPT(GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=64, vocab_size=65)), "cpu", "float32"
    )
    batch = prompts(1, 7, 40, vocab=65)
    cache = KVCache(model.config, 3, "cpu")
    for row, prompt in enumerate(batch):
        context = torch.tensor([prompt[:-1]]) if len(prompt) > 1 else None
        if context is not None:
            model(context, cache=Prefill(cache, torch.tensor([row]), len(prompt) - 1))
        cache.lengths[row] = len(prompt) - 1
    pending = torch.tensor([[p[-1]] for p in batch])
    logits, _ = model(pending, cache=Decode(cache, max(len(p) for p in batch), masked=True))
    for row, prompt in enumerate(batch):
        alone, _ = model(torch.tensor([prompt]))
        torch.testing.assert_close(logits[row, -1], alone[0, -1], atol=1e-5, rtol=0)
    for sampling in (Sampling(0), [Sampling(1.0, seed=s) for s in (7, 8, 9)]):
        together = Engine(model).generate(batch, 12, sampling)
        per_row = sampling if isinstance(sampling, list) else [sampling] * 3
        assert together == [Engine(model).generate([p], 12, s)[0] for p, s in zip(batch, per_row)]


def test_cached_logits_match_a_full_forward():
    """Feeding tokens one at a time through the cache gives the logits of one full forward pass."""
    model = small_model()
    idx = torch.randint(50, (2, 16))
    cache = KVCache(model.config, 2, "cpu")
    steps = []
    for t in range(16):
        logits, _ = model(idx[:, t : t + 1], cache=Decode(cache, t + 1, masked=False))
        cache.lengths += 1
        steps.append(logits[:, -1])
    full, _ = model(idx, targets=idx)  # with targets: logits at every position
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


def draw(logits, n, temperature=1.0, top_k=None, top_p=None):
    """n draws from one row of logits, each with its own seed."""
    V = logits.numel()
    full = lambda value: torch.full((n,), value)  # noqa: E731
    return sample_tokens(
        logits.expand(n, V),
        full(float(temperature)),
        full(top_k or V),
        full(1.0 if top_p is None else top_p),
        stream_key(torch.arange(n)),
        torch.zeros(n, dtype=torch.long),
    )


def test_sampler_draws_from_the_softmax():
    probs = torch.tensor([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
    n = 40_000
    counts = torch.bincount(draw(probs.log(), n), minlength=6) / n
    torch.testing.assert_close(counts, probs, atol=0.01, rtol=0)  # 3-4 standard deviations at n = 40k
    hotter = torch.softmax(probs.log() / 2.0, dim=-1)
    torch.testing.assert_close(
        torch.bincount(draw(probs.log(), n, temperature=2.0), minlength=6) / n, hotter, atol=0.01, rtol=0
    )


def test_top_k_and_top_p_keep_the_right_tokens():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    assert set(draw(logits, 500, top_p=0.75).tolist()) == {0, 1}  # 0.5 + 0.3 reaches 0.75
    assert set(draw(logits, 100, top_p=0.1).tolist()) == {0}
    top3 = torch.bincount(draw(logits, 30_000, top_k=3), minlength=4) / 30_000
    torch.testing.assert_close(top3, torch.tensor([0.5, 0.3, 0.15, 0.0]) / 0.95, atol=0.012, rtol=0)
    assert set(draw(logits, 200, temperature=0).tolist()) == {0}


def test_a_row_draws_the_same_tokens_whatever_else_is_in_the_batch():
    model = small_model()
    alone = Engine(model).generate([[3]], 30, Sampling(1.0, seed=11))[0]
    with_others = Engine(model).generate(
        [[5, 6], [3], [7]], 30, [Sampling(0.7, seed=1), Sampling(1.0, seed=11), Sampling(1.0, seed=2)]
    )
    assert with_others[1] == alone


def test_stopped_rows_end_and_the_rest_go_on():
    """A row that stops keeps its tokens up to the cut; once half the batch has stopped the batch shrinks,
    and the remaining rows still produce exactly the tokens they would have."""
    model = small_model()
    batch = prompts(1, 2, 3, 4)
    sampling = Sampling(1.0, seed=1)
    full = Engine(model).generate(batch, 40, sampling)
    stop_rows = {0: 5, 2: 9, 3: 11}  # row -> where it stops
    stopped = Engine(model).generate(
        batch, 40, sampling, stop=lambda row, ids: stop_rows.get(row) if len(ids) >= 12 else None
    )
    assert stopped == [full[0][:5], full[1], full[2][:9], full[3][:11]]


@cuda
@pytest.mark.parametrize("sampling", [Sampling(0), [Sampling(1.0, seed=s, top_k=20) for s in range(3)]])
def test_cuda_graph_equals_eager_and_uncached_in_float32(sampling):
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 as float32
    model = small_model("cuda", rotary=True)
    batch = prompts(1, 5, 23)
    engine = Engine(model)
    graphed = engine.generate(batch, 70, sampling)
    assert engine.graphs and engine.capture_seconds > 0
    assert engine.generate(batch, 70, sampling) == graphed  # the captured graph, replayed again
    assert Engine(model, cuda_graph=False).generate(batch, 70, sampling) == graphed
    assert Engine(model, use_cache=False).generate(batch, 70, sampling) == graphed


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=cuda)])
def test_rows_that_join_and_leave_mid_flight_get_their_own_tokens(device):
    """What the server's continuous batching does: rows join a running batch between steps and leave it
    when done, and every row gets exactly the tokens its prompt gets alone (past block_size too). On CUDA
    each new batch size replays a graph of its own, and a size seen before reuses its graph."""
    torch.backends.cuda.matmul.allow_tf32 = False
    model = small_model(device)
    batch = prompts(1, 5, 23, 3)
    sampling = [Sampling(0), Sampling(1.0, seed=2), Sampling(0.8, top_k=10, seed=3), Sampling(1.0, seed=4)]
    lengths = [30, 12, 25, 20]
    alone = [Engine(model).generate([p], n, s)[0] for p, n, s in zip(batch, lengths, sampling)]
    engine, rows = Engine(model), Rows(model.config, 50, torch.device(device))
    got = {}
    joins = {0: [0], 4: [1, 2], 9: [3]}  # step -> rows that join before it
    for step in range(60):
        if step in joins:
            rows.add(
                [batch[i] for i in joins[step]], [sampling[i] for i in joins[step]], max(lengths), index=joins[step]
            )
        if not len(rows):
            break
        engine.step(rows)
        done = [r for r, row in enumerate(rows.index) if rows.counts[r] == lengths[row]]
        for r in done:
            got[rows.index[r]] = rows.generated[r, : lengths[rows.index[r]]].tolist()
        if done:
            rows.keep([r for r in range(len(rows)) if r not in done])
    assert [got[i] for i in range(4)] == alone
