"""Importance criteria: small callables keyed by value, so the criterion is a search dimension.

A criterion scores every weight (unstructured pruning) and, reduced over a unit's incoming
weights, every output neuron / channel (structured pruning, student migration, heads). Each is a
small object in :data:`IMPORTANCE` (Torch-Pruning's ``Importance`` objects are the model), not a
branch on a name. What a criterion needs is part of its interface: one with
``needs_gradients`` is given the gradients :func:`accumulate_gradients` collects on calibration
batches, and raises without them, so none silently depends on a ``backward()`` done elsewhere.
A provider's criterion (``nni.*``) computes whole masks from calibration data instead
(:class:`MaskCriterion`).

For coupled groups of units (a residual trunk, :mod:`autocompress.techniques.graph`) each layer
gives its share of a unit's score (``unit_part``: sums of p-th powers for norms, sums for
sensitivities), so the shares add up over the group, as Torch-Pruning's group importance does:
a trunk channel is ranked once, by its weights in every layer that produces it.

| name        | per weight                    | per unit                         |
| ----------- | ----------------------------- | -------------------------------- |
| `magnitude` | abs(w)                        | L2 norm of the unit's weights    |
| `l1`        | abs(w)                        | L1 norm of the unit's weights    |
| `l2`        | abs(w)                        | L2 norm of the unit's weights    |
| `gradient`  | sum over batches abs(dL/dw)   | sum of the unit's scores         |
| `taylor`    | sum over batches abs(w*dL/dw) | sum of the unit's scores         |
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
from torch import nn
from torch.nn.utils import parametrize

from autocompress.techniques.common import weight_layers
from autocompress.techniques.outputs import calibration_loss


class Importance(Protocol):
    """Scores a layer's weights; the lowest scores are removed first."""

    name: str
    needs_gradients: bool  # True: pass the accumulated gradient of the weight

    def weight_scores(self, weight: torch.Tensor,
                      grad: torch.Tensor | None = None) -> torch.Tensor:
        """A score per weight, same shape as ``weight``."""
        ...

    def unit_scores(self, weight: torch.Tensor, grad: torch.Tensor | None = None) -> torch.Tensor:
        """A score per output unit (row of a linear weight, filter of a conv)."""
        ...

    def unit_part(self, scores: torch.Tensor) -> torch.Tensor:
        """Per row of per-weight ``scores`` (units, k): the amount that adds over a group."""
        ...


class MaskCriterion(Protocol):
    """A provider's criterion: computes the 0/1 weight masks itself, from calibration data."""

    whole_units: bool  # it zeroes whole output units, so the model's outputs are left alone

    def masks(self, model: nn.Module, ratios: dict[str, float], *,
              calibration: tuple[torch.Tensor, torch.Tensor],
              seed: int) -> dict[str, torch.Tensor]:
        """Masks of the layers in ``ratios`` (layer name -> share removed); model untouched."""
        ...


@dataclass(frozen=True)
class Norm:
    """abs(w) per weight; the L``p`` norm of a unit's weights per unit."""

    name: str
    p: int
    needs_gradients: ClassVar[bool] = False

    def weight_scores(self, weight: torch.Tensor,
                      grad: torch.Tensor | None = None) -> torch.Tensor:
        return weight.detach().abs()

    def unit_scores(self, weight: torch.Tensor, grad: torch.Tensor | None = None) -> torch.Tensor:
        rows = weight.detach().flatten(1)
        return rows.abs().sum(dim=1) if self.p == 1 else rows.norm(dim=1)

    def unit_part(self, scores: torch.Tensor) -> torch.Tensor:
        return scores.flatten(1).pow(self.p).sum(dim=1)


@dataclass(frozen=True)
class Sensitivity:
    """The accumulated gradient per weight (times abs(w) with ``times_weight``: Taylor)."""

    name: str
    times_weight: bool
    needs_gradients: ClassVar[bool] = True

    def weight_scores(self, weight: torch.Tensor,
                      grad: torch.Tensor | None = None) -> torch.Tensor:
        if grad is None:
            raise ValueError(f"criterion {self.name!r} needs accumulated gradients")
        return weight.detach().abs() * grad if self.times_weight else grad

    def unit_scores(self, weight: torch.Tensor, grad: torch.Tensor | None = None) -> torch.Tensor:
        return self.weight_scores(weight, grad).flatten(1).sum(dim=1)

    def unit_part(self, scores: torch.Tensor) -> torch.Tensor:
        return scores.flatten(1).sum(dim=1)


IMPORTANCE: dict[str, Importance] = {
    "magnitude": Norm("magnitude", p=2),
    "l1": Norm("l1", p=1),
    "l2": Norm("l2", p=2),
    "gradient": Sensitivity("gradient", times_weight=False),
    "taylor": Sensitivity("taylor", times_weight=True),
}
CRITERIA = tuple(IMPORTANCE)


def criterion(name: str) -> Importance:
    """The criterion called ``name``."""
    found = IMPORTANCE.get(name)
    if found is None:
        raise ValueError(f"unknown importance criterion {name!r}; expected one of {CRITERIA}")
    return found


def layer_part(crit: Importance, grads: Mapping[nn.Module, torch.Tensor] | None = None
               ) -> Callable[[nn.Module, str, list[int]], torch.Tensor | None]:
    """A group scorer's layer share for ``crit``: the unit's own rows in every layer that
    produces it (``out``) and its norm scales (``norm``; not for gradient criteria, which have
    no gradient for them). ``grads`` are by module, for criteria that need them.

    Consumers' input columns (``in``) are left out, unlike Torch-Pruning's default: a unit's
    score stays a reduction over its own weights, so on an uncoupled layer it is exactly the
    per-layer ``unit_scores`` ranking (the one NNI's L1 pruner shares). On the residual CNN of
    ``tests/test_prune_groups.py`` both choices fine-tune to the same accuracy.
    """

    def part(layer: nn.Module, role: str, idxs: list[int]) -> torch.Tensor | None:
        weight = getattr(layer, "weight", None)
        if weight is None or role == "in" or (role == "norm" and crit.needs_gradients):
            return None
        scores = crit.weight_scores(weight, None if role == "norm" else (grads or {}).get(layer))
        return crit.unit_part(scores.reshape(len(weight), -1)[idxs])

    return part


def _leaf_weight(module: nn.Module) -> torch.Tensor:
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    return module.weight


def accumulate_gradients(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batches: int = 4, batch_size: int = 128,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Sum over ``batches`` calibration batches of abs(dL/dw) for every weight layer, by name.

    The task's loss (:func:`~autocompress.techniques.outputs.calibration_loss`) on the targets; the
    weights are left unchanged. With parametrized weights (masks, fake quantization) the
    gradient is taken at the stored weight, so masked weights get zero and fake quantization
    passes it straight through.
    """
    generator = torch.Generator().manual_seed(seed)
    layers = weight_layers(model)
    totals = {name: torch.zeros_like(m.weight) for name, m in layers}
    was_training = model.training
    model.eval()
    for _ in range(batches):
        idx = torch.randint(0, len(y), (min(batch_size, len(y)),), generator=generator)
        weights = [_leaf_weight(m) for _, m in layers]
        loss = calibration_loss(model(x[idx]), y[idx])
        grads = torch.autograd.grad(loss, weights, allow_unused=True)
        for (name, _), g in zip(layers, grads, strict=True):
            if g is not None:
                totals[name] += g.detach().abs()
    model.train(was_training)
    return totals
