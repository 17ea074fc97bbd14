"""Coupled groups of units through torch-pruning's dependency graph, scored and cut once each.

Structured pruning (:mod:`~autocompress.techniques.prune`) and the student's width
(:mod:`~autocompress.techniques.student`) both remove whole units (neurons, channels). In any
network but a flat stack, units come in coupled groups: a residual trunk's channels are the
stem's, every block's last conv's and batch norm's outputs and every consumer's inputs at once.
A group is therefore scored ONCE, its importance summed over every layer in it (as
torch-pruning's group importance does: output rows, input columns, norm scales), and cut once,
keeping the rest of the network consistent.

Left whole (``protected``): the model's outputs (a layer that ends the traced graph), attention
projections (any layer under a module named ``*attn*`` / ``*attention*``: splitting heads is the
transformer technique's job) and embeddings. A group touching one of them is not cut.
Structured outputs (a Hugging Face ``ModelOutput``) are traced through their logits.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from autocompress.errors import TrialError
from autocompress.outputs import logits_of
from autocompress.techniques.common import WEIGHT_LAYERS

# (layer, role, indices) -> a layer's share of the score of the units at those indices, or None
LayerPart = Callable[[nn.Module, str, list[int]], torch.Tensor | None]

_ATTENTION = re.compile(r"attn|attention", re.IGNORECASE)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm)


@dataclass
class UnitGroup:
    """One coupled group: its root layer (whose unit numbering it uses), its weight layers."""

    name: str
    root: nn.Module
    handler: Any
    layers: list[str]  # the weight layers whose outputs it holds, in definition order
    units: int
    items: Any  # torch-pruning's Group with every unit, for scoring


def _roles() -> dict[Any, str]:
    import torch_pruning as tp

    return {tp.prune_conv_out_channels: "out", tp.prune_linear_out_channels: "out",
            tp.prune_depthwise_conv_out_channels: "out",
            tp.prune_conv_in_channels: "in", tp.prune_linear_in_channels: "in",
            tp.prune_batchnorm_out_channels: "norm", tp.prune_layernorm_out_channels: "norm",
            tp.prune_groupnorm_out_channels: "norm"}


def role_of(handler: Any, layer: nn.Module) -> str | None:
    """``out`` (the unit's own weights), ``in`` (a consumer's columns), ``norm`` or None (not
    scored)."""
    role = next((r for fn, r in _roles().items() if handler == fn), None)
    if getattr(layer, "transposed", False):
        return None  # a transposed conv keeps its outputs in dim 1: not scored
    if role == "in" and getattr(layer, "groups", 1) != 1:
        return None  # a depthwise conv's inputs are its outputs: counted once, as "out"
    if role == "norm" and not isinstance(layer, _NORMS):
        return None
    return role


def trace(model: nn.Module, example_input: torch.Tensor, *, what: str, advice: str = "") -> Any:
    """The model's dependency graph; a :class:`TrialError` naming ``what`` (and ending with
    ``advice``) when it cannot be traced: its forward fails, or no weight layer is reachable
    from its output through autograd."""
    import torch_pruning as tp

    tail = f"; {advice}" if advice else ""
    try:
        with torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(
                model, example_inputs=example_input, output_transform=logits_of, verbose=False)
    except Exception as error:  # a user's forward can fail in any way: report it as one thing
        raise TrialError(f"{what}: cannot trace {type(model).__name__} through torch-pruning's "
                         f"dependency graph ({type(error).__name__}: {error}){tail}") from error
    traced = [m for m, node in graph.module2node.items()
              if isinstance(m, WEIGHT_LAYERS) and node.grad_fn is not None]
    if not traced:
        raise TrialError(f"{what}: cannot trace {type(model).__name__}: no weight layer is "
                         f"reachable from its output through autograd{tail}")
    return graph


def protected(model: nn.Module, graph: Any, extra: Iterable[nn.Module] = ()) -> list[nn.Module]:
    """Layers whose units are never cut: outputs, attention projections, embeddings, ``extra``."""
    found = list(extra)
    for name, module in model.named_modules():
        inside_attention = any(_ATTENTION.search(part) for part in name.split("."))
        if (isinstance(module, (nn.Embedding, nn.EmbeddingBag, nn.MultiheadAttention))
                or (inside_attention and isinstance(module, WEIGHT_LAYERS))):
            found.append(module)
    for module, node in graph.module2node.items():
        if isinstance(module, WEIGHT_LAYERS) and not node.outputs:  # ends the traced graph
            found.append(module)
    return found


def unit_groups(model: nn.Module, graph: Any, keep: list[nn.Module]) -> list[UnitGroup]:
    """Every group of units that may be cut: none holding a ``keep`` layer's outputs, none
    reaching the model's output, no grouped (non-depthwise) convolution, at least 2 units.

    A group is rooted at the first of its layers in definition order (a trunk at its stem):
    its unit indices and its per-layer share are that layer's.
    """
    import torch_pruning as tp

    order = {m: i for i, (_, m) in enumerate(model.named_modules())}
    names = {m: n for n, m in model.named_modules()}
    groups = []
    for group in graph.get_all_groups(ignored_layers=keep, root_module_types=WEIGHT_LAYERS):
        members = [item.dep.target for item in group]
        if any(node.type == tp.ops.OPTYPE.OUTPUT for node in members):
            continue
        modules = [node.module for node in members]
        if any(getattr(m, "groups", 1) not in (1, getattr(m, "in_channels", 1))
               for m in modules if isinstance(m, WEIGHT_LAYERS)):
            continue
        outs = sorted({m for item, m in zip(group, modules, strict=True)
                       if isinstance(m, WEIGHT_LAYERS) and role_of(item.dep.handler, m) == "out"},
                      key=order.__getitem__)
        if not outs:
            continue
        root = outs[0]
        handler = graph.get_pruner_of_module(root).prune_out_channels
        units = graph.get_out_channels(root)
        if units >= 2:
            rooted = graph.get_pruning_group(root, handler, list(range(units)))
            groups.append(UnitGroup(names[root], root, rooted[0].dep.handler,
                                    [names[m] for m in outs], units, rooted))
    return groups


def group_scores(group: UnitGroup, part: LayerPart) -> torch.Tensor:
    """One score per unit of ``group``: every layer's ``part`` summed onto the root's units."""
    total = torch.zeros(group.units, dtype=torch.float64)
    for item in group.items:
        layer = item.dep.target.module
        role = role_of(item.dep.handler, layer)
        roots = item.root_idxs
        if role is None or not isinstance(layer, nn.Module) or any(r is None for r in roots):
            continue
        share = part(layer, role, list(item.idxs))
        if share is not None:
            total.scatter_add_(0, torch.tensor(roots), share.detach().double().reshape(-1))
    return total


def ratio_of(group: UnitGroup, explicit: Mapping[str, float], default: float) -> float:
    """The group's share: its root layer's own value, else another member's, else ``default``."""
    return next((explicit[n] for n in group.layers if n in explicit), default)


def lowest(scores: torch.Tensor, count: int) -> list[int]:
    """The ``count`` lowest-scoring units (ties by position), in increasing order."""
    return sorted(torch.argsort(scores, stable=True)[:count].tolist())


def cut(graph: Any, removals: Iterable[tuple[UnitGroup, list[int]]]) -> None:
    """Remove each group's units, once per group (groups are disjoint, so indices stay valid)."""
    for group, idxs in removals:
        if idxs:
            graph.get_pruning_group(group.root, group.handler, idxs).prune()


def count(model: nn.Module, example_input: torch.Tensor) -> tuple[float, float]:
    """(MACs, parameters) of one forward on ``example_input``."""
    import torch_pruning as tp

    macs, params = tp.utils.count_ops_and_params(model, example_input)
    return float(macs), float(params)
