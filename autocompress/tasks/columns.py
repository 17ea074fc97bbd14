"""Checked columns of a split, and packing every split's inputs into one tensor the same way.

:mod:`autocompress.tasks.inputs` reads the forms users have; this module holds what is true of
every form: numbers only, one label per input, finite values, the dtypes the runtimes take, label
kinds (see :func:`labels_of`), and :func:`pack`, which turns named input columns into the one
tensor ``x`` the whole pipeline passes (see :mod:`autocompress.tasks.adapters` for the unpacking).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from autocompress import spill
from autocompress.errors import ConfigError
from autocompress.tasks.data import Split

WHERE = "task"
TEXT_KEYS = ("input_ids", "attention_mask", "token_type_ids")  # packed in this order
FILL = {"attention_mask": 1, "token_type_ids": 0}  # what a missing column means to the model
IMAGE_KEY = "pixel_values"
PLAIN = "x"  # the one input column of (x, y) data
LABEL_FORMS = ("integer class ids (or (N, L) next-token ids), one-hot rows, whole-number floats, "
               "or (N, D) float targets such as a teacher's embeddings")


def fail(split: str, got: str, expected: str) -> ConfigError:
    """The one-line error about one split: ``task: train: got '...', expected ...``."""
    return ConfigError(WHERE, split, got, expected)


@dataclass
class Columns:
    """One split as read: its input columns by name (``x`` for plain inputs) and labels."""

    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    notes: list[str] = field(default_factory=list)


def as_tensor(value: Any, split: str, what: str) -> torch.Tensor:
    """A tensor of numbers from a tensor, array, list or scalar; strings and ragged lists are
    refused."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, list | tuple) and value and all(isinstance(v, torch.Tensor)
                                                         for v in value):
        if len({tuple(v.shape) for v in value}) > 1:
            raise fail(split, f"{what} of different lengths", f"{what} of one shape per example")
        return torch.stack(value)
    first = "map strings to class ids" if what == "labels" else "tokenize text"
    not_numbers = fail(split, f"{what} that are not numbers ({_kind(value)})",
                       f"numbers ({first} first)")
    if isinstance(value, np.ndarray) and value.dtype.kind in "OUSV":
        raise not_numbers
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        text = str(exc).lower()
        if "sequence" in text or "length" in text or "shape" in text:
            raise fail(split, f"{what} of different lengths",
                       f"{what} of one shape per example") from None
        raise not_numbers from None


def _kind(value: Any) -> str:
    return (f"numpy dtype {value.dtype}" if isinstance(value, np.ndarray)
            else type(value).__name__)


def concat(chunks: list[dict[str, torch.Tensor]], split: str) -> dict[str, torch.Tensor]:
    """Chunks of columns joined along the batch; token ids of different lengths are padded."""
    keys = set(chunks[0])
    for chunk in chunks[1:]:
        if set(chunk) - set(FILL) != keys - set(FILL):
            raise fail(split, f"batches with different inputs ({sorted(keys)} and "
                              f"{sorted(chunk)})", "the same inputs in every batch")
    if "input_ids" in keys:
        chunks = pad_text(chunks)
    joined = {}
    for key in chunks[0]:
        parts = [c[key] for c in chunks]
        shapes = {tuple(p.shape[1:]) for p in parts}
        if len(shapes) > 1:
            first, second = sorted(shapes)[:2]
            raise fail(split, f"{_what(key)} of different shapes per example: {first} and "
                              f"{second}", "one shape per example (pad or resize them; dict "
                                           "batches of input_ids are padded for you)")
        joined[key] = torch.cat(parts) if len(parts) > 1 else parts[0]
    return joined


def _what(key: str) -> str:
    return "inputs" if key == PLAIN else key


