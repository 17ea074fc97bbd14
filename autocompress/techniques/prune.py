"""Unstructured pruning: zero the least important weights, keep them zero while fine-tuning.

The ratio is global: one ranking over every weight layer, so layers with many small weights give
up more. Exactly ``round(ratio * total)`` weights are zeroed (ties broken by position). The mask is
a parametrization, so the forward pass, the gradients and the optimiser all see the pruned weights
and fine-tuning cannot revive them; :func:`autocompress.techniques.common.bake` makes it final.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from autocompress.params import Param
from autocompress.plan import Plan
from autocompress.techniques.common import Context, weight_layers

PARAMETERS = (
    Param("ratio", "float", 0.0, "share of all weights set to zero (global magnitude ranking)",
          low=0.0, high=0.99),
)


class WeightMask(nn.Module):
    """Parametrization ``w -> w * mask`` with a fixed 0/1 mask."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


def magnitude_masks(model: nn.Module, ratio: float) -> dict[str, torch.Tensor]:
    """0/1 masks per weight layer that zero exactly ``round(ratio * total)`` weights globally."""
    layers = weight_layers(model)
    scores = torch.cat([m.weight.detach().abs().reshape(-1) for _, m in layers])
    n_pruned = round(ratio * scores.numel())
    keep = torch.ones_like(scores)
    if n_pruned:
        keep[torch.argsort(scores, stable=True)[:n_pruned]] = 0.0
    masks, start = {}, 0
    for name, module in layers:
        size = module.weight.numel()
        masks[name] = keep[start : start + size].reshape(module.weight.shape)
        start += size
    return masks


def attach_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        parametrize.register_parametrization(modules[name], "weight", WeightMask(mask))
    return model


def sparsity(model: nn.Module) -> float:
    """Share of zeros over all weight-layer weights."""
    layers = weight_layers(model)
    total = sum(m.weight.numel() for _, m in layers)
    zeros = sum(int((m.weight == 0).sum()) for _, m in layers)
    return zeros / max(1, total)


def apply(model: nn.Module, plan: Plan, ctx: Context) -> nn.Module:
    ratio = float(plan.get("prune.ratio", 0.0))
    if ratio <= 0.0:
        return model
    return attach_masks(model, magnitude_masks(model, ratio))
