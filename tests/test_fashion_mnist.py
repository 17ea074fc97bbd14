"""Fashion-MNIST (issue 19): the idx reader on hand-made files, and the real data set's splits
when ``make install`` could put Debian's ``dataset-fashion-mnist`` in place."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from autocompress.config import study_from_dict
from autocompress.errors import ConfigError
from autocompress.tasks import DATASETS, load_dataset
from autocompress.tasks.data import (
    FASHION_FILES,
    SPLIT_SEED,
    _fashion_split,
    fashion_mnist_files,
    fashion_mnist_split,
    read_idx,
)


def write_idx(path: Path, header: bytes, body: bytes, *, compress: bool = True) -> Path:
    """An idx file from raw header and data bytes, so every byte of it is the test's choice."""
    path.write_bytes(gzip.compress(header + body) if compress else header + body)
    return path


def one_line_error(call, *args) -> str:
    with pytest.raises(ConfigError) as caught:
        call(*args)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_reads_a_hand_made_uint8_idx_file_exactly(tmp_path):
    values = bytes(range(24))  # 2 images of 3x4 pixels
    path = write_idx(tmp_path / "x.gz", b"\x00\x00\x08\x03" + struct.pack(">3I", 2, 3, 4), values)
    array = read_idx(path)
    assert array.dtype == np.uint8 and array.shape == (2, 3, 4) and array.flags.writeable
    assert np.array_equal(array, np.arange(24, dtype=np.uint8).reshape(2, 3, 4))


def test_reads_big_endian_int32_into_native_order(tmp_path):
    body = struct.pack(">3i", -1, 7, 1 << 20)
    array = read_idx(write_idx(tmp_path / "y.gz", b"\x00\x00\x0c\x01" + struct.pack(">I", 3), body))
    assert array.dtype == np.dtype("int32") and array.tolist() == [-1, 7, 1 << 20]


@pytest.mark.parametrize(
    ("header", "body", "compress", "says"),
    [
        (b"\x08\x03\x00\x00" + struct.pack(">3I", 1, 2, 2), bytes(4), True, "magic number"),
        (b"\x00\x00\x07\x01" + struct.pack(">I", 4), bytes(4), True, "magic number"),  # no type 7
        (b"\x00\x00\x08\x03" + struct.pack(">I", 1), b"", True, "header cut"),
        (b"\x00\x00\x08\x03" + struct.pack(">3I", 2, 3, 4), bytes(23), True, "23 of 24 data"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 4), bytes(5), True, "more than the 4"),
        (b"\x00\x00\x08\x02" + struct.pack(">2I", 1 << 20, 1 << 20), b"", True, "dimensions"),
        (b"\x00\x00\x08\x04" + struct.pack(">4I", *[1 << 16] * 4), b"", True, "dimensions"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 4), bytes(4), False, "BadGzipFile"),
    ],
    ids=["wrong-magic", "unknown-type", "cut-header", "truncated", "trailing", "huge",
         "wrapping", "not-gzip"],
)
def test_a_damaged_file_is_one_config_error_line_naming_it(tmp_path, header, body, compress, says):
    path = write_idx(tmp_path / "bad-idx1-ubyte.gz", header, body, compress=compress)
    message = one_line_error(read_idx, path)
    assert str(path) in message and says in message and "make install" in message


