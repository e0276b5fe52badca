"""Generation: prompts in, tokens out. sample.py, the benchmarks and the tests all go through Engine.

Each prompt is a row of one batch, with its own length, position and random stream, so a row's tokens
are the same whatever else is in the batch. With the KV cache (the default) a row's context goes through
the model once (prefill) and then one token per step (decode). The decode step has fixed shapes: the
cache is allocated once for block_size tokens per row, positions and lengths are tensors, and each row
attends to the whole cache under a mask of its own length. On CUDA that step is captured once as a CUDA
graph and replayed per token, so a token costs one launch instead of a hundred kernels' worth of Python.
On the CPU the step runs eagerly, attending only as far as the longest row.
"""

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from nanogpt.generation.kv_cache import Decode, KVCache, Prefill
from nanogpt.generation.sampling import Sampling, row_values, sample_tokens
from nanogpt.generation.int8_weights import quantize_linears


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


def inference_model(model, device, dtype, quantize="none"):
    """The model on `device` in eval mode, its weights in `dtype` ('float32', 'bfloat16', 'float16'),
    and with quantize='int8' its matrices in int8 (nanogpt/generation/int8_weights.py).

    Generation casts the weights once rather than running under autocast, which would cast every
    weight matrix again at every token. The rotary tables stay float32: angles need the precision."""
    model = model.eval().to(device=device, dtype=getattr(torch, dtype))
    if model.config.rotary:
        model.rotary_cos, model.rotary_sin = model.rotary_cos.float(), model.rotary_sin.float()
    if quantize == "int8":
        quantize_linears(model)
    return model


# -- a batch of rows ------------------------------------------------------------------------------------


@dataclass
class StepTensors:
    """What a decode step reads and writes, one entry per row: the pending token, how many tokens each
    row drew (its place in its random stream), and its sampling values (Sampling.values, by name).
    A CUDA graph holds these very tensors, so a batch it replays copies its own into them."""

    tokens: torch.Tensor  # (rows, 1)
    steps: torch.Tensor  # (rows,)
    sampling: dict  # name -> (rows,)

    def tensors(self):
        return [self.tokens, self.steps, *self.sampling.values()]

    def _new(self, tensors):
        return StepTensors(tensors[0], tensors[1], dict(zip(self.sampling, tensors[2:])))

    def select(self, index):
        """These rows' entries, in this order (index: a tensor of row numbers)."""
        return self._new([t[index] for t in self.tensors()])

    def extend(self, other):
        """These rows followed by other's."""
        return self._new([torch.cat([a, b]) for a, b in zip(self.tensors(), other.tensors())])

    def copy_(self, other):
        """other's values written into these tensors, which keep their addresses; returns self."""
        for mine, theirs in zip(self.tensors(), other.tensors()):
            mine.copy_(theirs)
        return self


@dataclass
class Row:
    """One row's facts on the host: its place in the caller's list, its prompt (a device tensor), how it
    samples (and whether that drops tokens: Sampling.filters, asked once), where its cached context
    begins (None: no cache yet) and how many tokens it generated."""

    index: int
    prompt: torch.Tensor
    sampling: Sampling
    filters: bool
    cache_start: int | None = None
    count: int = 0

    @property
    def length(self):
        return len(self.prompt) + self.count  # tokens so far, the pending one included


