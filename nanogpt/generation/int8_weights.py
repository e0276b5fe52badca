"""int8 weight-only Linear layers for generation (sample.py, serve.py and eval.py's --quantize=int8).

Decoding one token at batch 1 reads every weight once and does little arithmetic with each, so its speed
is the memory bandwidth over the weights' bytes. Stored as int8 with one float scale per output row, a
weight is a quarter of its float32 bytes; the activations stay in the model's dtype, and the matmul
multiplies by the scales after summing. Symmetric rounding to the nearest of 255 levels per row changes
GPT-2's logits by a few tenths of a percent (bench/README.md measures the loss).

The matmul is PyTorch's own int8 weight-only kernel (torch._weight_int8pack_mm, the one torchao's
compiled int8 path lowers to on the CPU): torchao 0.18's Int8WeightOnlyConfig, run eagerly, converts
the whole weight to the activations' dtype at every call, which is slower than float32 (measured by
bench/cpu_generate.py).
"""

import torch
import torch.nn.functional as F
from torch import nn

ROWS_AT_ONCE = 4096


class Int8Linear(nn.Module):
    """linear(x, weight) with weight (out, in) stored as int8 times a scale per output row."""

    def __init__(self, linear):
        super().__init__()
        weight = linear.weight.detach()
        rows = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
        scale = torch.empty(len(weight), dtype=weight.dtype, device=weight.device)
        for first in range(0, len(weight), ROWS_AT_ONCE):  # in slices: the float32 temporaries stay small
            part = weight[first : first + ROWS_AT_ONCE].float()
            # symmetric: the row's largest magnitude maps to 127, so 0 stays exactly 0; the levels are those
            # of the scale as stored (in the weights' dtype), so each is the nearest to its weight
            part_scale = (part.abs().amax(dim=1).clamp(min=1e-12) / 127).to(weight.dtype)
            rows[first : first + ROWS_AT_ONCE] = torch.round(part / part_scale[:, None].float()).clamp(-127, 127)
            scale[first : first + ROWS_AT_ONCE] = part_scale
        self.register_buffer("weight", rows)
        self.register_buffer("scale", scale)
        self.bias = linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x):
        rows = x.reshape(-1, self.in_features)
        # the CPU kernel reads the inner dimension 16 at a time: other widths give wrong sums (torch 2.13)
        if x.device.type == "cpu" and self.in_features % 16 == 0:
            y = torch._weight_int8pack_mm(rows.contiguous(), self.weight, self.scale)
        else:
            y = F.linear(rows, self.weight.to(x.dtype)) * self.scale
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


def quantize_linears(model):
    """Replace every nn.Linear of model (the blocks' matrices and the output head) by an Int8Linear, in
    place; returns how many. A tied input embedding keeps its own copy of the weight in the model's dtype:
    a lookup reads only a row of it."""
    names = [name for name, module in model.named_modules() if type(module) is nn.Linear]
    for name in names:  # one at a time, each float weight freed as its int8 one replaces it
        model.set_submodule(name, Int8Linear(model.get_submodule(name)))
    return len(names)
