"""Pruning: zero the least important weights, or remove whole neurons / channels for real.

* ``prune.kind: unstructured`` zeroes single weights. The ratio is global (one ranking over every
  unprotected weight layer: exactly ``round(ratio * total)`` weights) or per layer
  (``prune.ratio.<layer>``). The mask is a parametrization, so the forward pass, the gradients and
  the optimiser all see the pruned weights and fine-tuning cannot revive them. With
  ``prune.schedule: linear`` or ``cubic`` the sparsity grows epoch by epoch to its target (the
  cubic schedule of Zhu & Gupta 2017), the mask recomputed each epoch from the current weights.
* ``prune.kind: structured`` removes the lowest-scoring ``ratio`` of each unprotected layer's
  output units through torch-pruning's dependency graph, which keeps the next layers, batch norms
  and residual adds consistent: the model is physically smaller. Parameters and MACs before and
  after are recorded in ``ctx.notes``.

The criterion (:mod:`autocompress.techniques.importance`) is a choice too; gradient and Taylor
criteria get their gradients from calibration batches of the training split, computed here.
``nni.*`` criteria let NNI's pruners choose (:mod:`autocompress.techniques.nni_adapter`): their
masks are kept as masks (unstructured) or become the units removed (structured).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from autocompress.errors import TrialError
from autocompress.params import Param
from autocompress.plan import Plan
from autocompress.techniques import nni_adapter
from autocompress.techniques.common import Context, weight_layers
from autocompress.techniques.importance import CRITERIA, accumulate_gradients, criterion
from autocompress.techniques.transformer import Encoder

PARAMETERS = (
    Param("ratio", "float", 0.0, "share of weights (unstructured) or units (structured) removed",
          low=0.0, high=0.99, per_layer=True),
    Param("kind", "choice", "unstructured", "zero single weights, or remove whole units",
          values=("unstructured", "structured")),
    Param("criterion", "choice", "magnitude",
          "importance criterion that ranks what is removed (nni.*: NNI's pruner decides)",
          values=CRITERIA + tuple(nni_adapter.PRUNERS)),
    Param("schedule", "choice", "oneshot",
          "unstructured only: prune all at once, or grow sparsity over the fine-tune epochs",
          values=("oneshot", "linear", "cubic")),
    Param("protect_first", "bool", False, "leave the first weight layer unpruned"),
    Param("protect_last", "bool", False, "leave the last weight layer unpruned"),
)


class WeightMask(nn.Module):
    """Parametrization ``w -> w * mask`` with a 0/1 mask that a schedule may tighten."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


def prunable_layers(model: nn.Module, plan: Plan) -> list[tuple[str, nn.Module]]:
    """The weight layers this plan may prune (first / last left out when protected)."""
    layers = weight_layers(model)
    whole_units = (plan.get("prune.kind") == "structured"
                   or plan.get("prune.criterion") in nni_adapter.CHANNEL_PRUNERS)
    if plan.get("prune.protect_last", False) or whole_units:
        layers = layers[:-1]  # pruning whole units never removes the model's outputs
    if plan.get("prune.protect_first", False):
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
    return {name: float(plan.for_layer("prune.ratio", name, 0.0)) * fraction for name, _ in layers}


def _nni_masks(model: nn.Module, plan: Plan, layers: list[tuple[str, nn.Module]],
               calibration: tuple[torch.Tensor, torch.Tensor] | None,
               fraction: float) -> dict[str, torch.Tensor]:
    if calibration is None:
        raise ValueError("NNI criteria need calibration data (x, y)")
    return nni_adapter.pruning_masks(model, _ratios(layers, plan, fraction),
                                     str(plan.get("prune.criterion")), x=calibration[0],
                                     y=calibration[1], seed=plan.seed)