def test_a_gzip_stream_cut_short_is_one_config_error_line(tmp_path):
    whole = gzip.compress(b"\x00\x00\x08\x01" + struct.pack(">I", 1000) + bytes(range(250)) * 4)
    path = tmp_path / "cut-idx1-ubyte.gz"
    path.write_bytes(whole[: len(whole) // 2])
    message = one_line_error(read_idx, path)
    assert str(path) in message and "make install" in message


def test_missing_files_name_the_first_one_missing_and_say_how_to_get_them(tmp_path):
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    write_idx(folder / FASHION_FILES["train"][0], b"\x00\x00\x08\x01\x00\x00\x00\x00", b"")
    message = one_line_error(fashion_mnist_files, [folder, tmp_path / "elsewhere"])
    assert str(folder / FASHION_FILES["train"][1]) in message and "make install" in message
    assert "AUTOCOMPRESS_DATA" in message
    assert "no such file" in one_line_error(read_idx, tmp_path / "absent.gz")


def test_a_well_formed_file_of_the_wrong_shape_or_labels_is_refused(tmp_path):
    images = write_idx(tmp_path / "i.gz", b"\x00\x00\x08\x03" + struct.pack(">3I", 2, 28, 28),
                       bytes(2 * 28 * 28))
    labels = write_idx(tmp_path / "l.gz", b"\x00\x00\x08\x01" + struct.pack(">I", 2), b"\x00\x0a")
    assert "60000 uint8 images of 28x28" in one_line_error(_fashion_split, images, labels, 60_000)
    assert "2 uint8 labels in 0..9" in one_line_error(_fashion_split, images, labels, 2)
    empty = write_idx(tmp_path / "e.gz", b"\x00\x00\x08\x01" + struct.pack(">I", 0), b"")
    assert "largest None" in one_line_error(_fashion_split, images, empty, 2)


def test_fashion_mnist_is_a_dataset_name_study_files_accept():
    assert "fashion_mnist" in DATASETS
    config = study_from_dict({"task": {"dataset": "fashion_mnist", "teacher": "lenet5"}})
    assert config.task.dataset == "fashion_mnist"


# --- the real data set: present after `make install` (or `make fashion-mnist`) ------------------

def _real_files() -> dict[str, tuple[Path, Path]] | None:
    try:
        return fashion_mnist_files()
    except ConfigError:
        return None


needs_data = pytest.mark.skipif(
    _real_files() is None,
    reason="Fashion-MNIST's idx files are not installed (Debian's dataset-fashion-mnist could not "
           "be installed or unpacked): run `make fashion-mnist`",
)


@pytest.fixture(scope="module")
def fashion():
    return load_dataset("fashion_mnist")


@needs_data
def test_official_test_set_and_a_55k_5k_split_of_the_training_set(fashion):
    assert (len(fashion.train), len(fashion.val), len(fashion.test)) == (55_000, 5_000, 10_000)
    assert fashion.input_shape == (1, 28, 28) and fashion.num_classes == 10
    for split in (fashion.train, fashion.val, fashion.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
    # standardised by the training split, as mnist5k is
    assert abs(float(fashion.train.x.mean())) < 1e-3
    assert abs(float(fashion.train.x.std()) - 1) < 1e-3
    counts = torch.bincount(fashion.val.y, minlength=10)
    assert counts.min() >= 0.99 * 500 and counts.max() <= 1.01 * 500
    assert int(fashion.test.y[0]) == 9  # the official first test image is an ankle boot


@needs_data
def test_validation_is_drawn_from_train_images_that_train_does_not_hold(fashion):
    files = _real_files()
    labels = read_idx(files["train"][1]).astype(np.int64)
    train, val = fashion_mnist_split(labels)
    assert (len(train), len(val)) == (55_000, 5_000) and not np.intersect1d(train, val).size
    assert np.array_equal(np.union1d(train, val), np.arange(60_000))
    assert torch.equal(fashion.val.y, torch.from_numpy(labels[val]))
    assert not np.array_equal(fashion_mnist_split(labels, seed=SPLIT_SEED + 1)[1], val)
    raw = read_idx(files["train"][0])
    steps = fashion.preprocessing
    made = (torch.from_numpy(raw[val].astype(np.float32)).unsqueeze(1) / steps["divide_by"]
            - steps["subtract"]) / steps["then_divide_by"]
    assert float((made - fashion.val.x).abs().max()) < 1e-5  # the recorded steps remake inputs
    test_labels = read_idx(files["test"][1]).astype(np.int64)
    assert torch.equal(fashion.test.y, torch.from_numpy(test_labels))  # official order kept


@needs_data
def test_two_loads_are_identical(fashion):
    again = load_dataset("fashion_mnist")
    for a, b in ((fashion.train, again.train), (fashion.val, again.val),
                 (fashion.test, again.test)):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert again.preprocessing == fashion.preprocessing
