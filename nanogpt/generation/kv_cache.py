"""The KV cache, and the two views of it the model sees while generating: a prefill of fresh contexts
and a decode step of one new token per row."""

import torch


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
            cache.k, cache.v = (
                torch.cat([keep(t, 1), empty], dim=1) if added else keep(t, 1) for t in (self.k, self.v)
            )
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
            self.mask = torch.zeros(self.hidden.shape, dtype=k.dtype, device=k.device).masked_fill_(
                self.hidden, -float("inf")
            )
        return cache_k[:, :, : self.span], cache_v[:, :, : self.span], self.mask
