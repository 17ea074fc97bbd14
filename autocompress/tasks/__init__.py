"""What a search compresses: a teacher, its data and the metric that scores it."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from autocompress.errors import ConfigError
from autocompress.outputs import LOGITS_FORMS, NoLogits
from autocompress.tasks.adapters import TensorModel, adapt, keywords
from autocompress.tasks.columns import FILL, IMAGE_KEY, WHERE, as_tensor, pack
from autocompress.tasks.data import LOADERS, Dataset, Split, load_dataset
from autocompress.tasks.inputs import MAX_BYTES, read
from autocompress.tasks.models import TEACHERS

Metric = Callable[[nn.Module, Split], float]

__all__ = ["DATASETS", "TEACHERS", "Dataset", "Metric", "Split", "Task", "TensorModel",
           "load_dataset"]

DATASETS = tuple(LOADERS)


def accuracy(model: nn.Module, split: Split, *, batch_size: int = 1024) -> float:
    """Share of ``split``'s labels (per token, for a language model's next-token labels) that
    the arg-max prediction equals, in [0, 1]."""
    model.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(split), batch_size):
            logits = model(split.x[start : start + batch_size])
            correct += int((logits.argmax(dim=-1) == split.y[start : start + batch_size]).sum())
    return correct / max(1, split.y.numel())


@dataclass
class Task:
    """A teacher with its data, checked and put in the one form every trial uses.

    ``train`` / ``val`` / ``test`` come in the forms users have them (see
    :mod:`autocompress.tasks.inputs`: tensors or numpy ``(x, y)`` pairs, dicts of columns, torch
    Datasets, lists of samples, DataLoaders of tuple or dict batches, Hugging Face batches
    included); each is read once into a :class:`Split` (every trial reuses the same data and the
    teacher's outputs on it), in memory up to ``max_split_bytes``; a larger split is written
    once to files in ``spill_dir`` (default: a temporary folder removed at exit) and read from
    them batch by batch through memory maps, said in ``notes``. A split that cannot be used is
    one :class:`ConfigError` line, here, before any work. ``metric(model, split) -> float`` is
    maximised; it defaults to classification accuracy.
    ``student_factory(plan, teacher) -> nn.Module`` builds the student for architectures the
    built-in student builder cannot cut (anything but a flat ``nn.Sequential``); it reads the
    plan's ``student.*`` choices itself.

    After construction:

    * ``teacher`` is a float32 copy when the given one had float64 weights (the data is float32
      too; ONNX Runtime's int8 paths need it), and a :class:`TensorModel` around it when its
      inputs are packed or its output is not a tensor (a Hugging Face ``ModelOutput``): layer
      names then start with ``model.``. The user's model itself is never changed.
    * ``input_keys``: the names along dimension 1 of a packed ``x`` (``("input_ids",
      "attention_mask")``: ``x`` of shape ``(N, 2, L)``), ``()`` when ``x`` is the input as is.
    * ``notes``: one line per such conversion or subset, for the study to print.
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
    max_split_bytes: int = MAX_BYTES
    spill_dir: str | Path | None = None
    notes: list[str] = field(default_factory=list, init=False)
    input_keys: tuple[str, ...] = field(default=(), init=False)

    def __post_init__(self) -> None:
        given = {"train": self.train, "val": self.val}
        if self.test is not None:
            given["test"] = self.test
        columns = {name: read(data, split=name, max_bytes=self.max_split_bytes,
                             spill_dir=self.spill_dir)
                   for name, data in given.items()}
        for read_split in columns.values():
            self.notes.extend(read_split.notes)
        splits, keys, dropped = pack(columns, takes=keywords(self.teacher))
        if dropped:
            self.notes.append(f"{', '.join(dropped)}: not passed to the teacher, whose forward "
                              f"takes no such argument (any padding, id 0, stays in x)")
        self.train, self.val, self.test = splits["train"], splits["val"], splits.get("test")
        self.example_input = self._example(keys)
        self.teacher, logits = self._teacher(keys)
        self.input_keys = (self.teacher.input_keys if isinstance(self.teacher, TensorModel)
                           else keys)
        if self.input_keys and self.preprocessing is None:  # how to feed an exported model
            self.preprocessing = {"stack_along_dim_1": list(self.input_keys), "dtype": "int64",
                                  "length": int(self.train.x.shape[-1]), "pad_value": 0}
        self._check_labels(logits)

    def _example(self, keys: tuple[str, ...]) -> torch.Tensor:
        given = self.example_input
        if given is None:
            return self.train.x[:1].clone()  # not a view: a mapped split's file stays out
        if isinstance(given, Mapping):
            ids = as_tensor(given.get("input_ids", given.get(IMAGE_KEY)), "example_input",
                            "inputs")
            given = torch.stack([as_tensor(given[k], "example_input", k) if k in given
                                 else torch.full_like(ids, FILL[k]) for k in keys], dim=1
                                ) if keys else ids
        example = as_tensor(given, "example_input", "inputs")
        example = (example.float() if example.dtype == torch.float64 else
                   example.long() if not example.is_floating_point() else example)
        if tuple(example.shape[1:]) != tuple(self.train.x.shape[1:]):
            raise ConfigError(WHERE, "example_input", f"shape {tuple(example.shape)}",
                              f"inputs shaped like train's, (1, "
                              f"{', '.join(map(str, self.train.x.shape[1:]))})")
        return example

    def _teacher(self, keys: tuple[str, ...]) -> tuple[nn.Module, torch.Tensor | None]:
        teacher = self.teacher
        if any(t.dtype == torch.float64 for t in (*teacher.parameters(), *teacher.buffers())):
            teacher = copy.deepcopy(teacher).float()
            self.notes.append("teacher: float64 weights; a float32 copy is searched (ONNX "
                              "Runtime and int8 quantization run float32)")
        try:
            adapted, logits = adapt(teacher, input_keys=keys, example=self.example_input)
        except NoLogits as exc:
            raise ConfigError(WHERE, "teacher", exc.description, LOGITS_FORMS) from None
        if adapted is not teacher and isinstance(adapted, TensorModel):
            unpacks = f"unpacks {', '.join(keys)} from x (dim 1) and " if keys else ""
            self.notes.append(f"teacher: wrapped in TensorModel, which {unpacks}returns the "
                              f"logits tensor; its layers are named model.*")
        return adapted, logits

    def _check_labels(self, logits: torch.Tensor | None) -> None:
        splits = {"train": self.train, "val": self.val, "test": self.test}
        if self.train.y.is_floating_point() and self.metric is accuracy:
            raise ConfigError(WHERE, "metric", "accuracy (the default) with float targets",
                              "a metric for float targets, e.g. "
                              "autocompress.tasks.hf.embedding_similarity")
        if self.train.y.is_floating_point() or logits is None or logits.ndim != 2:
            return
        classes = int(logits.shape[1])
        for name, split in splits.items():
            if split is not None and int(split.y.max()) >= classes:
                raise ConfigError(WHERE, name, f"class id {int(split.y.max())} with a teacher "
                                               f"of {classes} outputs",
                                  f"class ids from 0 to {classes - 1}")

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
