"""How a row draws its tokens: its sampling options, its own random stream, and the sampler.

A sampling option is declared once, as a field of Sampling made with option(): its default, help and
limits, and the per-row value that keeps every token. sample.py's settings, the server's request
fields, the engine's per-row tensors and the choice to skip the filters all follow from that
declaration; its use is in sample_tokens, which the engine calls with every option's value by name.
"""

import functools
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F

VOCAB_SIZE = "vocab_size"  # keeps_all of an option whose every value from the vocabulary's size up keeps all


def option(default, help, within, keeps_all, filters=False):
    """A sampling option: its default (the API's; sample.py keeps nanoGPT's, see nanogpt/config.py), its
    help, the interval its values lie in, and keeps_all, the per-row value that None stands for (a
    number, or VOCAB_SIZE). filters: it can drop tokens, so a batch where every row keeps all skips the
    sort (sample_tokens' filtered)."""
    return field(
        default=default, metadata=dict(help=help, within=within, choices=None, keeps_all=keeps_all, filters=filters)
    )


@dataclass
class Sampling:
    """How one row draws its tokens: its options, and seed, which picks the row's own random stream."""

    temperature: float = option(
        1.0, "1.0 samples the model as is; lower is more conservative; 0 is greedy", "[0, inf)", keeps_all=1.0
    )
    top_k: int | None = option(
        None,
        "sample only among the top_k most likely tokens; None for all",
        "[1, inf)",
        keeps_all=VOCAB_SIZE,
        filters=True,
    )
    top_p: float | None = option(
        None,
        "nucleus sampling: only the most likely tokens that together reach top_p probability; None for all",
        "(0, 1]",
        keeps_all=1.0,
        filters=True,
    )
    seed: int = 0

    def values(self, vocab_size):
        """What a decode step reads of this row: one number per keyword of sample_tokens."""
        given = asdict(self)
        values = {f.name: row_value(f, given[f.name], vocab_size) for f in sampling_options()}
        return dict(values, stream=stream_key(self.seed))

    def filters(self, vocab_size):
        """Whether this row keeps only some tokens (a batch without any skips the sort)."""
        given = asdict(self)
        return any(
            row_value(f, given[f.name], vocab_size) != row_value(f, None, vocab_size)
            for f in sampling_options()
            if f.metadata["filters"]
        )


def sampling_options():
    """Sampling's options (the fields declared with option())."""
    return [f for f in fields(Sampling) if "keeps_all" in f.metadata]


def row_value(declared, value, vocab_size):
    """The number a decode step reads for one option of one row: keeps_all for None, and a value of a
    VOCAB_SIZE option capped at the vocabulary's size (beyond it, it keeps all too)."""
    keeps_all = declared.metadata["keeps_all"]
    if keeps_all == VOCAB_SIZE:
        keeps_all, value = vocab_size, value if value is None else min(value, vocab_size)
    return keeps_all if value is None else value


def row_values(samplings, vocab_size, device):
    """Each of Sampling.values as a (rows,) tensor: floats as float32, whole numbers as int64 (the kind
    of the value that keeps all)."""
    values = [s.values(vocab_size) for s in samplings]
    return {
        name: torch.tensor(
            [v[name] for v in values], dtype=torch.float32 if isinstance(kind, float) else torch.long, device=device
        )
        for name, kind in Sampling().values(vocab_size).items()
    }


def mix32(x):
    """A 32-bit integer hash (xor-shift-multiply rounds) on int64 tensors, or Python ints, below 2^32.
    The multipliers are below 2^31, so no product overflows int64."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x = x ^ (x >> 15)
    x = (x * 0x21F0AAAD) & 0xFFFFFFFF
    return x ^ (x >> 15)


def stream_key(seed):
    """A row's random stream: its seed, hashed once when the row joins (not at every step). A seed of
    more than 32 bits has its upper bits hashed in too (so 2**32 + 1 is not 1); one of 32 bits or fewer
    keeps the stream it always had. seed: an int, or a tensor of them."""
    narrow = mix32(seed & 0xFFFFFFFF)
    wide = mix32((seed & 0xFFFFFFFF) ^ mix32((seed >> 32) & 0xFFFFFFFF))
    fits = (seed > -(2**32)) & (seed < 2**32)
    return torch.where(fits, narrow, wide) if isinstance(seed, torch.Tensor) else (narrow if fits else wide)


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


def sample_tokens(logits, temperature, top_k, top_p, stream, steps, filtered=True):
    """One token id per row from (B, vocab) logits; every setting is a (B,) tensor, one value per row
    (Sampling.values), stream holding each row's stream_key(seed), steps each row's place in it.

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
    gumbel = -torch.log(-torch.log(uniform_noise(stream, steps, logits.size(-1))))
    drawn = (scaled + gumbel).argmax(dim=-1)
    return torch.where(temperature == 0, greedy, drawn)
