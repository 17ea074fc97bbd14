from __future__ import annotations

import numpy as np
import torch

from autocompress.tasks import load_dataset
from autocompress.tasks.data import split_arrays


def test_mnist5k_split_is_deterministic_stratified_and_disjoint():
    first, second = load_dataset("mnist5k"), load_dataset("mnist5k")
    for a, b in ((first.train, second.train), (first.val, second.val), (first.test, second.test)):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert (len(first.train), len(first.val), len(first.test)) == (3500, 750, 750)
    assert first.input_shape == (1, 28, 28) and first.num_classes == 10
    # stratified: every split holds each digit in the same share (500 of each in the 5,000)
    for split, per_class in ((first.train, 350), (first.val, 75), (first.test, 75)):
        assert torch.bincount(split.y).tolist() == [per_class] * 10
    # disjoint: no image appears in two splits
    rows = {tuple(x.flatten().tolist()) for x in first.train.x}
    assert not any(tuple(x.flatten().tolist()) in rows for x in first.test.x)


def test_split_changes_with_seed_and_standardises_by_train():
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(200, 1, 2, 2))
    y = np.repeat(np.arange(4), 50)
    a = split_arrays(x, y, seed=1)
    b = split_arrays(x, y, seed=2)
    assert not torch.equal(a[0].x, b[0].x)
    assert abs(float(a[0].x.mean())) < 1e-5 and abs(float(a[0].x.std()) - 1) < 1e-2


def test_digits_shapes():
    digits = load_dataset("digits")
    assert digits.input_shape == (1, 8, 8)
    assert len(digits.train) + len(digits.val) + len(digits.test) == 1797


def test_recorded_preprocessing_turns_raw_pixels_into_model_inputs():
    from autocompress.tasks.data import _load_mnist5k

    data = load_dataset("mnist5k")
    steps = data.preprocessing
    raw = torch.as_tensor(_load_mnist5k()[0] * steps["divide_by"], dtype=torch.float32)
    made = (raw / steps["divide_by"] - steps["subtract"]) / steps["then_divide_by"]
    first = data.test.x[0]
    assert float((made - first).abs().flatten(1).max(dim=1).values.min()) < 1e-4
