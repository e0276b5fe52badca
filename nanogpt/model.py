"""The whole GPT model, top to bottom, in one file.

A GPT-2 style decoder-only transformer:
    token embedding + learned position embedding
    -> n_layer x Block(LayerNorm -> causal self-attention -> residual, LayerNorm -> MLP -> residual)
    -> final LayerNorm -> linear head tied to the token embedding.
Parameter names follow GPT-2 so that OpenAI / Hugging Face weights map across one to one.

GPTConfig also has switches for the changes that the GPT-2 "speedrun" community found to train faster
(rotary positions, RMSNorm, QK-norm, ReLU^2, untied embeddings, logit soft-capping, zero-init
projections). All are off by default: the default model is GPT-2.
"""

import math
from dataclasses import dataclass, field, fields

import torch
import torch.nn as nn
import torch.utils.checkpoint
from torch.nn import functional as F

from nanogpt import cpu_dropout
from nanogpt.errors import SettingError
from nanogpt.fused_loss import linear_cross_entropy


def switch(default, help, gpt2_format, within=None):
    """An architecture switch. train.py and bench.py take each as a setting of the same name, default,
    help and limits; gpt2_format says whether a model with it changed still exports as a GPT-2 (hf.py)."""
    return field(
        default=default, metadata={"help": help, "within": within, "choices": None, "gpt2_format": gpt2_format}
    )


@dataclass
class GPTConfig:
    block_size: int = 1024  # longest context the position embedding covers
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64: faster matmuls
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm, as GPT-2; False is a little faster
    # training keeps only each block's input and recomputes the rest in backward: same numbers, less memory
    activation_checkpointing: bool = False
    # modern-recipe switches, declared here only: a model with none of them set is a GPT-2
    rotary: bool = switch(False, "rotary position embeddings instead of a learned position table", gpt2_format=False)
    rmsnorm: bool = switch(False, "RMSNorm (scale only, no mean) instead of LayerNorm", gpt2_format=False)
    qk_norm: bool = switch(
        False, "RMS-normalise queries and keys in attention: keeps attention logits tame", gpt2_format=False
    )
    relu2: bool = switch(False, "ReLU^2 MLP activation instead of GELU", gpt2_format=False)
    exact_gelu: bool = switch(
        False,
        "the exact (erf) GELU, as nanoGPT, instead of GPT-2's tanh approximation: cheaper on a CPU",
        gpt2_format=True,
    )
    tie_embeddings: bool = switch(True, "share the token embedding with the output head, as GPT-2", gpt2_format=True)
    logit_softcap: float = switch(
        0.0,
        "if > 0, cap logits smoothly at this value (cap * tanh(logits / cap))",
        gpt2_format=False,
        within="[0, inf)",
    )
    zero_init_proj: bool = switch(
        False, "start the residual projections at zero: each block starts as identity", gpt2_format=True
    )

    def __post_init__(self):
        if self.n_embd % self.n_head != 0:
            raise ConfigError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.rotary and (self.n_embd // self.n_head) % 2 != 0:
            raise ConfigError(f"rotary needs an even head size, but n_embd / n_head = {self.n_embd // self.n_head}")
        if self.relu2 and self.exact_gelu:
            raise ConfigError("relu2 and exact_gelu both choose the MLP's activation; set one of them")


def architecture_switches():
    """GPTConfig's switches (the fields declared with switch())."""
    return [f for f in fields(GPTConfig) if "gpt2_format" in f.metadata]


class ConfigError(SettingError):
    """A model configuration that cannot be built."""


def make_norm(config):
    return nn.RMSNorm(config.n_embd, eps=1e-5) if config.rmsnorm else LayerNorm(config.n_embd, bias=config.bias)


def rotary_tables(config):
    """cos/sin of each position times each frequency, (block_size, head_size / 2)."""
    head_size = config.n_embd // config.n_head
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_size, 2, dtype=torch.float32) / head_size))
    angles = torch.outer(torch.arange(config.block_size, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x, cos, sin):
    """Rotate each pair of channels of x (B, H, T, hs) by its position's angle: q.k then depends on
    positions only through their difference."""
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).type_as(x)


def eager_cpu(x):
    """Is x a CPU tensor outside torch.compile? There torch's dropout is slow, and cpu_dropout does it."""
    return x.device.type == "cpu" and not torch.compiler.is_compiling()


