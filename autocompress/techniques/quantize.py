"""Weight quantization: symmetric, per output channel, trained with straight-through gradients.

During fine-tuning the weights pass through ``torch.fake_quantize_per_channel_affine`` (forward:
rounded to ``2**(bits-1) - 1`` levels each side of zero; backward: gradients pass straight
through), so the student learns weights that survive rounding: quantization-aware distillation.
Zero stays exactly zero, so pruned weights stay pruned. ``bits=16`` stores float16, ``32`` is off.
The chosen width is left on each layer as ``weight_bits`` for the stored-size measurement.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from autocompress.packing import BITS_ATTRIBUTE, qmax
from autocompress.params import Param
from autocompress.plan import Plan
from autocompress.techniques.common import Context, weight_layers

BIT_WIDTHS = (2, 3, 4, 5, 6, 8, 16, 32)

PARAMETERS = (
    Param("bits", "choice", 32, "weight bit width of every weight layer (32 = float, off)",
          values=BIT_WIDTHS),
)


class FakeQuantize(nn.Module):
    """Parametrization: per-channel symmetric fake quantization with a straight-through gradient."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.bits == 16:
            return weight.to(torch.float16).to(weight.dtype)
        top = qmax(self.bits)
        peak = weight.detach().flatten(1).abs().amax(dim=1)
        scale = torch.where(peak > 0, peak / top, torch.ones_like(peak)).float()
        zero_point = torch.zeros(weight.shape[0], dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(weight, scale, zero_point, 0, -top, top)


def apply(model: nn.Module, plan: Plan, ctx: Context) -> nn.Module:
    bits = int(plan.get("quantize.bits", 32))
    if bits >= 32:
        return model
    for _, module in weight_layers(model):
        parametrize.register_parametrization(module, "weight", FakeQuantize(bits))
        setattr(module, BITS_ATTRIBUTE, bits)
    return model


def levels_per_channel(weight: torch.Tensor) -> int:
    """The most distinct values any output channel holds (at most 2**bits after quantization)."""
    rows = weight.detach().flatten(1)
    return max(int(torch.unique(row).numel()) for row in rows)
