"""What a search compresses: a teacher, its data and the metric that scores it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from autocompress.errors import ConfigError
from autocompress.tasks.data import LOADERS, Dataset, Split, load_dataset
from autocompress.tasks.models import TEACHERS

Metric = Callable[[nn.Module, Split], float]

__all__ = ["DATASETS", "TEACHERS", "Dataset", "Metric", "Split", "Task", "load_dataset"]

DATASETS = tuple(LOADERS)


def accuracy(model: nn.Module, split: Split, *, batch_size: int = 1024) -> float:
    """Share of ``split`` whose arg-max prediction equals the label, in [0, 1]."""
    model.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(split), batch_size):
            logits = model(split.x[start : start + batch_size])
            correct += int((logits.argmax(dim=1) == split.y[start : start + batch_size]).sum())
    return correct / max(1, len(split))


def _materialise(data: Split | tuple | Iterable) -> Split:
    """A Split from a Split, an ``(x, y)`` tensor pair, or a DataLoader of ``(x, y)`` batches."""
    if isinstance(data, Split):
        return data
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        return Split(data[0], torch.as_tensor(data[1]))
    xs, ys = [], []
    for batch in data:
        xs.append(batch[0])
        ys.append(torch.as_tensor(batch[1]))
    if not xs:
        raise ValueError("the data loader yielded no batches")
    return Split(torch.cat(xs), torch.cat(ys))


@dataclass
class Task:
    """A teacher with its data.

    ``train`` / ``val`` / ``test`` may be ``Split``\\ s, ``(x, y)`` tensor pairs, or DataLoaders
    yielding ``(x, y)`` batches; loaders are read once into memory, since every trial reuses the
    same data and the teacher's outputs on it. ``metric(model, split) -> float`` is maximised;
    it defaults to classification accuracy. ``student_factory(plan, teacher) -> nn.Module``
    builds the student for architectures the built-in student builder cannot cut (anything but a
    flat ``nn.Sequential``); it reads the plan's ``student.*`` choices itself.
    """

    name: str
    teacher: nn.Module
    train: Split
    val: Split
    test: Split | None = None
    metric: Metric = field(default=accuracy)
    example_input: torch.Tensor | None = None
    student_factory: Callable[..., nn.Module] | None = None
    preprocessing: dict | None = None  # raw input -> model input, recorded with exports

    def __post_init__(self) -> None:
        self.train = _materialise(self.train)
        self.val = _materialise(self.val)
        if self.test is not None:
            self.test = _materialise(self.test)
        if self.example_input is None:
            self.example_input = self.train.x[:1]

    def check_forward(self, *, where: str = "task") -> None:
        """The teacher must run on the example input: one clear error now, not a failed trial
        per plan later."""
        try:
            with torch.inference_mode():
                self.teacher.eval()(self.example_input)
        except Exception as exc:
            detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            raise ConfigError(where, "teacher", f"{type(exc).__name__}: {detail}",
                              f"a model whose forward accepts the example input "
                              f"(shape {tuple(self.example_input.shape)})") from None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.example_input.shape[1:])
