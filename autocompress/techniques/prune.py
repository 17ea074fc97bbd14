"""Pruning: zero the least important weights, or remove whole neurons / channels for real.

* ``prune.kind: unstructured`` zeroes single weights. The ratio is global (one ranking over every
  unprotected weight layer: exactly ``round(ratio * total)`` weights) or per layer
  (``prune.ratio.<layer>``). The mask is a parametrization, so the forward pass, the gradients and
  the optimiser all see the pruned weights and fine-tuning cannot revive them. With
  ``prune.schedule: linear`` or ``cubic`` the sparsity grows epoch by epoch to its target (the
  cubic schedule of Zhu & Gupta 2017), the mask recomputed each epoch from the current weights.
* ``prune.kind: structured`` removes whole units through torch-pruning's dependency graph, one
  coupled group at a time (a residual trunk is one group: the stem, every block's last conv and
  batch norm, every consumer's inputs): each group is scored once, over every layer producing its
  units, and loses exactly ``round(ratio * units)`` of them, keeping one at least (:mod:`.graph`;
  a per-layer ratio is the group's root layer's, the first in definition order). The model's
  outputs, attention projections and embeddings are never cut. The model is physically smaller;
  parameters and MACs before and after are noted on the context (``ctx.note``).

The criterion (:mod:`autocompress.techniques.importance`) is a choice too; gradient and Taylor
criteria get their gradients from calibration batches of the training split, computed here.
A provider's criterion (``nni.*``: :mod:`autocompress.techniques.providers`) computes the masks
itself from calibration data: they are kept as masks (unstructured) or become the units removed
(structured).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from autocompress.errors import TrialError
from autocompress.params import Param, Settings
from autocompress.plan import Plan
from autocompress.techniques import graph, providers
from autocompress.techniques.common import Context, weight_layers
from autocompress.techniques.encoder import Encoder
from autocompress.techniques.importance import (
    CRITERIA,
    MaskCriterion,
    accumulate_gradients,
    criterion,
    layer_part,
)

PARAMETERS = (
    Param("ratio", "float", 0.0, "share of weights (unstructured) or units (structured) removed",
          low=0.0, high=0.99, per_layer=True),
    Param("kind", "choice", "unstructured", "zero single weights, or remove whole units",
          values=("unstructured", "structured")),
    Param("criterion", "choice", "magnitude",
          "importance criterion that ranks what is removed (a provider's, e.g. nni.*: its "
          "pruner decides)", values=CRITERIA),
    Param("schedule", "choice", "oneshot",
          "unstructured only: prune all at once, or grow sparsity over the fine-tune epochs",
          values=("oneshot", "linear", "cubic")),
    Param("protect_first", "bool", False, "leave the first weight layer unpruned"),
    Param("protect_last", "bool", False, "leave the last weight layer unpruned"),
)
setting = Settings("prune", PARAMETERS)


class WeightMask(nn.Module):
    """Parametrization ``w -> w * mask`` with a 0/1 mask that a schedule may tighten."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


def provided(plan: Plan) -> MaskCriterion | None:
    """The provider's criterion the plan asks for, or None for one of ours."""
    name = setting(plan, "prune.criterion")
    if not providers.provides("prune.criterion", name):
        return None
    return providers.implementation("prune.criterion", name)


def prunable_layers(model: nn.Module, plan: Plan) -> list[tuple[str, nn.Module]]:
    """The weight layers this plan may prune (first / last left out when protected)."""
    layers = weight_layers(model)
    by_provider = provided(plan)
    whole_units = (setting(plan, "prune.kind") == "structured"
                   or (by_provider is not None and by_provider.whole_units))
    if setting(plan, "prune.protect_last") or whole_units:
        layers = layers[:-1]  # pruning whole units never removes the model's outputs
    if setting(plan, "prune.protect_first"):
        layers = layers[1:]
    return layers


