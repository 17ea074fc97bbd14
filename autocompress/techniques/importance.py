"""Importance criteria: small callables, so the criterion itself is a search dimension.

A criterion scores every weight (unstructured pruning) and, reduced over a unit's incoming
weights, every output neuron / channel (structured pruning, student migration). Criteria that
need gradients say so (``needs_gradients``); the caller runs :func:`accumulate_gradients` first
and passes the result, so no criterion silently depends on a ``backward()`` done elsewhere.

| name        | per weight                  | per unit                         |
| ----------- | --------------------------- | -------------------------------- |
| `magnitude` | abs(w)                      | L2 norm of the unit's weights    |
| `l1`        | abs(w)                      | L1 norm of the unit's weights    |
| `l2`        | abs(w)                      | L2 norm of the unit's weights    |
| `gradient`  | sum over batches abs(dL/dw) | sum of the unit's scores         |
| `taylor`    | sum over batches abs(w*dL/dw) | sum of the unit's scores       |
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from autocompress.techniques.common import weight_layers

CRITERIA = ("magnitude", "l1", "l2", "gradient", "taylor")


@dataclass(frozen=True)
class Criterion:
    name: str

    @property
    def needs_gradients(self) -> bool:
        return self.name in ("gradient", "taylor")

    def weight_scores(self, weight: torch.Tensor, grad: torch.Tensor | None = None) -> torch.Tensor:
        """A score per weight, same shape as ``weight``; low scores are pruned first."""
        weight = weight.detach()
        if self.needs_gradients:
            if grad is None:
                raise ValueError(f"criterion {self.name!r} needs accumulated gradients")
            return grad if self.name == "gradient" else weight.abs() * grad
        return weight.abs()

    def unit_scores(self, weight: torch.Tensor, grad: torch.Tensor | None = None) -> torch.Tensor:
        """A score per output unit (row of a linear weight, filter of a conv)."""
        rows = weight.detach().flatten(1)
        if self.name == "l1":
            return rows.abs().sum(dim=1)
        if self.name in ("l2", "magnitude"):
            return rows.norm(dim=1)
        return self.weight_scores(weight, grad).flatten(1).sum(dim=1)


def is_embedding_target(outputs: torch.Tensor, targets: torch.Tensor) -> bool:
    """Targets that are vectors shaped like the outputs (a teacher's embeddings), not labels."""
    return targets.is_floating_point() and targets.shape == outputs.shape


def task_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The training loss of a task: cross-entropy against class labels or, for an embedding
    model whose targets are the teacher's embeddings, one minus their mean cosine similarity."""
    if is_embedding_target(outputs, targets):
        return 1.0 - F.cosine_similarity(outputs, targets, dim=-1).mean()
    return F.cross_entropy(outputs, targets)


def criterion(name: str) -> Criterion:
    if name not in CRITERIA:
        raise ValueError(f"unknown importance criterion {name!r}; expected one of {CRITERIA}")
    return Criterion(name)


def _leaf_weight(module: nn.Module) -> torch.Tensor:
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    return module.weight


def accumulate_gradients(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batches: int = 4, batch_size: int = 128,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Sum over ``batches`` calibration batches of abs(dL/dw) for every weight layer, by name.

    The task's loss (:func:`task_loss`) on the targets; the weights are left unchanged. With
    parametrized weights (masks, fake quantization) the gradient is taken at the stored weight,
    so masked weights get zero and fake quantization passes it straight through.
    """
    generator = torch.Generator().manual_seed(seed)
    layers = weight_layers(model)
    totals = {name: torch.zeros_like(m.weight) for name, m in layers}
    was_training = model.training
    model.eval()
    for _ in range(batches):
        idx = torch.randint(0, len(y), (min(batch_size, len(y)),), generator=generator)
        weights = [_leaf_weight(m) for _, m in layers]
        loss = task_loss(model(x[idx]), y[idx])
        grads = torch.autograd.grad(loss, weights, allow_unused=True)
        for (name, _), g in zip(layers, grads, strict=True):
            if g is not None:
                totals[name] += g.detach().abs()
    model.train(was_training)
    return totals
