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

Memory: a split is read up to ``max_bytes`` (``Task.max_split_bytes``, 2 GiB by default). A sized
dataset over it gives a seeded random subset of that size, an unsized one (``IterableDataset``,
a generator) its first batches; a note says which. Streaming instead would need every reader of
``x`` to take batches from a loader: the training loop and gradient importance index
``x[idx]`` (and the teacher's cached logits ``[idx]``), the metric, the teacher's outputs and
the int8 calibration slice it, and the study fingerprints all of it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, Subset

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
SUBSET_SEED = 0
FORMS = ("(x, y) tensors or numpy arrays, a dict of columns, a torch Dataset, a list of "
         "samples, or a DataLoader of (x, y) or dict batches")
DICT_FORM = "input_ids (+ attention_mask, token_type_ids) or pixel_values, and labels or label"


def is_array(value: Any) -> bool:
    return isinstance(value, torch.Tensor | np.ndarray)


def read(data: Any, *, split: str, max_bytes: int = MAX_BYTES) -> Columns:
    """``data`` in any of the forms above as checked, normalised columns."""
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
        chunks, notes = _read_loader(data, split, max_bytes)
    elif isinstance(data, IterableDataset):
        loader = DataLoader(data, batch_size=READ_BATCH, collate_fn=_Samples(split))
        chunks, notes = _read_batches(loader, split, max_bytes, chunked=True)
    elif _sized_indexable(data):
        chunks, notes = _read_samples(data, split, max_bytes)
    elif isinstance(data, Iterable) and not isinstance(data, str | bytes):
        chunks, notes = _read_batches(data, split, max_bytes)
    else:
        raise fail(split, f"a {type(data).__name__}", FORMS)
    if not chunks:
        raise fail(split, "no examples (the data is empty)", "at least one example")
    inputs = concat([c[0] for c in chunks], split)
    labels = cat_labels([c[1] for c in chunks], split)
    columns = finish(inputs, labels, split)
    columns.notes.extend(notes)
    return columns


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


def _read_samples(data: Any, split: str, max_bytes: int) -> tuple[list, list[str]]:
    """A map-style dataset or list, sample by sample; over the cap, a seeded random subset."""
    total = len(data)
    if total == 0:
        return [], []
    collate = _Samples(split)
    keep = _fits(_nbytes(collate([data[0]])), max_bytes)
    notes = []
    if keep < total:
        data = Subset(data, _subset(total, keep))
        notes.append(_subset_note(split, keep, total, max_bytes))
    loader = DataLoader(data, batch_size=READ_BATCH, collate_fn=collate)
    return _read_batches(loader, split, None, chunked=True)[0], notes


def _read_loader(loader: DataLoader, split: str, max_bytes: int) -> tuple[list, list[str]]:
    """A user's loader, batch by batch; a sized dataset over the cap is read through a random
    subset, batched and collated as the loader does."""
    dataset = loader.dataset
    sized = (not isinstance(dataset, IterableDataset) and hasattr(dataset, "__len__")
             and loader.batch_size is not None and len(dataset) > 0)
    if not sized:
        return _read_batches(loader, split, max_bytes)
    inputs, labels = item_columns(loader.collate_fn([dataset[0]]), split)
    keep = _fits(_nbytes((inputs, as_tensor(labels, split, "labels"))), max_bytes)
    if keep >= len(dataset):
        return _read_batches(loader, split, None)
    subset = DataLoader(Subset(dataset, _subset(len(dataset), keep)),
                        batch_size=loader.batch_size, collate_fn=loader.collate_fn,
                        num_workers=loader.num_workers)
    return (_read_batches(subset, split, None)[0],
            [_subset_note(split, keep, len(dataset), max_bytes)])


def _read_batches(batches: Iterable, split: str, max_bytes: int | None, *,
                  chunked: bool = False) -> tuple[list, list[str]]:
    """Batches until they run out or hold ``max_bytes`` (then a note says so)."""
    chunks: list = []
    held, count = 0, 0
    iterator: Iterator = iter(batches)
    for batch in iterator:
        if chunked:  # already columns (collated by _Samples)
            chunk = batch
        else:
            inputs, labels = item_columns(batch, split)
            chunk = (inputs, as_tensor(labels, split, "labels"))
        chunks.append(chunk)
        count += _count(chunk[1])
        held += _nbytes(chunk)
        if max_bytes is not None and held >= max_bytes:
            if next(iterator, None) is not None:
                return chunks, [f"{split}: read the first {count} examples, "
                                f"{_gib(max_bytes)} in memory (max_split_bytes); the rest "
                                f"is not used"]
            break
    return chunks, []


def _fits(per_example: int, max_bytes: int) -> int:
    return max(1, int(max_bytes // max(1, per_example)))


def _subset(total: int, keep: int) -> list[int]:
    order = torch.randperm(total, generator=torch.Generator().manual_seed(SUBSET_SEED))
    return sorted(order[:keep].tolist())


def _subset_note(split: str, keep: int, total: int, max_bytes: int) -> str:
    return (f"{split}: {total} examples would take more than {_gib(max_bytes)} in memory "
            f"(max_split_bytes); a random subset of {keep} (seed {SUBSET_SEED}) is used")


def _gib(n: int) -> str:
    return f"{n / 2**30:.3g} GiB"


def _nbytes(chunk: tuple[dict[str, torch.Tensor], torch.Tensor]) -> int:
    inputs, labels = chunk
    return sum(t.numel() * t.element_size() for t in [*inputs.values(), labels])


def _count(t: torch.Tensor) -> int:
    return int(t.shape[0]) if t.ndim else 1


