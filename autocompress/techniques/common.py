"""What every technique shares: its face, the trial context, the layers worth compressing, baking.

A technique is a module with the face :class:`Technique` describes. Its :class:`Context` holds
two kinds of thing, kept apart: what the technique reads (the teacher, the data, the teacher's
outputs, the fine-tuning settings; frozen) and what it registers for later (hooks, a trainer,
notes, the block map; :class:`Registered`, written only through the context's methods).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn
from torch.nn.utils import parametrize

from autocompress.errors import TrialError
from autocompress.params import Param
from autocompress.plan import Plan
from autocompress.spill import collect

if TYPE_CHECKING:
    from autocompress.techniques.training import Trainer

WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class Technique(Protocol):
    """One technique module: the parameters it adds to the space, and what it does to a model.

    ``apply`` returns the changed model (the same object or a new one); it never changes
    ``ctx.teacher``, and it reads only its own section of the plan. What it needs later in the
    trial (a pruning schedule, post-training quantization, a provider's trainer) it registers on
    ``ctx`` instead of doing it itself.
    """

    PARAMETERS: tuple[Param, ...]

    def apply(self, model: nn.Module, plan: Plan, ctx: Context) -> nn.Module: ...


@dataclass
class Registered:
    """What techniques registered on a context, for the trainer and the trial to run.

    ``before_epoch(epoch, model)`` hooks run before each fine-tuning epoch (a pruning schedule),
    ``after_training(model)`` hooks after it (post-training quantization); ``trainer`` replaces
    our fine-tuning loop (a provider's quantizer); ``notes`` are figures to record (parameters
    and MACs before and after); ``block_map`` is the teacher block of each student block.
    """

    before_epoch: list[Callable[[int, nn.Module], None]] = field(default_factory=list)
    after_training: list[Callable[[nn.Module], None]] = field(default_factory=list)
    trainer: Trainer | None = None
    notes: dict[str, float] = field(default_factory=dict)
    block_map: tuple[int, ...] | None = None


@dataclass(frozen=True, eq=False)
class Context:
    """What a technique may read besides the model and the plan, and where it registers.

    ``teacher_logits`` (and ``teacher_features``, the teacher's inputs to its last layer) are
    computed once per study on ``train_x`` and shared by every trial. ``lr``, ``optimizer``,
    ``schedule``, ``warmup`` and ``weight_decay`` are the fine-tuning recipe, resolved (no
    ``auto``; :func:`~autocompress.techniques.training.recipe_for`). ``on_epoch(epoch, model)``
    reports fidelity after each fine-tuning epoch; ``time_limit_s`` is the study's
    ``trial_timeout``. The fields are frozen: a technique changes the trial only through the
    registering methods below, which fill ``registered``.
    """

    teacher: nn.Module
    train_x: torch.Tensor
    train_y: torch.Tensor
    example_input: torch.Tensor
    teacher_logits: torch.Tensor | None = None
    teacher_features: torch.Tensor | None = None
    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 128
    optimizer: str = "adam"
    schedule: str = "constant"
    warmup: float = 0.0
    weight_decay: float = 0.0
    student_factory: Callable[[Plan, nn.Module], nn.Module] | None = None
    on_epoch: Callable[[int, nn.Module], None] | None = None
    time_limit_s: float | None = None
    started: float = field(default_factory=time.monotonic)
    registered: Registered = field(default_factory=Registered, compare=False)

    def check_time(self) -> None:
        """Raise :class:`TrialError` once the trial's time limit (``trial_timeout``) is spent."""
        if self.time_limit_s is not None and time.monotonic() - self.started > self.time_limit_s:
            raise TrialError(f"over its time limit of {self.time_limit_s:g} s (trial_timeout)")

    def add_before_epoch(self, hook: Callable[[int, nn.Module], None]) -> None:
        """Run ``hook(epoch, model)`` before every fine-tuning epoch (0-based)."""
        self.registered.before_epoch.append(hook)

    def add_after_training(self, hook: Callable[[nn.Module], None]) -> None:
        """Run ``hook(model)`` once fine-tuning is done."""
        self.registered.after_training.append(hook)

    def use_trainer(self, trainer: Trainer) -> None:
        """Fine-tune with ``trainer`` instead of our loop; a second one is combined with it."""
        current = self.registered.trainer
        self.registered.trainer = trainer if current is None else current.combine(trainer)

    def note(self, figures: Mapping[str, float]) -> None:
        """Record ``figures`` with the trial's metrics."""
        self.registered.notes.update(figures)

    def map_blocks(self, blocks: Sequence[int]) -> None:
        """Student block ``i`` was teacher block ``blocks[i]`` (for block-to-block distillation)."""
        self.registered.block_map = tuple(blocks)


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


def penultimate_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The inputs of ``model``'s last weight layer on ``x``, flattened per example (the
    teacher's features that distillation matches; mapped to a file when ``x`` is)."""
    last = weight_layers(model)[-1][1]
    captured: list[torch.Tensor] = []
    handle = last.register_forward_pre_hook(lambda _, args: captured.append(args[0].flatten(1)))

    def batches() -> Iterator[torch.Tensor]:
        for start in range(0, len(x), 1024):
            model(x[start : start + 1024])
            yield captured.pop()

    try:
        model.eval()
        with torch.inference_mode():
            return collect(batches(), like=x, name="teacher-features")
    finally:
        handle.remove()