def _ranked_masks(scores: list[torch.Tensor], counts: list[int] | int) -> list[torch.Tensor]:
    """Masks zeroing the lowest scores: per tensor (a list of counts) or jointly (one count)."""
    if isinstance(counts, list):
        return [_ranked_masks([s], c)[0] for s, c in zip(scores, counts, strict=True)]
    flat = torch.cat([s.reshape(-1) for s in scores]) if scores else torch.zeros(0)
    keep = torch.ones_like(flat)
    if counts:  # exactly `counts` lowest scores: below the counts-th value, then ties by position
        threshold = torch.kthvalue(flat, counts).values
        below = flat < threshold
        keep[below] = 0.0
        ties = torch.nonzero(flat == threshold).flatten()[: counts - int(below.sum())]
        keep[ties] = 0.0
    masks, start = [], 0
    for s in scores:
        masks.append(keep[start : start + s.numel()].reshape(s.shape))
        start += s.numel()
    return masks


def _ratios(layers: list[tuple[str, nn.Module]], plan: Plan, fraction: float) -> dict[str, float]:
    return {name: float(setting(plan, "prune.ratio", layer=name)) * fraction
            for name, _ in layers}


def _provider_masks(model: nn.Module, plan: Plan, by_provider: MaskCriterion,
                    layers: list[tuple[str, nn.Module]],
                    calibration: tuple[torch.Tensor, torch.Tensor] | None,
                    fraction: float) -> dict[str, torch.Tensor]:
    if calibration is None:
        raise ValueError(f"prune.criterion {setting(plan, 'prune.criterion')} needs "
                         "calibration data (x, y)")
    return by_provider.masks(model, _ratios(layers, plan, fraction), calibration=calibration,
                             seed=plan.seed)


