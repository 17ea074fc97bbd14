"""Depth for any model: find whole blocks whose input and output shapes match, and drop them.

A block is a module that holds at least two weight layers, sits in a stack (an element of an
``nn.ModuleList`` / ``nn.Sequential``, or a direct child of the model), runs once per forward,
and returns a tensor (or a tuple led by one) of the shape it was given: residual blocks of
ResNet / MobileNet-style nets, a user's own residual blocks, the layers of a Hugging Face
encoder or decoder. Of nested blocks only the innermost count (a ResNet stage that keeps its
shape holds blocks: those are the units). Found by hooks on one forward of the example input.

A dropped block becomes :class:`Skip` (its input, in the block's output structure), so the
parent's code runs unchanged. A residual branch whose parent adds it to its input
(``x = relu(x + block(x))``) becomes a :class:`Skip` that returns zeros instead, so the parent's
sum is its input, as if the block were gone (seen in the autograd graph of the same forward: an
add taking both the block's input and its output). In a ``ModuleList`` whose blocks carry a
``layer_idx`` (Hugging
Face layers that index a KV cache) the block is deleted instead, the later blocks renumbered and
the config's ``num_hidden_layers`` (and ``layer_types``) updated, so caching and generation stay
right.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from autocompress.errors import TrialError
from autocompress.techniques.common import WEIGHT_LAYERS, weight_layers
from autocompress.techniques.outputs import calibration_loss

CHOICES = ("last", "ablation", "every_other")


@dataclass
class Block:
    """A droppable block: where it sits (``parent``, ``key``) and what structure it returns."""

    name: str
    module: nn.Module
    parent: nn.Module
    key: str
    extra: int  # -1: returns a tensor; n >= 0: a tuple of the hidden states and n more items
    branch: bool = False  # its parent adds its output to its input: it skips to zeros

    def skip(self) -> Skip:
        """What replaces the block when it is dropped."""
        return Skip(self.extra, zero=self.branch)


def _hidden(args: tuple, kwargs: dict[str, Any]) -> torch.Tensor | None:
    """A block's input: its first positional tensor, else ``hidden_states``, else any tensor."""
    for value in (*args, kwargs.get("hidden_states"), *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value
    return None


class Skip(nn.Module):
    """A dropped block: returns its input (zeros of its shape for a residual branch), shaped
    as the block's output (a tensor, or a tuple led by the hidden states)."""

    def __init__(self, extra: int = -1, *, zero: bool = False) -> None:
        super().__init__()
        self.extra, self.zero = extra, zero

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        hidden = _hidden(args, kwargs)
        if self.zero and hidden is not None:
            hidden = torch.zeros_like(hidden)
        return hidden if self.extra < 0 else (hidden, *([None] * self.extra))

    def extra_repr(self) -> str:
        return "zero" if self.zero else ""


def _sums(output: Any) -> list[set[Any]]:
    """The inputs (autograd nodes) of every addition the output was computed through."""
    stack = [t.grad_fn for t in _tensors(output) if t.grad_fn is not None]
    seen, sums = set(), []
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        inputs = [n for n, _ in node.next_functions if n is not None]
        if type(node).__name__.startswith("AddBackward"):
            sums.append(set(inputs))
        stack.extend(inputs)
    return sums


def _tensors(output: Any) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in _tensors(item)]
    return [t for t in vars(output).values() if isinstance(t, torch.Tensor)] if hasattr(
        output, "__dict__") else []


def _positions(model: nn.Module) -> list[tuple[str, nn.Module, str, nn.Module]]:
    """(name, parent, key, module) of every module in a stack or directly under the model."""
    found = []
    for parent_name, parent in model.named_modules():
        if parent is not model and not isinstance(parent, (nn.ModuleList, nn.Sequential)):
            continue
        for key, module in parent.named_children():
            if isinstance(module, WEIGHT_LAYERS) or len(weight_layers(module)) < 2:
                continue
            found.append((f"{parent_name}.{key}" if parent_name else key, parent, key, module))
    return found