@dataclass
class Rows:
    """A batch of rows: each one's host facts (Row), and on the device the step's tensors, the KV cache
    and what each generated. Rows join (add) and leave (keep) between steps: the server's batch changes as
    requests come and go, and generate() drops rows that finished. Joining and leaving replace the device
    tensors rather than writing into them, so a CUDA graph that holds the old ones stays valid."""

    config: object  # the model's GPTConfig
    vocab_size: int
    device: torch.device
    members: list = field(default_factory=list)
    state: StepTensors = None
    cache: KVCache = None
    generated: torch.Tensor = None  # (rows, max_new_tokens)
    graph: object = None  # the DecodeGraph this batch replays; None after any change

    def __post_init__(self):
        no_rows = torch.zeros(0, dtype=torch.long, device=self.device)
        self.state = StepTensors(no_rows[:, None], no_rows, row_values([], self.vocab_size, self.device))
        self.cache = KVCache(self.config, 0, self.device)
        self.generated = torch.zeros((0, 0), dtype=torch.long, device=self.device)

    def __len__(self):
        return len(self.members)

    @property
    def index(self):
        return [row.index for row in self.members]

    @property
    def counts(self):
        return [row.count for row in self.members]

    @property
    def greedy(self):
        return all(row.sampling.temperature == 0 for row in self.members)

    @property
    def filtered(self):
        return any(row.filters for row in self.members)

    def add(self, prompts, sampling, max_new_tokens, index=None):
        """New rows at the end of the batch: their prompts (lists of ids), a Sampling each, room for
        max_new_tokens each, and their places in the caller's list (default: after the last)."""
        first, n = len(self.members), len(prompts)
        places = range(first, first + n) if index is None else index
        self.members += [
            Row(i, torch.tensor(p, dtype=torch.long, device=self.device), s, s.filters(self.vocab_size))
            for i, p, s in zip(places, prompts, sampling)
        ]
        self.cache = self.cache.with_rows(added=n)
        pending = torch.tensor([[p[-1]] for p in prompts], dtype=torch.long, device=self.device)
        self.state = self.state.extend(
            StepTensors(
                pending,
                torch.zeros(n, dtype=torch.long, device=self.device),
                row_values(sampling, self.vocab_size, self.device),
            )
        )
        grown = self.generated.new_zeros((len(self.members), max(self.generated.shape[1], max_new_tokens)))
        grown[:first, : self.generated.shape[1]] = self.generated
        self.generated, self.graph = grown, None

    def keep(self, rows):
        """Keep only the rows at these positions, in this order."""
        keep = torch.tensor(rows, dtype=torch.long, device=self.device)
        self.members = [self.members[r] for r in rows]
        self.state, self.generated, self.cache = (
            self.state.select(keep),
            self.generated[keep],
            self.cache.with_rows(keep),
        )
        self.graph = None

    def sequence(self, r, start, end):
        """Tokens start..end-1 of row r's prompt followed by what it generated, as a device tensor."""
        prompt = self.members[r].prompt
        P = len(prompt)
        return torch.cat([prompt[min(start, P) : min(end, P)], self.generated[r, max(start - P, 0) : max(end - P, 0)]])


