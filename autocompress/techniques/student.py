"""The distillation student: a shallower, narrower teacher, migrated from its best units.

A flat ``nn.Sequential`` of linear / conv blocks (the LeNets) is cut in two steps, as always:

* depth: ``student.drop_layers`` hidden linear layers (by default those nearest the output) are
  removed. Each is bridged by composing it with the next linear layer (``W' = W_next @ W``,
  ``b' = W_next @ b + b_next``, the activation between them dropped), so the student starts from
  a linear approximation of the teacher's path rather than from nothing. A dropped layer and its
  activation become ``nn.Identity``, so every kept layer keeps its name. Conv layers stay.
* width: each hidden weight layer keeps ``round(width * units)`` output neurons / channels
  (``student.width`` or, per layer, ``student.width.<layer>``), chosen by
  ``student.criterion`` when ``migrate`` is on, or at random and re-initialised when it is off.
  The next layer's inputs are sliced to match, through ``Flatten`` and batch norm. The last weight
  layer keeps all its outputs.

Any other model is cut through its traced graph, no factory needed:

* depth: ``student.drop_layers`` whole blocks whose input and output shapes match are removed
  (residual blocks, a user's own, Hugging Face encoder / decoder layers:
  :mod:`~autocompress.techniques.depth`), chosen by ``student.block_choice``.
* width: every coupled group of units (:mod:`~autocompress.techniques.graph`) keeps
  ``round(width * units)`` of them (at least one; a group's per-layer width is its root layer's),
  the most important by ``student.criterion`` summed over the group (parameter migration), or
  at random and re-initialised without ``migrate``. The model's outputs are never cut, and
  attention projections and embeddings are left out of width (splitting heads is the
  transformer technique's job), so residual adds, depthwise convs and heads stay consistent.

``student_factory`` (through the API) builds the student instead, for what cannot be traced.
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn

from autocompress.errors import TrialError
from autocompress.params import Param, Settings
from autocompress.plan import Plan
from autocompress.techniques import depth, graph
from autocompress.techniques.common import WEIGHT_LAYERS, Context, weight_layers
from autocompress.techniques.depth import CHOICES
from autocompress.techniques.encoder import Encoder
from autocompress.techniques.importance import (
    CRITERIA,
    accumulate_gradients,
    criterion,
    layer_part,
)

PARAMETERS = (
    Param("width", "float", 1.0, "share of each hidden layer's neurons / channels kept",
          low=0.05, high=1.0, per_layer=True),
    Param("drop_layers", "int", 0,
          "hidden linear layers (flat stacks) or whole shape-keeping blocks removed",
          low=0, high=8),
    Param("block_choice", "choice", "last",
          "which layers / blocks drop_layers removes: the last ones, those whose skipping "
          "raises the calibration loss least (ablation), or every other one",
          values=CHOICES),
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


def drop_layers(model: nn.Sequential, count: int, *,
                positions: list[int] | None = None) -> nn.Sequential:
    """A copy without ``count`` hidden linear layers (nearest the output first, or those at
    ``positions``), bridged.

    With ``count`` 0 the model itself is returned: :func:`narrow` makes the copy."""
    if count <= 0:
        return model
    student = copy.deepcopy(model)
    candidates = droppable(student)
    if count > len(candidates):
        raise TrialError(
            f"student.drop_layers: got {count}, this teacher has {len(candidates)} droppable layers"
        )
    dropped = sorted(candidates, reverse=True)[:count] if positions is None else positions
    layers = [i for i, m in enumerate(student) if isinstance(m, WEIGHT_LAYERS)]
    for here in sorted(dropped, reverse=True):
        after = layers[layers.index(here) + 1]
        first, second = student[here], student[after]
        with torch.no_grad():
            bridged = nn.Linear(first.in_features, second.out_features)
            bridged.weight.copy_(second.weight @ first.weight)
            bias = second.weight @ first.bias if first.bias is not None else 0.0
            bridged.bias.copy_(bias + (second.bias if second.bias is not None else 0.0))
        for i in range(here, after):
            student[i] = nn.Identity()
        student[after] = bridged
        layers.remove(here)  # a drop just before this one bridges into this bridge
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


def is_flat(model: nn.Module) -> bool:
    """A flat stack :func:`narrow` and :func:`drop_layers` cut (the LeNets): an ``nn.Sequential``
    of weight layers, norms, ``Flatten`` and parameter-free layers, no grouped conv."""
    if not isinstance(model, nn.Sequential):
        return False
    for module in model:
        if isinstance(module, WEIGHT_LAYERS):
            if getattr(module, "groups", 1) != 1:
                return False
        elif not isinstance(module, (*_NORMS, nn.Flatten, *_PASS_THROUGH)) and any(
                True for _ in module.parameters()):
            return False
    return True


def _flat_student(model: nn.Sequential, plan: Plan, ctx: Context, widths: dict[str, float],
                  dropped: int, migrate: bool) -> nn.Sequential:
    how = str(setting(plan, "student.block_choice"))
    positions = None
    if dropped and how != "last":
        candidates = droppable(model)
        losses = None
        if how == "ablation" and 0 < dropped <= len(candidates):
            x, y = depth.calibration_batch(ctx.train_x, ctx.train_y, seed=plan.seed)
            losses = depth.losses((drop_layers(model, 1, positions=[p]) for p in candidates),
                                  x, y)
        positions = [candidates[i] for i in depth.choose(len(candidates), dropped, how, losses)]
    shallow = drop_layers(model, dropped, positions=positions)
    crit = criterion(str(setting(plan, "student.criterion")))
    scores = None
    if migrate:
        grads = (accumulate_gradients(shallow, ctx.train_x, ctx.train_y, seed=plan.seed)
                 if crit.needs_gradients else {})
        scores = {name: crit.unit_scores(m.weight, grads.get(name))
                  for name, m in shallow.named_children() if isinstance(m, WEIGHT_LAYERS)}
    return narrow(shallow, width=widths, example_input=ctx.example_input, migrate=migrate,
                  seed=plan.seed, scores=scores)


_FACTORY = "give the API a student_factory for this model"


def _drop_blocks(student: nn.Module, plan: Plan, ctx: Context, dropped: int) -> None:
    """Remove ``dropped`` whole blocks from ``student`` in place (:mod:`.depth`)."""
    encoder = Encoder.find(student)
    stack = list(encoder.blocks) if encoder is not None else []
    blocks = depth.find_blocks(student, ctx.example_input)
    how = str(setting(plan, "student.block_choice"))
    losses = None
    if how == "ablation" and 0 < dropped <= len(blocks):
        x, y = depth.calibration_batch(ctx.train_x, ctx.train_y, seed=plan.seed)
        losses = depth.losses(depth.skipping_each(student, blocks), x, y)
    chosen = [blocks[i] for i in depth.choose(len(blocks), dropped, how, losses)]
    depth.drop(student, chosen)
    gone = {id(b.module) for b in chosen}
    if stack and any(id(b) in gone for b in stack):  # block-to-block distillation follows
        ctx.map_blocks([i for i, b in enumerate(stack) if id(b) not in gone])


def _narrow_groups(student: nn.Module, plan: Plan, ctx: Context, migrate: bool) -> None:
    """Every coupled group of ``student`` keeps its width share of units, in place."""
    deps = graph.trace(student, ctx.example_input, what="student.width", advice=_FACTORY)
    groups = graph.unit_groups(student, deps, graph.protected(student, deps))
    start = "student.width."
    explicit = {k[len(start):]: float(v) for k, v in plan.choices.items() if k.startswith(start)}
    default = float(setting(plan, "student.width"))
    crit = criterion(str(setting(plan, "student.criterion")))
    part = None
    if migrate:
        modules = dict(student.named_modules())
        grads = (accumulate_gradients(student, ctx.train_x, ctx.train_y, seed=plan.seed)
                 if crit.needs_gradients else {})
        part = layer_part(crit, {modules[n]: g for n, g in grads.items()})
    generator = torch.Generator().manual_seed(plan.seed)
    removals = []
    for group in groups:
        kept = max(1, round(graph.ratio_of(group, explicit, default) * group.units))
        if kept >= group.units:
            continue
        scores = (graph.group_scores(group, part) if part is not None
                  else torch.rand(group.units, generator=generator))
        removals.append((group, graph.lowest(scores, group.units - kept)))
    graph.cut(deps, removals)
    if not migrate:
        torch.manual_seed(plan.seed)
        for module in student.modules():
            if hasattr(module, "reset_parameters") and module is not student:
                module.reset_parameters()


def apply(model: nn.Module, plan: Plan, ctx: Context) -> nn.Module:
    """The student for ``plan``; the teacher itself (copied) when nothing is cut.

    A ``ctx.student_factory(plan, teacher)`` given through the API builds it instead. A flat
    stack is cut layer by layer (:func:`drop_layers`, :func:`narrow`); any other model through
    its blocks and its traced graph.
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
    if is_flat(model):
        return _flat_student(model, plan, ctx, widths, dropped, migrate)
    student = copy.deepcopy(model)
    if dropped:
        _drop_blocks(student, plan, ctx, dropped)
    if min(widths.values()) < 1.0 or not migrate:
        _narrow_groups(student, plan, ctx, migrate)
    return student
