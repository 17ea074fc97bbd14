"""The distillation student: a shallower, narrower teacher, migrated from its best units.

A flat ``nn.Sequential`` of linear / conv blocks is cut in two steps:

* depth: ``student.drop_layers`` hidden linear layers (those nearest the output first) are
  removed. Each is bridged by composing it with the next linear layer (``W' = W_next @ W``,
  ``b' = W_next @ b + b_next``, the activation between them dropped), so the student starts from
  a linear approximation of the teacher's path rather than from nothing. A dropped layer and its
  activation become ``nn.Identity``, so every kept layer keeps its name.
* width: each hidden weight layer keeps ``round(width * units)`` output neurons / channels
  (``student.width`` or, per layer, ``student.width.<layer>``), chosen by
  ``student.criterion`` when ``migrate`` is on, or at random and re-initialised when it is off.
  The next layer's inputs are sliced to match, through ``Flatten`` and batch norm. The last weight
  layer keeps all its outputs.

Conv blocks are never dropped (removing one changes the feature map the next block expects).
Other architectures: pass ``student_factory`` to the API instead.
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn

from autocompress.errors import TrialError
from autocompress.params import Param, Settings
from autocompress.plan import Plan
from autocompress.techniques.common import WEIGHT_LAYERS, Context, weight_layers
from autocompress.techniques.importance import CRITERIA, accumulate_gradients, criterion

PARAMETERS = (
    Param("width", "float", 1.0, "share of each hidden layer's neurons / channels kept",
          low=0.05, high=1.0, per_layer=True),
    Param("drop_layers", "int", 0, "hidden linear layers removed (nearest the output first)",
          low=0, high=8),
    Param("migrate", "bool", True,
          "start from the teacher's most important units (true) or from random weights (false)"),
    Param("criterion", "choice", "l2", "importance criterion choosing the migrated units",
          values=CRITERIA),
)
setting = Settings("student", PARAMETERS)

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
    if isinstance(layer, nn.Linear):
        new = torch.nn.utils.skip_init(nn.Linear, weight.shape[1], weight.shape[0],
                                       bias=bias is not None)
    else:  # a conv: same geometry, new channel counts (skip_init: no wasted initialisation)
        new = torch.nn.utils.skip_init(
            type(layer), weight.shape[1], weight.shape[0], layer.kernel_size,
            stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
            bias=bias is not None, padding_mode=layer.padding_mode)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
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


def droppable(model: nn.Sequential) -> list[int]:
    """Positions of hidden linear layers that can be bridged into the next linear layer."""
    positions = [i for i, m in enumerate(model) if isinstance(m, WEIGHT_LAYERS)]
    found = []
    for here, after in itertools.pairwise(positions):
        between = list(model)[here + 1 : after]
        if (isinstance(model[here], nn.Linear) and isinstance(model[after], nn.Linear)
                and all(isinstance(m, _PASS_THROUGH) for m in between)):
            found.append(here)
    return found


def drop_layers(model: nn.Sequential, count: int) -> nn.Sequential:
    """A copy without ``count`` hidden linear layers (nearest the output first), bridged.

    With ``count`` 0 the model itself is returned: :func:`narrow` makes the copy."""
    if count <= 0:
        return model
    student = copy.deepcopy(model)
    candidates = droppable(student)
    if count > len(candidates):
        raise TrialError(
            f"student.drop_layers: got {count}, this teacher has {len(candidates)} droppable layers"
        )
    positions = [i for i, m in enumerate(student) if isinstance(m, WEIGHT_LAYERS)]
    for here in sorted(candidates, reverse=True)[:count]:
        after = positions[positions.index(here) + 1]
        first, second = student[here], student[after]
        with torch.no_grad():
            bridged = nn.Linear(first.in_features, second.out_features)
            bridged.weight.copy_(second.weight @ first.weight)
            bias = second.weight @ first.bias if first.bias is not None else 0.0
            bridged.bias.copy_(bias + (second.bias if second.bias is not None else 0.0))
        for i in range(here, after):
            student[i] = nn.Identity()
        student[after] = bridged
    return student


def narrow(
    model: nn.Sequential, *, width: float | dict[str, float], example_input: torch.Tensor,
    migrate: bool = True, seed: int = 0, scores: dict[str, torch.Tensor] | None = None,
) -> nn.Sequential:
    """A copy of ``model`` whose hidden weight layers keep ``width`` of their units.

    ``width`` is one share for every layer or a share per layer name; ``scores`` gives each
    layer's unit importance (default: the L2 norm of the unit's weights).
    """
    if not isinstance(model, nn.Sequential):
        raise TrialError(
            f"student: needs a flat nn.Sequential teacher, got {type(model).__name__}"
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
                share = width.get(str(i), 1.0) if isinstance(width, dict) else width
                kept = max(1, round(share * units))
                if not migrate:
                    unit_scores = torch.rand(units, generator=generator)
                else:
                    unit_scores = (scores or {}).get(str(i), unit_norms(module))
                keep_out = torch.sort(torch.topk(unit_scores, kept).indices).values
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
    """The student for ``plan``; the teacher itself (copied) when nothing is cut.

    A ``ctx.student_factory(plan, teacher)`` given through the API builds it instead.
    """
    if ctx.student_factory is not None:
        return ctx.student_factory(plan, model)
    widths = {name: float(setting(plan, "student.width", layer=name))
              for name, _ in weight_layers(model)}
    widths["*"] = float(setting(plan, "student.width"))  # the global share, for any layer
    dropped = int(setting(plan, "student.drop_layers"))
    migrate = bool(setting(plan, "student.migrate"))
    if dropped == 0 and migrate and min(widths.values()) >= 1.0:
        return copy.deepcopy(model)  # nothing to cut
    if not isinstance(model, nn.Sequential):
        raise TrialError(
            f"student: needs a flat nn.Sequential teacher, got {type(model).__name__}; "
            "give the API a student_factory instead"
        )
    shallow = drop_layers(model, dropped)
    crit = criterion(str(setting(plan, "student.criterion")))
    scores = None
    if migrate:
        grads = (accumulate_gradients(shallow, ctx.train_x, ctx.train_y, seed=plan.seed)
                 if crit.needs_gradients else {})
        scores = {name: crit.unit_scores(m.weight, grads.get(name))
                  for name, m in shallow.named_children() if isinstance(m, WEIGHT_LAYERS)}
    return narrow(shallow, width=widths, example_input=ctx.example_input, migrate=migrate,
                  seed=plan.seed, scores=scores)