# -- the engine -----------------------------------------------------------------------------------------


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
        self.graphs = {}  # (rows, greedy, filtered, vocab_size) -> its DecodeGraph

    @torch.no_grad()
    def generate(
        self, prompts, max_new_tokens, sampling, vocab_size=None, on_token=None, stop=None, stop_interval=None
    ):
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
        state = rows.state
        row_index, _ = rows.cache.index()
        rows.generated[row_index, state.steps - 1] = state.tokens[:, 0]
        for row in rows.members:
            row.count += 1
        return state.tokens[:, 0]

    @torch.no_grad()
    def token_logprobs(self, ids, top=0, vocab_size=None):
        """For a sequence: each token's log-probability given the tokens before it (None for the first),
        and at each place the `top` most likely tokens with theirs, as a list of {id: logprob} (None for
        the first). Past the context, a token is scored on the context generation gives it
        (context_start): the tokens that share one are scored by one forward pass."""
        vocab_size = vocab_size or self.config.vocab_size
        if len(ids) < 2:
            return [None] * len(ids), [None] * len(ids)
        groups = []  # [context start, first token, last token]: tokens whose context starts at one place
        for t in range(1, len(ids)):
            start = context_start(t, self.config.block_size)
            if groups and groups[-1][0] == start:
                groups[-1][2] = t
            else:
                groups.append([start, t, t])
        rows = []
        for start, first, last in groups:
            x = torch.tensor([ids[start:last]], dtype=torch.long, device=self.device)
            logits, _ = self.model(x, targets=torch.full_like(x, -1))  # targets: the logits of every position
            rows.append(F.log_softmax(logits[0, first - 1 - start :, :vocab_size].float(), dim=-1))
        logprobs = torch.cat(rows)
        targets = torch.tensor(ids[1:], dtype=torch.long, device=self.device)
        chosen = logprobs.gather(1, targets[:, None])[:, 0].tolist()
        tops = [None] * len(chosen)
        if top:
            values, indices = logprobs.topk(min(top, vocab_size), dim=-1)
            tops = [dict(zip(i, v)) for i, v in zip(indices.tolist(), values.tolist())]
        return [None, *chosen], [None, *tops]

    def _prefill_where_needed(self, rows):
        """Before a step, encode from scratch the context of each row whose context has moved (its first
        step, or a cut past block_size): every token of it but the pending one, which the decode step feeds."""
        by_length = {}  # rows to re-encode, grouped by context length so each group is one forward
        for r, row in enumerate(rows.members):
            start = context_start(row.length, self.config.block_size)
            if start != row.cache_start:
                row.cache_start = start
                by_length.setdefault(row.length - 1 - start, []).append((r, start, row.length))
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
        # what each row's cache holds (every token but the pending one), known on the host without
        # reading the device's lengths back
        lengths = [row.length - 1 - row.cache_start for row in rows.members]
        span = self.config.block_size if fixed_span else max(lengths) + 1
        view = Decode(rows.cache, span, masked=fixed_span or min(lengths) != max(lengths))
        logits, _ = self.model(rows.state.tokens, cache=view)
        self._draw(rows, logits[:, -1, : rows.vocab_size])
        rows.cache.lengths += 1

    def _recompute(self, rows):
        """One token for every row from a full forward over its context (no cache); rows whose
        contexts have the same length share a forward."""
        by_length, vocab_size = {}, rows.vocab_size
        for r, row in enumerate(rows.members):
            start = context_start(row.length, self.config.block_size)
            by_length.setdefault(row.length - start, []).append((r, start, row.length))
        logits = torch.empty((len(rows), vocab_size), device=self.device)
        for members in by_length.values():
            context = torch.stack([rows.sequence(r, start, end) for r, start, end in members])
            out, _ = self.model(context)
            logits[[r for r, _, _ in members]] = out[:, -1, :vocab_size].float()
        self._draw(rows, logits)

    def _draw(self, rows, logits):
        state = rows.state
        if rows.greedy:
            torch.argmax(logits, dim=-1, keepdim=True, out=state.tokens)
        else:
            state.tokens[:, 0] = sample_tokens(logits, steps=state.steps, filtered=rows.filtered, **state.sampling)
        state.steps += 1

    def _graph_for(self, rows):
        """The decode step's CUDA graph for a batch of this size, captured the first time; a later batch
        of the same size moves its state into the graph's own tensors."""
        key = (len(rows), rows.greedy, rows.filtered, rows.vocab_size)
        if key not in self.graphs:
            t0 = time.perf_counter()
            self.graphs[key] = DecodeGraph(rows, lambda: self._decode(rows, fixed_span=True))
            self.capture_seconds += time.perf_counter() - t0
        else:
            self.graphs[key].adopt(rows)
        return self.graphs[key]


class DecodeGraph:
    """One decode step captured as a CUDA graph over a batch's tensors (its StepTensors and KV cache),
    which it keeps: a graph reads and writes fixed addresses, so another batch of the same size copies
    its state into them (adopt) and uses them from then on."""

    def __init__(self, rows, decode):
        """Capture decode() over rows' tensors. The warm-up step before it (kernel choice, workspaces)
        writes keys at each row's next position, which the first real step overwrites; the tensors it
        advances are put back."""
        advanced = (rows.state.tokens, rows.state.steps, rows.cache.lengths)
        saved = [t.clone() for t in advanced]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            decode()
        torch.cuda.current_stream().wait_stream(side)
        for tensor, value in zip(advanced, saved):
            tensor.copy_(value)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            decode()
        torch.cuda.synchronize()
        self.state, self.cache = rows.state, rows.cache

    def adopt(self, rows):
        """Move rows' state into the graph's tensors; rows then uses them (Rows never writes into a
        cache or StepTensors it replaced, so the graph's stay its own)."""
        rows.state = self.state.copy_(rows.state)
        self.cache.lengths.copy_(rows.cache.lengths)
        if rows.cache.k is not None:
            self.cache.k.copy_(rows.cache.k)
            self.cache.v.copy_(rows.cache.v)
        rows.cache = self.cache

    def replay(self):
        self.graph.replay()
