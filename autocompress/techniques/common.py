"""What every technique shares: the trial context, the layers worth compressing, baking."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from autocompress.errors import TrialError
from autocompress.plan import Plan

WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class Context:
    """What a technique may use besides the model and the plan.

    ``teacher_logits`` (and ``teacher_features``, the teacher's inputs to its last layer) are
    computed once per study on ``train_x`` and shared by every trial. Techniques add hooks:
    ``before_epoch`` (e.g. a pruning schedule) and ``after_training`` (e.g. post-training
    quantization); ``on_epoch(epoch, model)`` reports fidelity after each epoch. ``notes``
    collects figures a technique wants recorded (parameters and MACs before and after).
    """

    teacher: nn.Module
    train_x: torch.Tensor
    train_y: torch.Tensor
    example_input: torch.Tensor
    teacher_logits: torch.Tensor | None = None
    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 128
    seed: int = 0
    teacher_features: torch.Tensor | None = None
    student_factory: Callable[[Plan, nn.Module], nn.Module] | None = None
    on_epoch: Callable[[int, nn.Module], None] | None = None
    before_epoch: list[Callable[[int, nn.Module], None]] = field(default_factory=list)
    after_training: list[Callable[[nn.Module], None]] = field(default_factory=list)
    notes: dict[str, float] = field(default_factory=dict)
    time_limit_s: float | None = None  # the study's trial_timeout
    block_map: tuple[int, ...] | None = None  # teacher block of each student block (transformers)
    started: float = field(default_factory=time.monotonic)

    def check_time(self) -> None:
        """Raise :class:`TrialError` once the trial's time limit (``trial_timeout``) is spent."""
        if self.time_limit_s is not None and time.monotonic() - self.started > self.time_limit_s:
            raise TrialError(f"over its time limit of {self.time_limit_s:g} s (trial_timeout)")


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The (name, module) pairs whose ``weight`` compression acts on, in definition order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)]


def bake(model: nn.Module) -> nn.Module:
    """Fold every parametrization (masks, fake quantization) into plain weights, in place.

    Not ``parametrize.remove_parametrizations``: it deletes the weight property from the
    dynamically made ``Parametrized<Layer>`` class, which a deep copy shares with its original,
    so baking a copy would break the original. Here each module just goes back to its own class.
    """
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            values = {name: getattr(module, name).detach().clone()
                      for name in module.parametrizations}
            module.__class__ = module.__class__.__bases__[0]  # the class before parametrizing
            del module._modules["parametrizations"]
            for name, value in values.items():
                setattr(module, name, nn.Parameter(value))
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
