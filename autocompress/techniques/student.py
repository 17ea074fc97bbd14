"""The distillation student: a narrower copy of the teacher, migrated from its strongest units.

A flat ``nn.Sequential`` of linear / conv blocks is narrowed layer by layer: each hidden layer keeps
``round(width * units)`` output neurons (channels), chosen by the L2 norm of their weights when
``migrate`` is on, or kept at random and re-initialised when it is off. The next layer's inputs are
sliced to match, through ``Flatten`` and batch norm. The last weight layer keeps all its outputs.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from autocompress.errors import TrialError
from autocompress.params import Param
from autocompress.plan import Plan
from autocompress.techniques.common import WEIGHT_LAYERS, Context

PARAMETERS = (
    Param("width", "float", 1.0, "share of each hidden layer's neurons / channels kept",
          low=0.05, high=1.0),
    Param("migrate", "bool", True,
          "start from the teacher's largest-norm units (true) or from random weights (false)"),
)

_PASS_THROUGH = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.Identity,
    nn.Dropout, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def unit_norms(layer: nn.Module) -> torch.Tensor:
    """L2 norm of each output unit's incoming weights: the migration importance."""
    return layer.weight.detach().flatten(1).norm(dim=1)


def _input_shapes(model: nn.Sequential, example_input: torch.Tensor) -> list[tuple[int, ...]]:
    shapes, x = [], example_input
    with torch.no_grad():
        for module in model:
            shapes.append(tuple(x.shape[1:]))
            x = module(x)
    return shapes


def _slice_layer(layer: nn.Module, keep_in: torch.Tensor | None, keep_out: torch.Tensor | None):
    weight = layer.weight.detach()
    bias = layer.bias.detach() if layer.bias is not None else None
    if keep_out is not None:
        weight = weight[keep_out]
        bias = bias[keep_out] if bias is not None else None
    if keep_in is not None:
        weight = weight[:, keep_in]
    new = copy.deepcopy(layer)
    new.weight = nn.Parameter(weight.clone())
    if bias is not None:
        new.bias = nn.Parameter(bias.clone())
    if isinstance(new, nn.Linear):
        new.out_features, new.in_features = weight.shape
    else:
        new.out_channels, new.in_channels = weight.shape[:2]
    return new


def _slice_norm(norm: nn.Module, keep: torch.Tensor) -> nn.Module:
    new = copy.deepcopy(norm)
    new.num_features = len(keep)
    for name in ("weight", "bias"):
        if getattr(norm, name) is not None:
            setattr(new, name, nn.Parameter(getattr(norm, name).detach()[keep].clone()))
    for name in ("running_mean", "running_var"):
        if getattr(norm, name) is not None:
            setattr(new, name, getattr(norm, name)[keep].clone())
    return new


def narrow(
    model: nn.Sequential, *, width: float, example_input: torch.Tensor, migrate: bool = True,
    seed: int = 0,
) -> nn.Sequential:
    """A copy of ``model`` whose hidden weight layers keep ``width`` of their units."""
    if not isinstance(model, nn.Sequential):
        raise TrialError(
            f"student.width needs a flat nn.Sequential teacher, got {type(model).__name__}"
        )
    weight_positions = [i for i, m in enumerate(model) if isinstance(m, WEIGHT_LAYERS)]
    last = weight_positions[-1] if weight_positions else -1
    shapes = _input_shapes(model, example_input)
    generator = torch.Generator().manual_seed(seed)
    keep: torch.Tensor | None = None  # units of the activation flowing into the current module
    layers: list[nn.Module] = []
    for i, module in enumerate(model):
        if isinstance(module, WEIGHT_LAYERS):
            if getattr(module, "groups", 1) != 1:
                raise TrialError(f"student.width: grouped convolution at layer {i} is unsupported")
            keep_out = None
            if i != last:
                units = module.weight.shape[0]
                kept = max(1, round(width * units))
                scores = unit_norms(module) if migrate else torch.rand(units, generator=generator)
                keep_out = torch.sort(torch.topk(scores, kept).indices).values
            layers.append(_slice_layer(module, keep, keep_out))
            keep = keep_out
        elif isinstance(module, _NORMS):
            layers.append(_slice_norm(module, keep) if keep is not None else copy.deepcopy(module))
        elif isinstance(module, nn.Flatten):
            if keep is not None and len(shapes[i]) > 1:
                spatial = int(torch.tensor(shapes[i][1:]).prod())
                keep = (keep[:, None] * spatial + torch.arange(spatial)).reshape(-1)
            layers.append(copy.deepcopy(module))
        elif isinstance(module, _PASS_THROUGH) or not any(True for _ in module.parameters()):
            layers.append(copy.deepcopy(module))
        else:
            raise TrialError(
                f"student.width: cannot narrow layer {i} ({type(module).__name__}); "
                "give the API a student factory instead"
            )
    student = nn.Sequential(*layers)
    if not migrate:
        torch.manual_seed(seed)
        for module in student.modules():
            if hasattr(module, "reset_parameters") and module is not student:
                module.reset_parameters()
    return student


def apply(model: nn.Module, plan: Plan, ctx: Context) -> nn.Module:
    """The student for ``plan``: the teacher itself (copied) at width 1 with migration on."""
    width = float(plan.get("student.width", 1.0))
    migrate = bool(plan.get("student.migrate", True))
    if width >= 1.0 and migrate:
        return copy.deepcopy(model)
    return narrow(model, width=width, example_input=ctx.example_input, migrate=migrate,
                  seed=plan.seed)
