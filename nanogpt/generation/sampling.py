"""How a row draws its tokens: its settings, its own random stream, and the sampler.

A new sampling option is a field of Sampling, its per-row value in Sampling.values, and its use in
sample_tokens, which the engine calls with every value by name.
"""

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Sampling:
    """How one row draws its tokens. temperature 0 is greedy; top_k and top_p of None keep every token;
    seed picks the row's own random stream."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0

    def values(self, vocab_size):
        """What a decode step reads of this row: one number per keyword of sample_tokens."""
        return dict(
            temperature=float(self.temperature),
            top_k=min(self.top_k or vocab_size, vocab_size),
            top_p=1.0 if self.top_p is None else float(self.top_p),
            stream=stream_key(self.seed),
        )

    def filters(self, vocab_size):
        """Whether this row keeps only some tokens (a batch without any skips the sort)."""
        return self.top_k is not None and self.top_k < vocab_size or self.top_p is not None and self.top_p < 1


def row_values(samplings, vocab_size, device):
    """Each of Sampling.values as a (rows,) tensor: floats as float32, whole numbers as int64."""
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
