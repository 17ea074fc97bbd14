"""User data in the forms users have it, read into the tensors every trial indexes.

Training draws ``x[idx]``, the metric calls ``model(split.x)`` and the runtimes export
``model(x)``, so each split becomes one input tensor and one label tensor before any work. Forms:

* an ``(x, y)`` pair of tensors, numpy arrays or lists (a :class:`Split` too);
* a mapping of whole columns (a tokenizer's ``BatchEncoding`` with ``labels`` added);
* a torch ``Dataset`` or a list of samples, each an ``(x, y)`` pair or a dict;
* a ``DataLoader`` (or any iterable) of ``(x, y)`` or dict batches.

Dicts are Hugging Face's: inputs ``input_ids`` (with ``attention_mask``, ``token_type_ids``) or
``pixel_values``, labels ``labels`` or ``label``; other keys (``idx``, raw text) are ignored.
Token ids padded to different lengths (per batch, per split, or not at all) are padded again to
the longest with id 0 and an attention mask of 0, which a masked model ignores.

Labels: integer class ids (int64) are the classification case; one-hot rows and whole-number
floats become class ids; other float targets (a teacher's embeddings, ``(N, D)``) stay float.
Float64 inputs become float32 and integer inputs int64 (what ONNX Runtime is fed). Anything else
is one :class:`ConfigError` line naming the split.

Memory: a split is held in memory up to ``max_bytes`` (``Task.max_split_bytes``, 2 GiB by
default). A larger one is read once, batch by batch, into files in ``spill_dir`` and used through
memory maps (:mod:`autocompress.spill`): every epoch reads its batches from the file, and
the process holds a batch, not the split. Its batches must then agree in shape (token ids are
not padded across batches there); a note says where the files are.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from autocompress import spill
from autocompress.tasks.columns import (
    IMAGE_KEY,
    PLAIN,
    TEXT_KEYS,
    Columns,
    as_tensor,
    cat_labels,
    concat,
    fail,
    finish,
)
from autocompress.tasks.data import Split

LABEL_KEYS = ("labels", "label")
MAX_BYTES = 2 * 2**30  # per split, the default of Task.max_split_bytes
READ_BATCH = 512
FORMS = ("(x, y) tensors or numpy arrays, a dict of columns, a torch Dataset, a list of "
         "samples, or a DataLoader of (x, y) or dict batches")
DICT_FORM = "input_ids (+ attention_mask, token_type_ids) or pixel_values, and labels or label"


def is_array(value: Any) -> bool:
    return isinstance(value, torch.Tensor | np.ndarray)


def read(data: Any, *, split: str, max_bytes: int = MAX_BYTES,
         spill_dir: str | Path | None = None) -> Columns:
    """``data`` in any of the forms above as checked, normalised columns (mapped from files
    in ``spill_dir`` past ``max_bytes``)."""
    if isinstance(data, Split):
        return finish({PLAIN: data.x}, data.y, split)
    if isinstance(data, Mapping) and not _ragged_columns(data):
        inputs, labels = item_columns(data, split)
        return finish(inputs, labels, split)
    if isinstance(data, Mapping):  # a tokenizer's unpadded output: one row per example
        data = _rows(data)
    if is_array(data):
        raise fail(split, f"inputs alone (a {type(data).__name__} of shape "
                          f"{tuple(data.shape)}), no labels", FORMS)
    if (isinstance(data, tuple | list) and len(data) == 2
            and (is_array(data[0]) or (isinstance(data[0], Mapping)
                                       and not isinstance(data[1], Mapping)))):
        inputs, labels = item_columns(data, split)
        return finish(inputs, labels, split)
    if isinstance(data, DataLoader):
        return _read_batches(data, split, max_bytes, spill_dir)
    if isinstance(data, IterableDataset) or _sized_indexable(data):
        if _sized_indexable(data) and len(data) == 0:
            raise fail(split, "no examples (the data is empty)", "at least one example")
        loader = DataLoader(data, batch_size=READ_BATCH, collate_fn=_Samples(split))
        return _read_batches(loader, split, max_bytes, spill_dir, chunked=True)
    if isinstance(data, Iterable) and not isinstance(data, str | bytes):
        return _read_batches(data, split, max_bytes, spill_dir)
    raise fail(split, f"a {type(data).__name__}", FORMS)


def _sized_indexable(data: Any) -> bool:
    """A map-style dataset: a torch one, a list of samples, a Hugging Face ``datasets``."""
    return hasattr(data, "__len__") and hasattr(data, "__getitem__") and not isinstance(
        data, str | bytes | Mapping)


def _ragged_columns(data: Mapping) -> bool:
    """Token ids as Python lists of different lengths (a tokenizer called without padding)."""
    ids = data.get("input_ids")
    return isinstance(ids, list) and len({len(row) if isinstance(row, list) else -1
                                          for row in ids}) > 1


def _rows(data: Mapping) -> list[dict[str, Any]]:
    n = len(data["input_ids"])
    columns = {k: v for k, v in data.items() if hasattr(v, "__len__") and len(v) == n
               and not isinstance(v, str | bytes)}
    return [{k: v[i] for k, v in columns.items()} for i in range(n)]


def item_columns(item: Any, split: str) -> tuple[dict[str, torch.Tensor], Any]:
    """The input columns and raw labels of one batch (or one whole split)."""
    if isinstance(item, Mapping):
        label_key = next((k for k in LABEL_KEYS if k in item), None)
        if label_key is None:
            raise fail(split, f"a dict with keys {sorted(map(str, item))} and no labels",
                       DICT_FORM)
        return _dict_inputs(item, split), item[label_key]
    if isinstance(item, tuple | list) and len(item) == 2:
        x, y = item
        if isinstance(x, Mapping):
            return _dict_inputs(x, split), y
        return {PLAIN: as_tensor(x, split, "inputs")}, y
    got = (f"items of {len(item)} parts" if isinstance(item, tuple | list)
           else f"items of type {type(item).__name__}")
    raise fail(split, got, f"(x, y) pairs or dicts of {DICT_FORM}")


def _dict_inputs(item: Mapping, split: str) -> dict[str, torch.Tensor]:
    text = "input_ids" in item
    if text == (IMAGE_KEY in item):
        kind = "both input_ids and pixel_values" if text else "no input_ids or pixel_values"
        raise fail(split, f"a dict with {kind} (keys {sorted(map(str, item))})", DICT_FORM)
    keys = [k for k in TEXT_KEYS if k in item] if text else [IMAGE_KEY]
    return {k: as_tensor(item[k], split, k) for k in keys}


class _Samples:
    """Collates samples into one chunk of columns (module-level: DataLoader workers pickle it)."""

    def __init__(self, split: str) -> None:
        self.split = split

    def __call__(self, samples: list) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        columns = []
        labels = []
        for sample in samples:
            inputs, label = item_columns(sample, self.split)
            columns.append({k: v.unsqueeze(0) for k, v in inputs.items()})
            labels.append(as_tensor(label, self.split, "labels").unsqueeze(0))
        return concat(columns, self.split), cat_labels(labels, self.split)


def _read_batches(batches: Iterable, split: str, max_bytes: int, spill_dir: str | Path | None,
                  *, chunked: bool = False) -> Columns:
    """Batches held in memory up to ``max_bytes``; past it, every batch (those held first) is
    written to files read back through memory maps (:mod:`autocompress.spill`)."""
    chunks: list = []
    held = 0
    spilled: _Spilled | None = None
    for batch in batches:
        if chunked:  # already columns (collated by _Samples)
            chunk = batch
        else:
            inputs, labels = item_columns(batch, split)
            chunk = (inputs, as_tensor(labels, split, "labels"))
        if spilled is not None:
            spilled.add(chunk)
            continue
        chunks.append(chunk)
        held += _nbytes(chunk)
        if held > max_bytes:
            spilled = _Spilled(split, spill.folder(spill_dir))
            for kept in chunks:
                spilled.add(kept)
            chunks = []
    if spilled is not None:
        return spilled.close(max_bytes)
    if not chunks:
        raise fail(split, "no examples (the data is empty)", "at least one example")
    inputs = concat([c[0] for c in chunks], split)
    return finish(inputs, cat_labels([c[1] for c in chunks], split), split)


class _Spilled:
    """A split over the memory cap, checked and normalised batch by batch (as :func:`finish`
    does for a whole split) and appended to one file per column."""

    def __init__(self, split: str, directory: Path) -> None:
        self.split, self.directory = split, directory
        self.writers: dict[str, spill.Writer] = {}
        self.label_writer = spill.Writer(directory, f"{split}-labels")
        self.first: Columns | None = None

    def add(self, chunk: tuple[dict[str, torch.Tensor], torch.Tensor]) -> None:
        columns = finish(*chunk, self.split)
        if self.first is None:
            self.first = columns
            self.writers = {key: spill.Writer(self.directory, f"{self.split}-{key}")
                            for key in columns.inputs}
        self._check(columns)
        for key, column in columns.inputs.items():
            self.writers[key].add(column)
        self.label_writer.add(columns.labels)

    def _check(self, columns: Columns) -> None:
        """Every batch like the first: the same inputs, shapes per example and label kind (in
        memory, token ids of different lengths are padded; written out they cannot be)."""
        assert self.first is not None
        first, split = self.first, self.split
        if set(columns.inputs) != set(first.inputs):
            raise fail(split, f"batches with different inputs ({sorted(first.inputs)} and "
                              f"{sorted(columns.inputs)})", "the same inputs in every batch")
        for key, column in columns.inputs.items():
            if column.shape[1:] != first.inputs[key].shape[1:]:
                raise fail(split, f"{_what(key)} of shapes {tuple(first.inputs[key].shape[1:])} "
                                  f"and {tuple(column.shape[1:])} per example",
                           "one shape per example in a split over max_split_bytes (read from "
                           "disk, not padded: pad token ids to one length, a tokenizer's "
                           "padding='max_length')")
        y, y0 = columns.labels, first.labels
        if y.dtype != y0.dtype or y.shape[1:] != y0.shape[1:]:
            raise fail(split, f"labels of shapes/kinds {tuple(y0.shape[1:])} {y0.dtype} and "
                              f"{tuple(y.shape[1:])} {y.dtype} in different batches",
                       "one kind of label in every batch")

    def close(self, max_bytes: int) -> Columns:
        inputs = {key: writer.close() for key, writer in self.writers.items()}
        labels = self.label_writer.close()
        size = sum(spill.nbytes(t) for t in [*inputs.values(), labels])
        note = (f"{self.split}: {len(labels)} examples take {_gib(size)}, more than "
                f"max_split_bytes ({_gib(max_bytes)}): written once to {self.directory} and "
                f"read from there through a memory map, batch by batch")
        return Columns(inputs, labels, [note])


def _what(key: str) -> str:
    return "inputs" if key == PLAIN else key


def _gib(n: int) -> str:
    return f"{n / 2**30:.3g} GiB"


def _nbytes(chunk: tuple[dict[str, torch.Tensor], torch.Tensor]) -> int:
    inputs, labels = chunk
    return sum(t.numel() * t.element_size() for t in [*inputs.values(), labels])
