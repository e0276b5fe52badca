"""Generation: prompts in, tokens out. sample.py, the benchmarks and the tests all go through Engine.

Each prompt is a row of one batch, with its own length, position and random stream, so a row's tokens
are the same whatever else is in the batch. With the KV cache (the default) a row's context goes through
the model once (prefill) and then one token per step (decode). The decode step has fixed shapes: the
cache is allocated once for block_size tokens per row, positions and lengths are tensors, and each row
attends to the whole cache under a mask of its own length. On CUDA that step is captured once as a CUDA
graph and replayed per token, so a token costs one launch instead of a hundred kernels' worth of Python.
On the CPU the step runs eagerly, attending only as far as the longest row.
"""

import functools
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


@dataclass
class Sampling:
    """How one row draws its tokens. temperature 0 is greedy; top_k and top_p of None keep every token;
    seed picks the row's own random stream."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0


def context_start(length, block_size):
    """Where the context the model sees begins, for a sequence of `length` tokens.

    Learned absolute positions cannot slide one token at a time without re-encoding the whole context
    (every token's position changes), which would make a cache useless. So once the sequence outgrows
    block_size the model keeps the last block_size // 2 tokens as its context, re-encoded from position
    0, and lets it grow back to block_size before cutting again.
    """
    if length <= block_size:
        return 0
    keep = block_size // 2
    steps_since_cut = (length - block_size - 1) % (block_size - keep + 1)
    return length - keep - steps_since_cut


def inference_model(model, device, dtype):
    """The model on `device` in eval mode, its weights in `dtype` ('float32', 'bfloat16', 'float16').

    Generation casts the weights once rather than running under autocast, which would cast every
    weight matrix again at every token. The rotary tables stay float32: angles need the precision."""
    model = model.eval().to(device=device, dtype=getattr(torch, dtype))
    if model.config.rotary:
        model.rotary_cos, model.rotary_sin = model.rotary_cos.float(), model.rotary_sin.float()
    return model


# -- the KV cache and the two views of it the model sees ----------------------------------------------


class KVCache:
    """Keys and values of every layer for `rows` sequences of up to block_size tokens each:
    k, v (n_layer, rows, n_head, block_size, head_size), written in place and never reallocated (a CUDA
    graph holds on to their addresses), and lengths (rows,), the tokens each row holds."""

    def __init__(self, config, rows, device):
        self.config = config
        self.k = self.v = None  # allocated on first use, in the dtype of the keys the model makes
        self.lengths = torch.zeros(rows, dtype=torch.long, device=device)
        self.row_index = self.cache_positions = None  # made on first use, see index()

    def with_rows(self, rows=None, added=0):
        """A new cache (this one is left as it is: a CUDA graph may hold its tensors) with only the rows
        at these positions (a tensor of row indices; None for all), then `added` empty rows."""
        cache = KVCache(self.config, 0, self.lengths.device)
        keep = (lambda t, dim: t) if rows is None else (lambda t, dim: t.index_select(dim, rows))
        cache.lengths = torch.cat([keep(self.lengths, 0), self.lengths.new_zeros(added)])
        if self.k is not None:
            empty = self.k.new_zeros((self.k.shape[0], added, *self.k.shape[2:]))
            cache.k, cache.v = (torch.cat([keep(t, 1), empty], dim=1) if added else keep(t, 1) for t in (self.k, self.v))
        return cache

    def index(self):
        """Each row's number and each cache position, made once rather than at every step: a CUDA graph
        holds them as constants, where an arange inside the step would be one more kernel per token."""
        if self.row_index is None:
            device = self.lengths.device
            self.row_index = torch.arange(self.lengths.numel(), device=device)
            self.cache_positions = torch.arange(self.config.block_size, device=device)
        return self.row_index, self.cache_positions

    def layer(self, index, like):
        if self.k is None:
            B, cfg = self.lengths.numel(), self.config
            shape = (cfg.n_layer, B, cfg.n_head, cfg.block_size, cfg.n_embd // cfg.n_head)
            self.k = like.new_zeros(shape)
            self.v = torch.zeros_like(self.k)
        return self.k[index], self.v[index]


class Prefill:
    """A fresh context of T tokens for some rows of the cache (positions 0..T-1): causal attention among
    them, and their keys and values written to those rows."""

    def __init__(self, cache, rows, T):
        self.cache, self.rows, self.T = cache, rows, T
        self.positions = torch.arange(T, device=cache.lengths.device)

    def update(self, layer, k, v):
        cache_k, cache_v = self.cache.layer(layer, k)
        cache_k[self.rows, :, : self.T] = k
        cache_v[self.rows, :, : self.T] = v
        return k, v, None


class Decode:
    """One new token per row at position lengths[row], seeing the first `span` positions of the cache;
    with `masked`, each row only up to its own length (rows of different lengths, or a fixed span)."""

    def __init__(self, cache, span, masked):
        lengths = cache.lengths
        self.cache, self.span, self.masked = cache, span, masked
        self.positions = lengths[:, None]
        self.row_index, cache_positions = cache.index()
        self.hidden = (cache_positions[:span] > lengths[:, None])[:, None, None, :] if masked else None
        self.mask = None

    def update(self, layer, k, v):
        cache_k, cache_v = self.cache.layer(layer, k)
        # row b's new key goes to position lengths[b]: one indexed write, no host-side lengths
        cache_k[self.row_index, :, self.cache.lengths] = k[:, :, 0]
        cache_v[self.row_index, :, self.cache.lengths] = v[:, :, 0]
        if self.masked and self.mask is None:
            # an additive mask, made once per step: SDPA would turn a boolean one into this in every layer
            self.mask = torch.zeros(self.hidden.shape, dtype=k.dtype, device=k.device).masked_fill_(self.hidden, -float("inf"))
        return cache_k[:, :, : self.span], cache_v[:, :, : self.span], self.mask


# -- sampling -------------------------------------------------------------------------------------------


def mix32(x):
    """A 32-bit integer hash (xor-shift-multiply rounds) on int64 tensors, or Python ints, below 2^32.
    The multipliers are below 2^31, so no product overflows int64."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x = x ^ (x >> 15)
    x = (x * 0x21F0AAAD) & 0xFFFFFFFF
    return x ^ (x >> 15)


def stream_key(seed):
    """A row's random stream: its seed, hashed once when the row joins (not at every step)."""
    return mix32(seed & 0xFFFFFFFF)


@functools.lru_cache(maxsize=8)
def column_keys(n, device):
    """Each token id hashed, made once per vocabulary and device: a CUDA graph keeps it as a constant,
    where hashing the ids inside the step would be a dozen more kernels per token."""
    return mix32(torch.arange(n, device=device))


def uniform_noise(streams, steps, n):
    """(B, n) numbers in (0, 1), each a hash of (row's stream key, row's step, column) alone: every row
    has a random stream of its own, the same on any device and in any batch, and drawing costs no
    generator state (so a CUDA graph can replay it). Steps stay far below 2^32."""
    row = mix32(streams ^ steps)
    bits = mix32(row[:, None] ^ column_keys(n, streams.device)[None, :])
    return ((bits >> 8).float() + 0.5) / (1 << 24)  # 24 bits: exact in float32, never 0 or 1


def sample_tokens(logits, temperature, top_k, top_p, streams, steps, filtered=True):
    """One token id per row from (B, vocab) logits; every setting is a (B,) tensor, one value per row,
    streams holding each row's stream_key(seed).

    temperature 0 is greedy. top_k (the vocabulary size to keep all) keeps the k most likely tokens;
    top_p (1.0 to keep all) then keeps the fewest most likely tokens whose probabilities reach top_p.
    filtered=False skips both (every row keeps all). The draw is Gumbel-max: the argmax of
    logits / temperature - log(-log(u)) is distributed as softmax(logits / temperature).
    """
    logits = logits.float()
    greedy = logits.argmax(dim=-1)
    scaled = logits / temperature.clamp_min(1e-6)[:, None]
    if filtered:
        sorted_logits, order = torch.sort(scaled, dim=-1, descending=True)
        rank = torch.arange(logits.size(-1), device=logits.device)
        drop = rank[None, :] >= top_k[:, None]
        probs = F.softmax(sorted_logits.masked_fill(drop, -float("inf")), dim=-1)
        # drop a token when the ones more likely than it already reach top_p (the first always stays)
        drop |= probs.cumsum(dim=-1) - probs >= top_p[:, None]
        scaled = scaled.masked_fill(torch.zeros_like(drop).scatter(1, order, drop), -float("inf"))
    gumbel = -torch.log(-torch.log(uniform_noise(streams, steps, logits.size(-1))))
    drawn = (scaled + gumbel).argmax(dim=-1)
    return torch.where(temperature == 0, greedy, drawn)


# -- the engine -----------------------------------------------------------------------------------------


class Rows:
    """A batch of rows on the device (pending token, cache, sampling settings, what each generated) and
    on the host (each row's prompt, its context start, how many tokens its cache holds and how many it
    generated). Rows join (add) and leave (keep) between steps: the server's batch changes as requests
    come and go, and generate() drops rows that finished."""

    STEP_STATE = ("tokens", "temperature", "top_k", "top_p", "streams", "steps")  # what a decode step reads

    def __init__(self, config, vocab_size, device):
        self.vocab_size, self.device = vocab_size, device
        self.index, self.prompts, self.prompt_lengths, self.sampling = [], [], [], []
        self.cache_start = []  # where each row's cached context begins (None: no cache yet)
        self.cache_length = []
        self.counts = []  # tokens each row generated so far
        self.cache = KVCache(config, 0, device)
        self.tokens = torch.zeros((0, 1), dtype=torch.long, device=device)
        self.generated = torch.zeros((0, 0), dtype=torch.long, device=device)
        self.temperature = torch.zeros(0, device=device)
        self.top_k = torch.zeros(0, dtype=torch.long, device=device)
        self.top_p = torch.zeros(0, device=device)
        self.streams = torch.zeros(0, dtype=torch.long, device=device)
        self.steps = torch.zeros(0, dtype=torch.long, device=device)
        self.changed()

    def __len__(self):
        return len(self.index)

    def add(self, prompts, sampling, max_new_tokens, index=None):
        """New rows at the end of the batch: their prompts (lists of ids), a Sampling each, room for
        max_new_tokens each, and their places in the caller's list (default: after the last)."""
        n, device = len(prompts), self.device
        first = len(self.index)
        self.index += list(range(first, first + n)) if index is None else list(index)
        self.prompts += [torch.tensor(p, dtype=torch.long, device=device) for p in prompts]
        self.prompt_lengths += [len(p) for p in prompts]
        self.sampling += sampling
        self.cache_start += [None] * n
        self.cache_length += [0] * n
        self.counts += [0] * n
        self.cache = self.cache.with_rows(added=n)
        new = dict(
            tokens=torch.tensor([[p[-1]] for p in prompts], dtype=torch.long, device=device),
            temperature=torch.tensor([s.temperature for s in sampling], dtype=torch.float32, device=device),
            top_k=torch.tensor([min(s.top_k or self.vocab_size, self.vocab_size) for s in sampling], dtype=torch.long, device=device),
            top_p=torch.tensor([1.0 if s.top_p is None else s.top_p for s in sampling], dtype=torch.float32, device=device),
            streams=torch.tensor([stream_key(s.seed) for s in sampling], dtype=torch.long, device=device),
            steps=torch.zeros(n, dtype=torch.long, device=device),
        )
        for name, tensor in new.items():
            setattr(self, name, torch.cat([getattr(self, name), tensor]))
        width = max(self.generated.shape[1], max_new_tokens)
        grown = self.generated.new_zeros((len(self.index), width))
        grown[:first, : self.generated.shape[1]] = self.generated
        self.generated = grown
        self.changed()

    def keep(self, rows):
        """Keep only the rows at these positions, in this order."""
        keep = torch.tensor(rows, dtype=torch.long, device=self.device)
        for name in (*self.STEP_STATE, "generated"):
            setattr(self, name, getattr(self, name)[keep])
        self.cache = self.cache.with_rows(keep)
        for name in ("index", "prompts", "prompt_lengths", "sampling", "cache_start", "cache_length", "counts"):
            setattr(self, name, [getattr(self, name)[r] for r in rows])
        self.changed()

    def changed(self):
        """After rows joined or left: what the whole batch needs, and no graph yet for its new shape."""
        self.greedy = all(s.temperature == 0 for s in self.sampling)
        self.filtered = any(
            s.top_k is not None and s.top_k < self.vocab_size or s.top_p is not None and s.top_p < 1 for s in self.sampling
        )
        self.graph = None

    def sequence(self, row, start, end):
        """Tokens start..end-1 of a row's prompt followed by what it generated, as a device tensor."""
        P = self.prompt_lengths[row]
        parts = [self.prompts[row][min(start, P) : min(end, P)], self.generated[row, max(start - P, 0) : max(end - P, 0)]]
        return torch.cat(parts)


class Engine:
    """Generates from a model that inference_model() prepared. use_cache=False recomputes each row's whole
    context every step (the reference the cache is tested against); cuda_graph (default: on CUDA, with
    the cache) replays the decode step as a CUDA graph. capture_seconds adds up the time spent capturing."""

    def __init__(self, model, use_cache=True, cuda_graph=None, fixed_span=None):
        self.model = model
        self.config = model.config
        self.device = next(model.parameters()).device
        self.use_cache = use_cache
        self.cuda_graph = (self.device.type == "cuda" and use_cache) if cuda_graph is None else cuda_graph
        if self.cuda_graph and not (use_cache and self.device.type == "cuda"):
            raise ValueError("cuda_graph needs the KV cache and a CUDA device")
        # the graph's step attends over the whole cache under a mask; fixed_span=True runs that same
        # step eagerly, so the CPU tests check what a graph replays
        self.fixed_span = self.cuda_graph if fixed_span is None else fixed_span
        self.capture_seconds = 0.0
        self.graphs = {}  # (rows, greedy, filtered, vocab_size) -> the graph and the tensors it reads and writes

    @torch.no_grad()
    def generate(self, prompts, max_new_tokens, sampling, vocab_size=None, on_token=None, stop=None, stop_interval=None):
        """New tokens for each prompt (a list of lists of token ids): a list of lists of ids.

        sampling: one Sampling for every row, or a list with one per row. vocab_size keeps the padding
        ids of a padded vocabulary (GPT-2's 50257 padded to 50304) from being drawn. on_token(rows,
        tokens), if given, is called after each step with the rows' places in `prompts` and their new
        tokens, a (len(rows),) device tensor. stop(row, ids), if given, is asked every stop_interval
        steps (default 1 on the CPU, 8 on CUDA: each ask waits for the device) with a row's place and
        the ids it generated so far; it returns None to go on, or how many of the ids to keep, which
        ends the row. Finished rows leave the batch once they are half of it.
        """
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        vocab_size = vocab_size or self.config.vocab_size
        sampling = sampling if isinstance(sampling, list) else [sampling] * len(prompts)
        rows = Rows(self.config, vocab_size, self.device)
        rows.add(prompts, sampling, max_new_tokens)
        stop_interval = stop_interval or (8 if self.device.type == "cuda" else 1)
        results = [None] * len(prompts)
        for step in range(max_new_tokens):
            tokens = self.step(rows)
            if on_token is not None:
                on_token(rows.index, tokens)
            last = step == max_new_tokens - 1
            if stop is not None and ((step + 1) % stop_interval == 0 or last):
                ids = rows.generated[:, : step + 1].tolist()
                for r, row in enumerate(rows.index):
                    cut = stop(row, ids[r]) if results[row] is None else None
                    if cut is not None:
                        results[row] = ids[r][:cut]
                unfinished = [r for r, row in enumerate(rows.index) if results[row] is None]
                if not unfinished:
                    break
                if len(unfinished) <= len(rows) // 2 and not last:
                    rows.keep(unfinished)  # a smaller batch from here on (a graph for its size)
        ids = rows.generated[:, : rows.counts[0]].tolist()
        for r, row in enumerate(rows.index):
            if results[row] is None:
                results[row] = ids[r]
        return results

    @torch.no_grad()
    def step(self, rows):
        """One new token for every row of `rows` (a Rows): returns them, a (len(rows),) device tensor,
        and records them in rows.generated."""
        # torch 2.11 sends bf16 attention on Hopper to cuDNN first, which builds an execution plan for every
        # new shape, and a growing context is a new shape at every token: eager bf16 decoding of the 6 x 384
        # model took 20 ms a token on an H100 against 1.3 ms for a bare forward. Flash and memory-efficient
        # attention need no plans. The choice wraps the whole step, graph capture included: wrapping each
        # forward instead (capture then chooses inside torch.cuda.graph) measured 2x slower graph replay
        # for GPT-2 at batch 1 on an H200 (769 against 1,532 tokens/s; cause not established).
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
            if not self.use_cache:
                self._recompute(rows)
            else:
                self._prefill_where_needed(rows)
                if not self.cuda_graph:
                    self._decode(rows, self.fixed_span)
        if self.use_cache and self.cuda_graph:
            rows.graph = rows.graph or self._graph_for(rows)
            rows.graph.replay()
        row_index, _ = rows.cache.index()
        rows.generated[row_index, rows.steps - 1] = rows.tokens[:, 0]
        rows.counts = [count + 1 for count in rows.counts]
        return rows.tokens[:, 0]

    @torch.no_grad()
    def token_logprobs(self, ids, top=0, vocab_size=None):
        """For a sequence within the context: each token's log-probability given the tokens before it
        (None for the first), and at each place the `top` most likely tokens with theirs, as a list of
        {id: logprob} (None for the first)."""
        vocab_size = vocab_size or self.config.vocab_size
        x = torch.tensor([ids], dtype=torch.long, device=self.device)
        logits, _ = self.model(x, targets=torch.full_like(x, -1))  # targets: the logits of every position
        logprobs = F.log_softmax(logits[0, :-1, :vocab_size].float(), dim=-1)
        chosen = logprobs.gather(1, x[0, 1:, None])[:, 0].tolist()
        tops = [None] * len(chosen)
        if top:
            values, indices = logprobs.topk(top, dim=-1)
            tops = [dict(zip(i, v)) for i, v in zip(indices.tolist(), values.tolist())]
        return [None, *chosen], [None, *tops]

    def _prefill_where_needed(self, rows):
        """Before a step, encode from scratch the context of each row whose context has moved (its first
        step, or a cut past block_size): every token of it but the pending one, which the decode step feeds."""
        by_length = {}  # rows to re-encode, grouped by context length so each group is one forward
        for r in range(len(rows)):
            total = rows.prompt_lengths[r] + rows.counts[r]  # tokens so far, the pending one included
            start = context_start(total, self.config.block_size)
            if start != rows.cache_start[r]:
                rows.cache_start[r], rows.cache_length[r] = start, total - 1 - start
                by_length.setdefault(total - 1 - start, []).append((r, start, total))
            else:
                rows.cache_length[r] += 1  # last step's token
        for length, members in by_length.items():
            index = torch.tensor([r for r, _, _ in members], dtype=torch.long, device=self.device)
            rows.cache.lengths[index] = length
            if length == 0:
                continue
            context = torch.stack([rows.sequence(r, start, total - 1) for r, start, total in members])
            self.model(context, cache=Prefill(rows.cache, index, length))

    def _decode(self, rows, fixed_span=False):
        """One token for every row: feed the pending token, draw the next one. fixed_span (for a graph)
        attends over the whole cache; otherwise as far as the longest row, masked only if rows differ."""
        lengths = rows.cache_length
        span = self.config.block_size if fixed_span else max(lengths) + 1
        view = Decode(rows.cache, span, masked=fixed_span or min(lengths) != max(lengths))
        logits, _ = self.model(rows.tokens, cache=view)
        self._draw(rows, logits[:, -1, : rows.vocab_size])
        rows.cache.lengths += 1

    def _recompute(self, rows):
        """One token for every row from a full forward over its context (no cache); rows whose
        contexts have the same length share a forward."""
        by_length, vocab_size = {}, rows.vocab_size
        for r in range(len(rows)):
            end = rows.prompt_lengths[r] + rows.counts[r]  # tokens so far, the pending one included
            start = context_start(end, self.config.block_size)
            by_length.setdefault(end - start, []).append((r, start, end))
        logits = torch.empty((len(rows), vocab_size), device=self.device)
        for members in by_length.values():
            context = torch.stack([rows.sequence(r, start, end) for r, start, end in members])
            out, _ = self.model(context)
            logits[[r for r, _, _ in members]] = out[:, -1, :vocab_size].float()
        self._draw(rows, logits)

    def _draw(self, rows, logits):
        if rows.greedy:
            torch.argmax(logits, dim=-1, keepdim=True, out=rows.tokens)
        else:
            rows.tokens[:, 0] = sample_tokens(logits, rows.temperature, rows.top_k, rows.top_p, rows.streams, rows.steps, rows.filtered)
        rows.steps += 1

    def _graph_for(self, rows):
        """The decode step's CUDA graph for a batch of this size, captured the first time. A graph reads
        and writes fixed tensors, so a later batch of the same size copies its state into those."""
        key = (len(rows), rows.greedy, rows.filtered, rows.vocab_size)
        if key not in self.graphs:
            graph = self._capture(rows)
            self.graphs[key] = (graph, rows.cache, {name: getattr(rows, name) for name in Rows.STEP_STATE})
            return graph
        graph, cache, tensors = self.graphs[key]
        for name, tensor in tensors.items():
            setattr(rows, name, tensor.copy_(getattr(rows, name)))
        cache.lengths.copy_(rows.cache.lengths)
        if rows.cache.k is not None:
            cache.k.copy_(rows.cache.k)
            cache.v.copy_(rows.cache.v)
        rows.cache = cache  # the graph's own cache object: Rows never changes one in place, only replaces it
        return graph

    def _capture(self, rows):
        """Capture one decode step as a CUDA graph over rows' tensors. The warm-up step before it
        (kernel choice, workspaces) writes keys at each row's next position, which the first real step
        overwrites; the tensors it advances are put back."""
        t0 = time.perf_counter()
        saved = [t.clone() for t in (rows.tokens, rows.steps, rows.cache.lengths)]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._decode(rows, fixed_span=True)
        torch.cuda.current_stream().wait_stream(side)
        for tensor, value in zip((rows.tokens, rows.steps, rows.cache.lengths), saved):
            tensor.copy_(value)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._decode(rows, fixed_span=True)
        torch.cuda.synchronize()
        self.capture_seconds += time.perf_counter() - t0
        return graph