def find_blocks(model: nn.Module, example_input: torch.Tensor) -> list[Block]:
    """The model's droppable blocks, innermost, in definition order."""
    positions = _positions(model)
    seen: dict[int, list[Any]] = {}

    def before(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        seen.setdefault(id(module), []).append(_hidden(args, kwargs))

    def after(module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        seen[id(module)].append(output)

    hooks = []
    for _, _, _, module in positions:
        hooks.append(module.register_forward_pre_hook(before, with_kwargs=True))
        hooks.append(module.register_forward_hook(after, with_kwargs=True))
    was_training = model.training
    try:
        with torch.enable_grad():  # the autograd graph shows which blocks are added to inputs
            output = model.eval()(example_input)
    except Exception as error:
        raise TrialError(f"student.drop_layers: cannot run {type(model).__name__} on the "
                         f"example input ({type(error).__name__}: {error})") from error
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    sums = _sums(output)
    blocks = []
    for name, parent, key, module in positions:
        record = seen.get(id(module), [])
        if len(record) != 2 or record[0] is None:  # not run, or run more than once
            continue
        given, output = record
        first = output[0] if isinstance(output, (tuple, list)) and output else output
        if isinstance(first, torch.Tensor) and first.shape == given.shape:
            extra = len(output) - 1 if isinstance(output, (tuple, list)) else -1
            pair = {given.grad_fn, first.grad_fn}
            branch = None not in pair and any(pair <= inputs for inputs in sums)
            blocks.append(Block(name, module, parent, key, extra, branch))
    return [b for b in blocks
            if not any(o is not b and any(m is o.module for m in b.module.modules())
                       for o in blocks)]


def choose(n: int, count: int, how: str, losses: Sequence[float] | None = None) -> list[int]:
    """Indices (of ``n`` candidates, in order) of the ``count`` dropped.

    ``last``: the last ones; ``every_other``: 1, 3, 5, ... (then from the end); ``ablation``:
    those whose skipping leaves the calibration loss lowest (``losses``, one per candidate).
    """
    if count <= 0:
        return []
    if count > n:
        raise TrialError(f"student.drop_layers: got {count}, this teacher has {n} droppable "
                         "blocks")
    if how == "last":
        return list(range(n - count, n))
    if how == "ablation":
        if losses is None or len(losses) != n:
            raise ValueError("block_choice ablation needs one calibration loss per block")
        return sorted(sorted(range(n), key=lambda i: (losses[i], -i))[:count])
    if how == "every_other":
        picked = list(range(1, n, 2))[:count]
        rest = [i for i in reversed(range(n)) if i not in picked]
        return sorted(picked + rest[: count - len(picked)])
    raise ValueError(f"unknown block choice {how!r}; expected one of {CHOICES}")


def calibration_batch(x: torch.Tensor, y: torch.Tensor, *, seed: int, size: int = 256
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed random batch of the training split (the plan's seed picks it)."""
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:size]
    return x[idx], y[idx]


def losses(variants: Iterator[nn.Module], x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """The task's loss of each model ``variants`` yields, on one batch, in eval mode."""
    found = []
    with torch.no_grad():
        for model in variants:
            was_training = model.training
            found.append(float(calibration_loss(model.eval()(x), y)))
            model.train(was_training)
    return found


def skipping_each(model: nn.Module, blocks: Sequence[Block]) -> Iterator[nn.Module]:
    """``model`` with each block in turn replaced by :class:`Skip` (put back after each)."""
    for block in blocks:
        setattr(block.parent, block.key, block.skip())
        try:
            yield model
        finally:
            setattr(block.parent, block.key, block.module)


def _delete(model: nn.Module, stack: nn.ModuleList, indices: Sequence[int]) -> None:
    """Delete ``indices`` from ``stack``; renumber the rest and update the configs' counts."""
    before = len(stack)
    kept = [m for i, m in enumerate(stack) if i not in indices]
    while len(stack):
        del stack[len(stack) - 1]
    stack.extend(kept)
    for index, block in enumerate(stack):
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = index
    configs = {id(c): c for m in model.modules() if (c := getattr(m, "config", None)) is not None}
    for config in configs.values():
        if getattr(config, "num_hidden_layers", None) == before:
            config.num_hidden_layers = len(stack)
        types = getattr(config, "layer_types", None)
        if isinstance(types, list) and len(types) == before:
            config.layer_types = [t for i, t in enumerate(types) if i not in indices]


def drop(model: nn.Module, blocks: Sequence[Block]) -> None:
    """Remove ``blocks`` from ``model`` in place (see the module's docstring for how)."""
    deleted: dict[int, tuple[nn.ModuleList, list[int]]] = {}
    for block in blocks:
        parent = block.parent
        cached = isinstance(parent, nn.ModuleList) and any(
            isinstance(getattr(m, "layer_idx", None), int) for m in block.module.modules())
        if cached:
            deleted.setdefault(id(parent), (parent, []))[1].append(int(block.key))
        else:
            setattr(parent, block.key, block.skip())
    for stack, indices in deleted.values():
        _delete(model, stack, indices)
