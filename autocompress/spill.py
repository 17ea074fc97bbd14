"""Splits larger than memory: written once to a file, then read through a memory map.

Every reader of a split indexes a tensor (``x[idx]`` for a training batch, ``x[i : i + b]`` for
the metric and the teacher's outputs), so a split over ``max_split_bytes`` is written chunk by
chunk to raw files and comes back as tensors mapped from them (:func:`torch.from_file`, private
mapping). Each epoch then reads its batches from the file through the page cache: the process's
own (anonymous) memory holds a batch, not the split, and the kernel drops cached pages under
pressure. The files live in ``spill_dir`` (default: a fresh temporary folder) and are removed
when the process that made them exits (not after ``kill -9``: the note names the folder).

A mapped tensor pickles as its file's path, shape and dtype, so ``--jobs`` workers and Ray
workers on the same machine map the same file instead of receiving a copy of it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable
from pathlib import Path

import torch

_MADE: list[Path] = []  # folders this process created, removed when it exits


class MappedTensor(torch.Tensor):
    """A tensor read from a file through a memory map; operations on it give plain tensors."""

    __torch_function__ = torch._C._disabled_torch_function_impl
    spill_path: str

    def __reduce_ex__(self, protocol: int):
        return open_mapped, (self.spill_path, self.dtype, tuple(self.shape))


def open_mapped(path: str | Path, dtype: torch.dtype, shape: tuple[int, ...]) -> MappedTensor:
    """The tensor stored raw (C order) in ``path``, mapped, not read."""
    count = 1
    for size in shape:
        count *= size
    if not Path(path).is_file():
        raise FileNotFoundError(f"spilled data {path} is not on this machine (a split over "
                                f"max_split_bytes is read from a file: give spill_dir on a "
                                f"file system every worker sees)")
    flat = torch.from_file(str(path), shared=False, size=count, dtype=dtype)
    mapped = flat.view(shape).as_subclass(MappedTensor)
    mapped.spill_path = str(path)
    return mapped


def is_mapped(tensor: torch.Tensor) -> bool:
    return isinstance(tensor, MappedTensor)


def folder(spill_dir: str | Path | None) -> Path:
    """``spill_dir``, or a temporary folder of this process's, removed when it exits."""
    if spill_dir is not None:
        path = Path(spill_dir).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        return path
    path = Path(tempfile.mkdtemp(prefix="autocompress-data-"))
    if not _MADE:
        atexit.register(_remove_made, os.getpid())
    _MADE.append(path)
    return path


def _remove_made(pid: int) -> None:
    if os.getpid() == pid:  # not in a forked child that inherited the hook
        for path in _MADE:
            shutil.rmtree(path, ignore_errors=True)


class Writer:
    """Rows appended chunk by chunk to one raw file; :meth:`close` maps it back."""

    def __init__(self, directory: Path, name: str) -> None:
        self.path = directory / f"{name}-{uuid.uuid4().hex[:8]}.bin"
        self._file = self.path.open("wb")
        self.dtype: torch.dtype | None = None
        self.row_shape: tuple[int, ...] | None = None
        self.rows = 0

    def add(self, rows: torch.Tensor) -> None:
        """Append ``rows`` (one shape per row and one dtype for the whole file, checked by the
        caller: a mismatch here is a bug, so it is an assertion)."""
        rows = rows.detach().cpu().contiguous()
        if self.dtype is None:
            self.dtype, self.row_shape = rows.dtype, tuple(rows.shape[1:])
        assert rows.dtype == self.dtype and tuple(rows.shape[1:]) == self.row_shape
        self._file.write(rows.numpy().tobytes() if rows.dtype != torch.bfloat16
                         else rows.view(torch.int16).numpy().tobytes())
        self.rows += int(rows.shape[0])

    def close(self) -> MappedTensor:
        self._file.close()
        assert self.dtype is not None and self.row_shape is not None, "no rows written"
        return open_mapped(self.path, self.dtype, (self.rows, *self.row_shape))


def collect(parts: Iterable[torch.Tensor], *, like: torch.Tensor, name: str) -> torch.Tensor:
    """``torch.cat(parts)``, or, when ``like`` (the split they come from) is mapped, the same
    rows written to a file beside it and mapped: a split too large for memory keeps its
    per-example outputs (the teacher's logits and features) on disk too."""
    if not is_mapped(like):
        return torch.cat(list(parts))
    writer = Writer(Path(like.spill_path).parent, name)
    for part in parts:
        writer.add(part)
    return writer.close()


def nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()