def weight_masks(
    model: nn.Module, plan: Plan, *, grads: dict[str, torch.Tensor] | None = None,
    fraction: float = 1.0, calibration: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """0/1 masks of the plan's unstructured pruning, at ``fraction`` of its target sparsity.

    ``calibration`` (x, y) is the data an NNI criterion may need (Taylor's gradients).
    """
    layers = prunable_layers(model, plan)
    if nni_adapter.is_nni(plan.get("prune.criterion")):
        return _nni_masks(model, plan, layers, calibration, fraction)
    crit = criterion(str(plan.get("prune.criterion", "magnitude")))
    scores = [crit.weight_scores(m.weight, (grads or {}).get(name)) for name, m in layers]
    ratios = list(_ratios(layers, plan, fraction).values())
    counts: list[int] | int
    if any(f"prune.ratio.{name}" in plan.choices for name, _ in layers):
        counts = [round(r * s.numel()) for r, s in zip(ratios, scores, strict=True)]
    else:
        total = sum(s.numel() for s in scores)
        counts = round(float(plan.get("prune.ratio", 0.0)) * fraction * total)
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


def unit_scores(
    model: nn.Module, plan: Plan, grads: dict[str, torch.Tensor] | None = None,
    calibration: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """A score per output unit of each prunable layer; the lowest go first.

    With an NNI criterion the score is how many of the unit's weights NNI's mask keeps, so the
    units NNI zeroed whole are exactly the ones removed.
    """
    layers = prunable_layers(model, plan)
    if nni_adapter.is_nni(plan.get("prune.criterion")):
        masks = _nni_masks(model, plan, layers, calibration, 1.0)
        return {name: masks[name].flatten(1).sum(dim=1) for name, _ in layers}
    crit = criterion(str(plan.get("prune.criterion", "magnitude")))
    return {name: crit.unit_scores(m.weight, (grads or {}).get(name)) for name, m in layers}


def remove_units(
    model: nn.Module, plan: Plan, example_input: torch.Tensor,
    grads: dict[str, torch.Tensor] | None = None,
    calibration: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, float]:
    """Structured pruning in place; returns parameters and MACs before and after."""
    import torch_pruning as tp

    if Encoder.find(model) is not None:
        raise TrialError("prune.kind structured on a transformer would split attention heads; "
                         "remove heads and neurons with transformer.heads / transformer.ffn")
    scores = unit_scores(model, plan, grads, calibration)
    macs_before, params_before = tp.utils.count_ops_and_params(model, example_input)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_input)
    plans = []
    for name, layer in prunable_layers(model, plan):
        ratio = float(plan.for_layer("prune.ratio", name, 0.0))
        units = layer.weight.shape[0]
        n_removed = min(units - 1, round(ratio * units))
        if n_removed <= 0:
            continue
        idxs = torch.argsort(scores[name], stable=True)[:n_removed].tolist()
        handler = (tp.prune_linear_out_channels if isinstance(layer, nn.Linear)
                   else tp.prune_conv_out_channels)
        plans.append((layer, handler, idxs))
    for layer, handler, idxs in plans:  # indices were chosen before any removal
        group = graph.get_pruning_group(layer, handler, idxs=idxs)
        if graph.check_pruning_group(group):
            group.prune()
    macs_after, params_after = tp.utils.count_ops_and_params(model, example_input)
    return {"params_before": float(params_before), "params_after": float(params_after),
            "macs_before": float(macs_before), "macs_after": float(macs_after)}


def apply(model: nn.Module, plan: Plan, ctx: Context) -> nn.Module:
    has_ratio = float(plan.get("prune.ratio", 0.0)) > 0 or any(
        k.startswith("prune.ratio.") and float(v) > 0 for k, v in plan.choices.items()
    )
    if not has_ratio:
        return model
    name = str(plan.get("prune.criterion", "magnitude"))
    needs_gradients = not nni_adapter.is_nni(name) and criterion(name).needs_gradients
    calibration = (ctx.train_x, ctx.train_y)

    def gradients() -> dict[str, torch.Tensor] | None:
        if not needs_gradients:
            return None
        return accumulate_gradients(model, ctx.train_x, ctx.train_y, seed=plan.seed)

    initial = gradients()
    if plan.get("prune.kind", "unstructured") == "structured":
        ctx.notes.update(remove_units(model, plan, ctx.example_input, initial, calibration))
        return model
    schedule = str(plan.get("prune.schedule", "oneshot"))
    attach_masks(model, weight_masks(model, plan, grads=initial, calibration=calibration,
                                     fraction=schedule_fraction(schedule, 0, ctx.epochs)))
    if schedule != "oneshot":
        def tighten(epoch: int, current: nn.Module) -> None:
            # a copy (the structure probe) is untrained: the first gradients still hold for it
            grads = gradients() if current is model and epoch > 0 else initial
            fraction = schedule_fraction(schedule, epoch, ctx.epochs)
            attach_masks(current, weight_masks(current, plan, grads=grads, fraction=fraction,
                                               calibration=calibration))

        ctx.before_epoch.append(tighten)
    return model