def dropout(x, p, training):
    """F.dropout, drawn by cpu_dropout in eager CPU training."""
    if training and p > 0 and eager_cpu(x):
        return cpu_dropout.dropout(x, p)
    return F.dropout(x, p, training)


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (torch's own cannot drop just the bias)."""

    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        # one matmul makes query, key and value for every head at once
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.qk_norm = config.qk_norm

    def forward(self, x, cache=None, layer=0, rotary=None):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        # (B, T, C) -> (B, n_head, T, head_size): heads become a batch dimension
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if self.qk_norm:
            q, k = F.rms_norm(q, (q.size(-1),)), F.rms_norm(k, (k.size(-1),))
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        mask = None
        if cache is not None:
            # generating: the cache keeps this step's keys/values and hands back all those the new
            # tokens may see, with a mask where rows of the batch hold contexts of different lengths
            k, v, mask = cache.update(layer, k, v)
        if self.training and self.dropout > 0 and cache is None and eager_cpu(q) and q.dtype == torch.float32:
            # torch's CPU attention leaves its fused kernel when there is dropout; this one does not
            y = cpu_dropout.attention_with_dropout(q, k, v, self.dropout)
        else:
            # SDPA picks a flash / memory-efficient kernel where the device has one. A single new token
            # may see every cached one, so it needs no causal mask.
            y = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                dropout_p=self.dropout if self.training else 0.0,
                is_causal=mask is None and T > 1,
            )
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-join the heads
        return dropout(self.c_proj(y), self.dropout, self.training)


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        # GPT-2's tanh GELU, so its weights give its exact outputs; the exact GELU, cheaper on a CPU, for
        # models trained here; or ReLU^2, sparser and cheaper still
        self.act = (
            (lambda h: F.relu(h).square())
            if config.relu2
            else nn.GELU(approximate="none" if config.exact_gelu else "tanh")
        )
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout

    def forward(self, x):
        return dropout(self.c_proj(self.act(self.c_fc(x))), self.dropout, self.training)


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x, cache=None, layer=0, rotary=None):
        # pre-norm: the residual stream itself is never normalised, which keeps deep stacks trainable
        x = x + self.attn(self.ln_1(x), cache, layer, rotary)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=make_norm(config),
            )
        )
        if config.rotary:
            # not parameters: fixed tables, rebuilt rather than saved
            cos, sin = rotary_tables(config)
            self.register_buffer("rotary_cos", cos, persistent=False)
            self.register_buffer("rotary_sin", sin, persistent=False)
        else:
            self.transformer.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            # weight tying: the input embedding and the output projection share one matrix
            self.transformer.wte.weight = self.lm_head.weight

        self.apply(self._init_weights)
        # GPT-2 scales the projections that write into the residual stream by 1/sqrt(2 * n_layer),
        # so the stream's variance does not grow with depth; zero_init_proj starts them at zero
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                if config.zero_init_proj:
                    torch.nn.init.zeros_(p)
                else:
                    torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def get_num_params(self, non_embedding=True):
        """Parameter count. The position embedding is left out by default, as in the GPT-2 paper;
        the token embedding stays in (when tied, it is also the output head)."""
        n_params = sum(p.numel() for p in self.parameters())
        if non_embedding and not self.config.rotary:
            n_params -= self.transformer.wpe.weight.numel()
        return n_params

    def forward(self, idx, targets=None, cache=None, fused_loss=False):
        """Logits (and the loss, given targets) for idx (B, T). While generating, `cache` (see
        nanogpt/generation/engine.py) gives the tokens' positions, (T,) or one row each (B, T), and keeps their keys
        and values; without it idx is a whole context starting at position 0. fused_loss, when training,
        gives the loss alone (logits None) without holding the whole batch's logits (nanogpt/fused_loss.py)."""
        B, T = idx.size()
        if T > self.config.block_size:
            raise ValueError(f"sequence of length {T} is longer than block_size {self.config.block_size}")
        positions = cache.positions if cache is not None else torch.arange(T, device=idx.device)
        x = self.transformer.wte(idx)
        rotary = None
        if self.config.rotary:
            cos, sin = self.rotary_cos[positions], self.rotary_sin[positions]
            if positions.dim() == 2:  # a position per row: the same for every head
                cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
            rotary = (cos, sin)
        else:
            x = x + self.transformer.wpe(positions)
        x = dropout(x, self.config.dropout, self.training)
        recompute = self.config.activation_checkpointing and self.training and torch.is_grad_enabled()
        for layer, block in enumerate(self.transformer.h):
            if recompute:  # the RNG state is kept, so a recomputed dropout draws the same mask
                x = torch.utils.checkpoint.checkpoint(block, x, cache, layer, rotary, use_reentrant=False)
            else:
                x = block(x, cache, layer, rotary)
        x = self.transformer.ln_f(x)
        if fused_loss and targets is not None and torch.is_grad_enabled():
            return None, linear_cross_entropy(x, self.lm_head.weight, targets, self.config.logit_softcap)

        # generating: only the last position's logits are needed, skip the rest of the head
        logits = self.lm_head(x if targets is not None else x[:, -1:, :])
        if self.config.logit_softcap > 0:
            cap = self.config.logit_softcap
            logits = cap * torch.tanh(logits.float() / cap)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def crop_block_size(self, block_size):
        """Shrink the context length, e.g. to fine-tune GPT-2 (1024) with a smaller block."""
        if block_size > self.config.block_size:
            raise ConfigError(f"block_size {block_size} is larger than the model's {self.config.block_size} positions")
        self.config.block_size = block_size
        if self.config.rotary:
            self.rotary_cos, self.rotary_sin = self.rotary_cos[:block_size], self.rotary_sin[:block_size]
        else:
            wpe = self.transformer.wpe.weight
            self.transformer.wpe.weight = nn.Parameter(wpe[:block_size], requires_grad=wpe.requires_grad)

    def grow_vocabulary(self, vocab_size):
        """Add token rows (a chat dataset's turn markers) to a trained model. Each starts as a typical
        embedding, the old rows' mean plus noise at their spread (all at the mean, the markers would be
        one token), from a fixed seed: a LoRA checkpoint, which keeps only its adapters, grows its base again
        to the same rows."""
        old = self.transformer.wte.weight
        if vocab_size <= len(old):
            return
        noise = torch.randn(vocab_size - len(old), old.size(1), generator=torch.Generator().manual_seed(0))
        rows = old.detach().mean(0) + noise.to(old) * old.detach().std(0)
        wte, head = self.transformer.wte, self.lm_head
        wte.weight = nn.Parameter(torch.cat([old.detach(), rows]), requires_grad=old.requires_grad)
        if self.config.tie_embeddings:
            head.weight = wte.weight
        else:
            head.weight = nn.Parameter(torch.cat([head.weight.detach(), rows]), requires_grad=head.weight.requires_grad)
        wte.num_embeddings = head.out_features = self.config.vocab_size = vocab_size

    def estimate_flops_per_token(self):
        """Training FLOPs per token (forward + backward), following the PaLM paper, appendix B."""
        cfg = self.config
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
        return 6 * self.get_num_params() + 12 * L * H * Q * T