def weight_masks(
    model: nn.Module, plan: Plan, *, grads: dict[str, torch.Tensor] | None = None,
    fraction: float = 1.0, calibration: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """0/1 masks of the plan's unstructured pruning, at ``fraction`` of its target sparsity.

    ``calibration`` (x, y) is the data a provider's criterion needs (NNI Taylor's gradients).
    """
    layers = prunable_layers(model, plan)
    by_provider = provided(plan)
    if by_provider is not None:
        return _provider_masks(model, plan, by_provider, layers, calibration, fraction)
    crit = criterion(str(setting(plan, "prune.criterion")))
    scores = [crit.weight_scores(m.weight, (grads or {}).get(name)) for name, m in layers]
    ratios = list(_ratios(layers, plan, fraction).values())
    counts: list[int] | int
    if any(f"prune.ratio.{name}" in plan.choices for name, _ in layers):
        counts = [round(r * s.numel()) for r, s in zip(ratios, scores, strict=True)]
    else:
        total = sum(s.numel() for s in scores)
        counts = round(float(setting(plan, "prune.ratio")) * fraction * total)
    masks = _ranked_masks(scores, counts)
    return {name: mask for (name, _), mask in zip(layers, masks, strict=True)}


def schedule_fraction(schedule: str, epoch: int, epochs: int) -> float:
    """Share of the target sparsity in force during ``epoch`` (0-based); 1 in the last epoch."""
    if schedule == "oneshot" or epochs <= 1:
        return 1.0
    t = (epoch + 1) / epochs
    return t if schedule == "linear" else 1.0 - (1.0 - t) ** 3


def attach_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        module = modules[name]
        if parametrize.is_parametrized(module, "weight"):
            for p in module.parametrizations.weight:
                if isinstance(p, WeightMask):
                    p.mask.copy_(mask)
                    break
            else:
                parametrize.register_parametrization(module, "weight", WeightMask(mask))
        else:
            parametrize.register_parametrization(module, "weight", WeightMask(mask))
    return model


def sparsity(model: nn.Module) -> float:
    """Share of zeros over all weight-layer weights."""
    layers = weight_layers(model)
    total = sum(m.weight.numel() for _, m in layers)
    zeros = sum(int((m.weight == 0).sum()) for _, m in layers)
    return zeros / max(1, total)


@dataclass(frozen=True)
class Removed:
    """What a structured prune did: parameters and MACs before and after (``notes``), and the
    units removed from each coupled group, by the group's root layer (its unit numbering)."""

    notes: dict[str, float]
    units: dict[str, list[int]]


def _explicit_ratios(plan: Plan) -> dict[str, float]:
    start = "prune.ratio."
    return {k[len(start):]: float(v) for k, v in plan.choices.items() if k.startswith(start)}


def _protected_ends(model: nn.Module, plan: Plan) -> list[nn.Module]:
    layers = weight_layers(model)
    ends = []
    if layers and setting(plan, "prune.protect_first"):
        ends.append(layers[0][1])
    if layers and setting(plan, "prune.protect_last"):
        ends.append(layers[-1][1])
    return ends


def _mask_part(masks: dict[str, torch.Tensor], model: nn.Module) -> graph.LayerPart:
    """A provider's verdict as a group score: how many of the unit's weights its masks keep."""
    by_module = {m: masks[n] for n, m in model.named_modules() if n in masks}

    def part(layer: nn.Module, role: str, idxs: list[int]) -> torch.Tensor | None:
        mask = by_module.get(layer)
        return mask.flatten(1)[idxs].sum(dim=1) if mask is not None and role == "out" else None

    return part


def remove_units(
    model: nn.Module, plan: Plan, example_input: torch.Tensor,
    grads: dict[str, torch.Tensor] | None = None,
    calibration: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Removed:
    """Structured pruning in place: each coupled group scored once, cut once.

    A group loses ``round(ratio * units)`` units (at least one kept), the ratio being its root
    layer's (``prune.ratio.<layer>``, else a member's, else the global one). Scores are summed
    over the group's layers (:func:`~autocompress.techniques.graph.group_scores`); with a
    provider's criterion, how many of a unit's weights its masks keep. Removing a unit equals
    zeroing its outputs, so the pruned model computes what the masked one does.
    """
    if Encoder.find(model) is not None:
        raise TrialError("prune.kind structured on a transformer would split attention heads; "
                         "remove heads and neurons with transformer.heads / transformer.ffn")
    deps = graph.trace(model, example_input, what="prune.kind structured")
    groups = graph.unit_groups(
        model, deps, graph.protected(model, deps, _protected_ends(model, plan)))
    by_provider = provided(plan)
    if by_provider is not None:
        layers = prunable_layers(model, plan)
        part = _mask_part(_provider_masks(model, plan, by_provider, layers, calibration, 1.0),
                          model)
    else:
        modules = dict(model.named_modules())
        part = layer_part(criterion(str(setting(plan, "prune.criterion"))),
                          {modules[n]: g for n, g in (grads or {}).items()})
    explicit, default = _explicit_ratios(plan), float(setting(plan, "prune.ratio"))
    removals = []
    for group in groups:
        n_removed = min(group.units - 1,
                        round(graph.ratio_of(group, explicit, default) * group.units))
        if n_removed > 0:
            removals.append((group, graph.lowest(graph.group_scores(group, part), n_removed)))
    macs_before, params_before = graph.count(model, example_input)
    graph.cut(deps, removals)
    macs_after, params_after = graph.count(model, example_input)
    notes = {"params_before": params_before, "params_after": params_after,
             "macs_before": macs_before, "macs_after": macs_after}
    return Removed(notes, {group.name: idxs for group, idxs in removals})


def apply(model: nn.Module, plan: Plan, ctx: Context) -> nn.Module:
    has_ratio = float(setting(plan, "prune.ratio")) > 0 or any(
        k.startswith("prune.ratio.") and float(v) > 0 for k, v in plan.choices.items()
    )
    if not has_ratio:
        return model
    needs_gradients = provided(plan) is None and criterion(
        str(setting(plan, "prune.criterion"))).needs_gradients
    calibration = (ctx.train_x, ctx.train_y)

    def gradients() -> dict[str, torch.Tensor] | None:
        if not needs_gradients:
            return None
        return accumulate_gradients(model, ctx.train_x, ctx.train_y, seed=plan.seed)

    initial = gradients()
    if setting(plan, "prune.kind") == "structured":
        ctx.note(remove_units(model, plan, ctx.example_input, initial, calibration).notes)
        return model
    schedule = str(setting(plan, "prune.schedule"))
    attach_masks(model, weight_masks(model, plan, grads=initial, calibration=calibration,
                                     fraction=schedule_fraction(schedule, 0, ctx.epochs)))
    if schedule != "oneshot":
        def tighten(epoch: int, current: nn.Module) -> None:
            # a copy (the structure probe) is untrained: the first gradients still hold for it
            grads = gradients() if current is model and epoch > 0 else initial
            fraction = schedule_fraction(schedule, epoch, ctx.epochs)
            attach_masks(current, weight_masks(current, plan, grads=grads, fraction=fraction,
                                               calibration=calibration))

        ctx.add_before_epoch(tighten)
    return model