def pad_text(chunks: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """Text chunks with the same columns and length: missing columns filled with what they
    mean (mask of ones, type ids of zeros), shorter sequences padded with a mask of 0."""
    keys = [k for k in TEXT_KEYS if any(k in c for c in chunks)]
    lengths = {int(c["input_ids"].shape[-1]) for c in chunks}
    if len(lengths) > 1 and "attention_mask" not in keys:
        keys.insert(1, "attention_mask")
    longest = max(lengths)
    padded = []
    for chunk in chunks:
        ids = chunk["input_ids"]
        out = {}
        for key in keys:
            column = chunk[key] if key in chunk else torch.full_like(ids, FILL[key])
            gap = longest - int(column.shape[-1])
            out[key] = torch.nn.functional.pad(column, (0, gap)) if gap else column
        padded.append(out)
    return padded


def cat_labels(labels: list[Any], split: str) -> torch.Tensor:
    tensors = [as_tensor(y, split, "labels") for y in labels]
    tensors = [t.reshape(1) if t.ndim == 0 else t for t in tensors]
    shapes = {tuple(t.shape[1:]) for t in tensors}
    if len(shapes) > 1:
        raise fail(split, f"labels of different shapes: {sorted(shapes)[:2]}", LABEL_FORMS)
    return torch.cat(tensors) if len(tensors) > 1 else tensors[0]


def finish(inputs: dict[str, torch.Tensor], labels: Any, split: str) -> Columns:
    """Checked columns: as many labels as inputs, finite numbers, the dtypes the runtimes use."""
    y = labels_of(as_tensor(labels, split, "labels"), split)
    checked = {}
    for key, x in inputs.items():
        x = as_tensor(x, split, _what(key))
        if x.ndim == 0 or x.shape[0] == 0:
            raise fail(split, "no examples (the data is empty)", "at least one example")
        if x.shape[0] != y.shape[0]:
            raise fail(split, f"{x.shape[0]} inputs and {y.shape[0]} labels",
                       "one label per input")
        checked[key] = _input_dtype(x, split, key)
    return Columns(checked, y)


def _input_dtype(x: torch.Tensor, split: str, key: str) -> torch.Tensor:
    if x.is_floating_point():
        bad = int((~torch.isfinite(x)).sum())
        if bad:
            raise fail(split, f"{_what(key)} with {bad} NaN or infinite values",
                       "finite numbers")
        return x.float() if x.dtype == torch.float64 else x
    if x.dtype.is_complex:
        raise fail(split, f"complex {_what(key)}", "real numbers")
    if key in TEXT_KEYS or x.dtype != torch.bool:
        return x.long()
    return x


def labels_of(y: torch.Tensor, split: str) -> torch.Tensor:
    """Labels as class ids (int64) or float targets; see the module docstring."""
    if y.ndim == 0 or y.shape[0] == 0:
        raise fail(split, "no examples (the data is empty)", "at least one example")
    if y.dtype.is_complex:
        raise fail(split, "complex labels", LABEL_FORMS)
    if y.dtype == torch.bool:
        y = y.long()
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.is_floating_point():
        bad = int((~torch.isfinite(y)).sum())
        if bad:
            raise fail(split, f"labels with {bad} NaN or infinite values", "finite numbers")
        if y.ndim == 1 and not bool((y == y.round()).all()):
            raise fail(split, "float labels that are not whole numbers (one value per "
                              "example: regression)", LABEL_FORMS)
        if y.ndim == 1 or (y.ndim == 2 and _one_hot(y)):
            return _ids(y.argmax(dim=1) if y.ndim == 2 else y.long(), split)
        return y.float() if y.dtype == torch.float64 else y
    if y.ndim == 2 and _one_hot(y):
        y = y.argmax(dim=1)
    if y.ndim not in (1, 2):  # (N, L): a language model's next-token ids, one per position
        raise fail(split, f"integer labels of shape {tuple(y.shape)}", LABEL_FORMS)
    return _ids(y.long(), split)


def _one_hot(y: torch.Tensor) -> bool:
    return bool(((y == 0) | (y == 1)).all()) and bool((y.sum(dim=1) == 1).all())


def _ids(y: torch.Tensor, split: str) -> torch.Tensor:
    if int(y.min()) < 0:
        raise fail(split, f"class id {int(y.min())}", "class ids of 0 or more")
    return y


def pack(splits: dict[str, Columns], *, takes: frozenset[str] | None = None
         ) -> tuple[dict[str, Split], tuple[str, ...], tuple[str, ...]]:
    """Each split as a :class:`Split`, its inputs packed the same way for all splits.

    Returns the splits, ``input_keys``: the names along dimension 1 of a packed ``x``
    (``("input_ids", "attention_mask")`` gives ``x`` of shape ``(N, 2, L)``), or ``()`` when
    ``x`` is the one input as is; and the columns left out because the model does not take
    them (``takes``: the keyword arguments its forward has; None: any). Token ids are padded to
    one length across splits; a mask of all ones and type ids of all zeros (what a model
    assumes without them) are left out too.
    """
    names = list(splits)
    first = names[0]
    for name in names[1:]:
        if _main(splits[name]) != _main(splits[first]):
            raise fail(name, f"inputs {sorted(splits[name].inputs)}",
                       f"the same inputs as {first} ({sorted(splits[first].inputs)})")
    dropped: tuple[str, ...] = ()
    if _main(splits[first]) == "input_ids":
        inputs = [splits[name].inputs for name in names]
        longest = max(int(i["input_ids"].shape[-1]) for i in inputs)
        keys = _text_keys(inputs, longest)
        dropped = tuple(k for k in keys[1:] if takes is not None and k not in takes)
        keys = tuple(k for k in keys if k not in dropped)
        xs = [_stacked(i, keys, longest) for i in inputs]
    else:
        keys = ()
        xs = [splits[name].inputs[_main(splits[name])] for name in names]
        for name, x in zip(names[1:], xs[1:], strict=True):
            if x.shape[1:] != xs[0].shape[1:] or x.dtype != xs[0].dtype:
                raise fail(name, f"inputs of shape {tuple(x.shape[1:])} ({x.dtype}) per "
                                 f"example", f"the shape and dtype of {first}'s: "
                                 f"{tuple(xs[0].shape[1:])} ({xs[0].dtype})")
    ys = [splits[name].labels for name in names]
    for name, y in zip(names[1:], ys[1:], strict=True):
        if y.is_floating_point() != ys[0].is_floating_point() or (
                y.is_floating_point() and y.shape[1:] != ys[0].shape[1:]):
            raise fail(name, f"labels {_label_kind(y)}", f"labels like {first}'s: "
                                                         f"{_label_kind(ys[0])}")
    packed = {name: Split(x, y) for name, x, y in zip(names, xs, ys, strict=True)}
    return packed, keys if len(keys) > 1 else (), dropped


ROWS = 8192  # rows of a mapped (spilled) split handled at a time


def _row_chunks(column: torch.Tensor) -> list[torch.Tensor]:
    """A mapped column in slices of rows (only views); one in memory as it is."""
    if not spill.is_mapped(column):
        return [column]
    return [column[i : i + ROWS] for i in range(0, int(column.shape[0]), ROWS)]


def _text_keys(inputs: list[dict[str, torch.Tensor]], longest: int) -> tuple[str, ...]:
    """The text columns ``x`` carries: ``input_ids``, and each other one where some split has a
    value its absence would not mean (padding to ``longest`` makes a mask of zeros)."""
    keys = ["input_ids"]
    for key in TEXT_KEYS[1:]:
        padded = key == "attention_mask" and any(int(i["input_ids"].shape[-1]) < longest
                                                  for i in inputs)
        if padded or any(key in i and any(bool((part != FILL[key]).any())
                                          for part in _row_chunks(i[key])) for i in inputs):
            keys.append(key)
    return tuple(keys)


def _stacked(inputs: dict[str, torch.Tensor], keys: tuple[str, ...], longest: int
             ) -> torch.Tensor:
    """One split's text columns padded to ``longest`` and stacked along dimension 1 (only
    ``input_ids`` when ``keys`` is just it); a mapped split is written out again, mapped."""
    ids = inputs["input_ids"]

    def rows(start: int, stop: int) -> torch.Tensor:
        part = ids[start:stop]
        gap = longest - int(part.shape[-1])
        columns = []
        for key in keys:
            column = inputs[key][start:stop] if key in inputs else torch.full_like(part, FILL[key])
            columns.append(torch.nn.functional.pad(column, (0, gap)) if gap else column)
        return torch.stack(columns, dim=1) if len(columns) > 1 else columns[0]

    if spill.is_mapped(ids) and (len(keys) > 1 or int(ids.shape[-1]) != longest):
        return spill.collect((rows(i, i + ROWS) for i in range(0, int(ids.shape[0]), ROWS)),
                             like=ids, name="packed")
    return rows(0, int(ids.shape[0])) if len(keys) > 1 or int(ids.shape[-1]) != longest \
        else ids


def _main(columns: Columns) -> str:
    return next(k for k in (PLAIN, IMAGE_KEY, "input_ids") if k in columns.inputs)


def _label_kind(y: torch.Tensor) -> str:
    if y.is_floating_point():
        return f"float targets of shape {tuple(y.shape[1:])} per example"
    return "class ids"
