"""Data in the forms users have it becomes the same Split; bad forms are one ConfigError line;
structured-output and multi-input teachers are wrapped into one tensor in, logits out."""

from __future__ import annotations

import copy
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from autocompress import spill
from autocompress.errors import ConfigError
from autocompress.measure.runtime import OrtModule, export_onnx
from autocompress.tasks import Task, TensorModel
from autocompress.tasks.hf import embedding_similarity

transformers = pytest.importorskip("transformers")

N, D, C = 12, 4, 3
X = torch.arange(N * D, dtype=torch.float32).reshape(N, D) / 10
Y = torch.arange(N) % C


def linear(inputs: int = D, outputs: int = C) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(inputs, outputs)).eval()


def task(train, val=None, **kw) -> Task:
    teacher = kw.pop("teacher", None)
    teacher = linear() if teacher is None else teacher
    return Task("t", teacher, train, val if val is not None else (X, Y), **kw)


def generator_of_batches():
    for start in range(0, N, 5):
        yield X[start : start + 5], Y[start : start + 5]


FORMS = {
    "tensors": lambda: (X, Y),
    "numpy float64 / int32": lambda: (X.double().numpy(), Y.numpy().astype(np.int32)),
    "list labels": lambda: [X, Y.tolist()],
    "TensorDataset": lambda: TensorDataset(X.double(), Y),
    "DataLoader of tuples": lambda: DataLoader(TensorDataset(X, Y), batch_size=5),
    "DataLoader, numpy samples": lambda: DataLoader(list(zip(X.numpy(), Y.numpy(),
                                                             strict=True)), batch_size=5),
    "list of samples": lambda: [(x, int(y)) for x, y in zip(X, Y, strict=True)],
    "generator of batches": generator_of_batches,
}


@pytest.mark.parametrize("make", FORMS.values(), ids=FORMS.keys())
def test_every_form_gives_the_same_split(make):
    built = task(make())
    assert built.train.x.dtype == torch.float32 and built.train.y.dtype == torch.int64
    assert torch.equal(built.train.x, X) and torch.equal(built.train.y, Y)
    assert built.input_keys == () and built.notes == [] and isinstance(built.teacher, nn.Sequential)
    assert torch.equal(built.example_input, X[:1])


ONE_HOT = torch.nn.functional.one_hot(Y, C)
LABELS = {
    "one-hot float": (ONE_HOT.float(), Y),
    "one-hot int": (ONE_HOT, Y),
    "whole floats": (Y.double(), Y),
    "column (N, 1)": (Y[:, None], Y),
    "bool": (Y == 1, (Y == 1).long()),
}


@pytest.mark.parametrize(("given", "expected"), LABELS.values(), ids=LABELS.keys())
def test_labels_become_class_ids(given, expected):
    built = task((X, given))
    assert built.train.y.dtype == torch.int64 and torch.equal(built.train.y, expected)


def test_float_targets_that_are_not_one_hot_stay_float32():
    targets = torch.linspace(-1, 1, N * C, dtype=torch.float64).reshape(N, C)
    built = task((X, targets), (X, targets), metric=embedding_similarity)
    assert built.train.y.dtype == torch.float32
    assert torch.equal(built.train.y, targets.float())


def test_a_float64_teacher_is_searched_as_a_float32_copy():
    teacher = linear().double()
    built = task((X.double(), Y), teacher=teacher)
    assert next(built.teacher.parameters()).dtype == torch.float32
    assert next(teacher.parameters()).dtype == torch.float64  # the user's model is left alone
    assert built.notes == ["teacher: float64 weights; a float32 copy is searched (ONNX Runtime "
                           "and int8 quantization run float32)"]


def _bert(labels: int = C) -> nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=32,
                                     max_position_embeddings=16, num_labels=labels)
    return transformers.BertForSequenceClassification(config).eval()


def _resnet() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16],
                                       depths=[1, 1], num_labels=C)
    return transformers.ResNetForImageClassification(config).eval()


def _rows(n: int, lengths: list[int]) -> list[dict]:
    """Tokenised rows of different lengths, as a ``datasets.Dataset`` of text yields them."""
    gen = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(1, 40, (lengths[i % len(lengths)],),
                                        generator=gen).tolist(),
             "label": i % C, "sentence": "raw text is ignored"} for i in range(n)]


def _padded(rows: list[dict], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row["input_ids"])] = torch.tensor(row["input_ids"])
        mask[i, : len(row["input_ids"])] = 1
    return ids, mask


def _pad_batch(rows: list[dict]) -> dict[str, torch.Tensor]:
    """A DataCollatorWithPadding: each batch padded to its own longest row."""
    ids, mask = _padded(rows, max(len(r["input_ids"]) for r in rows))
    return {"input_ids": ids, "attention_mask": mask,
            "labels": torch.tensor([r["label"] for r in rows])}


def test_hugging_face_text_batches_pack_ids_and_mask_and_wrap_the_teacher():
    train_rows, val_rows = _rows(10, [3, 5, 4, 7]), _rows(6, [6, 2])
    built = Task("bert", _bert(), DataLoader(train_rows, batch_size=4, collate_fn=_pad_batch),
                 val_rows)  # per-batch padding, and unpadded rows (with a raw text column)
    ids, mask = _padded(train_rows, 7)
    assert built.input_keys == ("input_ids", "attention_mask")
    assert built.train.x.dtype == torch.int64 and built.train.x.shape == (10, 2, 7)
    assert torch.equal(built.train.x, torch.stack([ids, mask], dim=1))
    assert torch.equal(built.val.x, torch.stack(_padded(val_rows, 7), dim=1))
    assert torch.equal(built.train.y, torch.arange(10) % C)
    assert isinstance(built.teacher, TensorModel)
    expected = built.teacher.model(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(built.teacher(built.train.x), expected)
    assert built.notes == ["teacher: wrapped in TensorModel, which unpacks input_ids, "
                           "attention_mask from x (dim 1) and returns the logits tensor; its "
                           "layers are named model.*"]
    assert built.preprocessing["stack_along_dim_1"] == ["input_ids", "attention_mask"]
    built.check_forward()
    columns = {"input_ids": ids, "attention_mask": mask, "labels": built.train.y}
    given = Task("bert", _bert(), columns, columns,
                 example_input={"input_ids": ids[:1].numpy(), "attention_mask": mask[:1]})
    assert torch.equal(given.example_input, built.train.x[:1])


def test_a_mask_of_ones_and_type_ids_of_zeros_are_dropped():
    ids = torch.randint(1, 40, (8, 6))
    columns = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
               "token_type_ids": torch.zeros_like(ids), "labels": torch.arange(8) % C}
    built = Task("bert", _bert(), columns, columns)
    assert built.input_keys == () and torch.equal(built.train.x, ids)
    assert built.notes == ["teacher: wrapped in TensorModel, which returns the logits tensor; "
                           "its layers are named model.*"]


def test_columns_the_teacher_does_not_take_are_left_out():
    from autocompress.tasks.hf import EncoderClassifier

    torch.manual_seed(0)
    teacher = EncoderClassifier(_bert().bert, num_classes=C).eval()  # forward(input_ids) only
    rows = _rows(6, [3, 5])
    built = Task("enc", teacher, DataLoader(rows, batch_size=4, collate_fn=_pad_batch), rows)
    assert built.input_keys == () and built.teacher is teacher
    assert torch.equal(built.train.x, _padded(rows, 5)[0])
    assert built.notes == ["attention_mask: not passed to the teacher, whose forward takes no "
                           "such argument (any padding, id 0, stays in x)"]
    again = Task("again", TensorModel(_bert(), input_keys=("input_ids", "attention_mask")),
                 rows, rows)
    assert again.input_keys == ("input_ids", "attention_mask") and again.notes == []


class _Images(Dataset):
    """Dict samples like a Hugging Face image dataset with a transform (float64 pixels)."""

    def __init__(self, n: int) -> None:
        self.pixels = torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(2),
                                  dtype=torch.float64)

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, i: int) -> dict:
        return {"pixel_values": self.pixels[i].numpy(), "labels": i % C}


def test_pixel_values_samples_become_float32_images():
    train = _Images(6)
    built = Task("resnet", _resnet(), train, DataLoader(_Images(4), batch_size=3))
    assert built.input_keys == () and built.train.x.dtype == torch.float32
    assert torch.equal(built.train.x, train.pixels.float())
    assert torch.equal(built.train.y, torch.arange(6) % C)
    assert isinstance(built.teacher, TensorModel)
    assert built.teacher(built.val.x).shape == (4, C)


class _Stream(IterableDataset):
    def __iter__(self):
        return iter(zip(X, Y, strict=True))


PER_EXAMPLE = D * 4 + 8  # float32 inputs and an int64 label


@pytest.mark.parametrize("form", ["dataset", "loader", "iterable", "generator"])
def test_data_over_the_memory_cap_is_used_whole_from_a_memory_mapped_file(tmp_path, form):
    data = {"dataset": TensorDataset(X, Y),
            "loader": DataLoader(TensorDataset(X, Y), batch_size=2),
            "iterable": DataLoader(_Stream(), batch_size=2),
            "generator": ((X[i : i + 3], Y[i : i + 3]) for i in range(0, N, 3))}[form]
    built = task(data, max_split_bytes=5 * PER_EXAMPLE, spill_dir=tmp_path)
    assert spill.is_mapped(built.train.x) and spill.is_mapped(built.train.y)
    assert torch.equal(built.train.x, X) and torch.equal(built.train.y, Y)  # all 12, in order
    assert not spill.is_mapped(built.val.x)  # the small split stays in memory
    assert len(built.notes) == 1 and built.notes[0].startswith(
        f"train: 12 examples take {N * PER_EXAMPLE / 2**30:.3g} GiB, more than "
        f"max_split_bytes ({5 * PER_EXAMPLE / 2**30:.3g} GiB): written once to {tmp_path}")
    assert sorted(f.stat().st_size for f in tmp_path.iterdir()) == [N * 8, N * D * 4]


def test_a_mapped_split_pickles_as_its_file_and_indexes_into_plain_tensors(tmp_path):
    built = task(TensorDataset(X, Y), max_split_bytes=PER_EXAMPLE, spill_dir=tmp_path)
    x = built.train.x
    assert len(pickle.dumps(x)) < 500  # workers map the file; they are not sent a copy
    again = pickle.loads(pickle.dumps(built.train))
    assert spill.is_mapped(again.x) and torch.equal(again.x, X) and torch.equal(again.y, Y)
    batch = x[torch.tensor([3, 1])]
    assert type(batch) is torch.Tensor and torch.equal(batch, X[[3, 1]])
    assert type(x[:2] * 2) is torch.Tensor


def test_without_a_spill_dir_the_files_go_to_a_temporary_folder_removed_at_exit(tmp_path):
    script = ("import torch, sys; from torch.utils.data import TensorDataset; from torch import nn;"
              "from autocompress.tasks import Task;"
              "x = torch.randn(40, 4); y = torch.arange(40) % 3;"
              "t = Task('t', nn.Linear(4, 3), TensorDataset(x, y), (x, y), max_split_bytes=64);"
              "print(t.train.x.spill_path)")
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True)
    path = Path(done.stdout.strip())
    assert path.name.startswith("train-x-") and path.parent.name.startswith("autocompress-data-")
    assert not path.parent.exists()


def test_text_batches_over_the_cap_are_packed_like_those_in_memory(tmp_path):
    ids = torch.randint(1, 50, (N, 6))
    mask = torch.ones(N, 6, dtype=torch.long)
    mask[::2, 4:] = 0
    batches = [{"input_ids": ids[i : i + 4], "attention_mask": mask[i : i + 4],
                "labels": Y[i : i + 4]} for i in range(0, N, 4)]
    val = {"input_ids": ids[:5, :5], "labels": Y[:5]}  # shorter: the train length is longest
    teacher = _TokenModel()
    in_memory = task(iter(batches), val, teacher=teacher)
    mapped = task(iter(batches), val, teacher=teacher, max_split_bytes=100, spill_dir=tmp_path)
    assert spill.is_mapped(mapped.train.x) and mapped.train.x.shape == (N, 2, 6)
    assert torch.equal(mapped.train.x, in_memory.train.x)
    assert torch.equal(mapped.val.x, in_memory.val.x)
    assert mapped.input_keys == in_memory.input_keys == ("input_ids", "attention_mask")


def test_text_of_different_lengths_over_the_cap_is_one_line(tmp_path):
    batches = [{"input_ids": torch.ones(4, length, dtype=torch.long), "labels": Y[:4]}
               for length in (6, 7)]
    with pytest.raises(ConfigError) as error:
        task(iter(batches), teacher=_TokenModel(), max_split_bytes=100, spill_dir=tmp_path)
    assert str(error.value) == (
        "task: train: got 'input_ids of shapes (6,) and (7,) per example', expected one shape "
        "per example in a split over max_split_bytes (read from disk, not padded: pad token ids "
        "to one length, a tokenizer's padding='max_length')")


class _TokenModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.head = nn.Linear(8, C)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                ) -> torch.Tensor:
        hidden = self.embed(input_ids)
        if attention_mask is not None:
            hidden = hidden * attention_mask.unsqueeze(-1)
        return self.head(hidden.mean(dim=1))


class _NoLogitsModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(D, C)

    def forward(self, x: torch.Tensor) -> dict:
        return {"hidden": self.layer(x)}


ALLOWED = ("(x, y) tensors or numpy arrays, a dict of columns, a torch Dataset, a list of "
           "samples, or a DataLoader of (x, y) or dict batches")
DICTS = "input_ids (+ attention_mask, token_type_ids) or pixel_values, and labels or label"
LABEL_FORMS = ("integer class ids (or (N, L) next-token ids), one-hot rows, whole-number floats, "
               "or (N, D) float targets such as a teacher's embeddings")
NAN_X = X.clone()
NAN_X[2, 1] = float("nan")
BAD = {
    "string labels": (dict(train=(X, np.array(["cat"] * N))),
                      "task: train: got 'labels that are not numbers (numpy dtype <U3)', "
                      "expected numbers (map strings to class ids first)"),
    "string label list": (dict(val=(X, ["cat"] * N)),
                          "task: val: got 'labels that are not numbers (list)', expected "
                          "numbers (map strings to class ids first)"),
    "ragged samples": (dict(train=[(torch.ones(3), 0), (torch.ones(4), 1)]),
                       "task: train: got 'inputs of different shapes per example: (3,) and "
                       "(4,)', expected one shape per example (pad or resize them; dict "
                       "batches of input_ids are padded for you)"),
    "count": (dict(train=(X, Y[:5])),
              "task: train: got '12 inputs and 5 labels', expected one label per input"),
    "nan inputs": (dict(test=(NAN_X, Y)),
                   "task: test: got 'inputs with 1 NaN or infinite values', expected finite "
                   "numbers"),
    "inf targets": (dict(train=(X, torch.full((N, 5), float("inf")))),
                    "task: train: got 'labels with 60 NaN or infinite values', expected "
                    "finite numbers"),
    "empty tensors": (dict(val=(X[:0], Y[:0])),
                      "task: val: got 'no examples (the data is empty)', expected at least "
                      "one example"),
    "empty loader": (dict(train=DataLoader(TensorDataset(X[:0], Y[:0]), batch_size=4)),
                     "task: train: got 'no examples (the data is empty)', expected at least "
                     "one example"),
    "no input key": (dict(train={"text_ids": X, "labels": Y}),
                     "task: train: got \"a dict with no input_ids or pixel_values (keys "
                     "['labels', 'text_ids'])\", expected " + DICTS),
    "no labels": (dict(train=[{"pixel_values": x} for x in X]),
                  "task: train: got \"a dict with keys ['pixel_values'] and no labels\", "
                  "expected " + DICTS),
    "inputs alone": (dict(train=X),
                     "task: train: got 'inputs alone (a Tensor of shape (12, 4)), no labels', "
                     "expected " + ALLOWED),
    "a number": (dict(train=3), "task: train: got 'a int', expected " + ALLOWED),
    "three-part batches": (dict(train=DataLoader(TensorDataset(X, Y, Y), batch_size=4)),
                           "task: train: got 'items of 3 parts', expected (x, y) pairs or "
                           "dicts of " + DICTS),
    "negative ids": (dict(train=(X, Y - 1)),
                     "task: train: got 'class id -1', expected class ids of 0 or more"),
    "regression": (dict(train=(X, Y + 0.5)),
                   "task: train: got 'float labels that are not whole numbers (one value per "
                   "example: regression)', expected " + LABEL_FORMS),
    "shape across splits": (dict(val=(torch.zeros(N, D + 1), Y)),
                            "task: val: got 'inputs of shape (5,) (torch.float32) per "
                            "example', expected the shape and dtype of train's: (4,) "
                            "(torch.float32)"),
    "labels across splits": (dict(val=(X, torch.rand(N, 5)), metric=embedding_similarity),
                             "task: val: got 'labels float targets of shape (5,) per "
                             "example', expected labels like train's: class ids"),
    "class id over outputs": (dict(val=(X, Y + C)),
                              "task: val: got 'class id 5 with a teacher of 3 outputs', "
                              "expected class ids from 0 to 2"),
    "float targets, accuracy": (dict(train=(X, torch.rand(N, C)), val=(X, torch.rand(N, C))),
                                "task: metric: got 'accuracy (the default) with float "
                                "targets', expected a metric for float targets, e.g. "
                                "autocompress.tasks.hf.embedding_similarity"),
    "example shape": (dict(example_input=torch.zeros(1, D + 1)),
                      "task: example_input: got 'shape (1, 5)', expected inputs shaped like "
                      "train's, (1, 4)"),
    "no logits": (dict(teacher=_NoLogitsModel()),
                  "task: teacher: got \"a dict with keys ['hidden'] and no logits\", expected "
                  "a tensor, an output with .logits or ['logits'], or a tuple whose first "
                  "tensor is the logits"),
}


@pytest.mark.parametrize(("changes", "message"), BAD.values(), ids=BAD.keys())
def test_bad_data_is_one_line_naming_the_split(changes, message):
    kwargs = {"train": (X, Y), "val": (X, Y), "teacher": linear(), **changes}
    with pytest.raises(ConfigError) as raised:
        Task("t", kwargs.pop("teacher"), kwargs.pop("train"), kwargs.pop("val"), **kwargs)
    assert str(raised.value) == message


def _same_everywhere(wrapped: TensorModel, x: torch.Tensor) -> None:
    """Logits through the adapter survive deepcopy, pickle, tracing and ONNX Runtime."""
    wrapped.eval()
    with torch.no_grad():
        logits = wrapped(x)
        assert isinstance(logits, torch.Tensor) and logits.shape == (len(x), C)
        assert torch.equal(copy.deepcopy(wrapped)(x), logits)
        assert torch.equal(pickle.loads(pickle.dumps(wrapped))(x), logits)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's deprecation notice, the tracer's advice
            traced = torch.jit.trace(wrapped, x[:1], check_trace=False)
        assert torch.allclose(traced(x), logits, atol=1e-5)
    ort = OrtModule(export_onnx(wrapped, x), threads=1, int8=False)
    assert torch.allclose(ort(x), logits, atol=1e-4)


def test_a_wrapped_bert_gives_logits_copies_pickles_and_exports():
    bert = _bert()
    ids, mask = _padded(_rows(4, [6, 3, 5]), 6)
    wrapped = TensorModel(bert, input_keys=("input_ids", "attention_mask"))
    names = dict(wrapped.named_modules())
    assert names["model.bert.encoder.layer.0.attention.self.query"] is \
        bert.bert.encoder.layer[0].attention.self.query
    expected = bert(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(wrapped(torch.stack([ids, mask], dim=1)), expected)
    _same_everywhere(wrapped, torch.stack([ids, mask], dim=1))


def test_a_wrapped_resnet_gives_logits_copies_pickles_and_exports():
    resnet = _resnet()
    pixels = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    wrapped = TensorModel(resnet)
    assert "model.classifier.1" in dict(wrapped.named_modules())
    assert torch.equal(wrapped(pixels), resnet(pixels).logits)
    _same_everywhere(wrapped, pixels)


def test_tuple_outputs_and_an_already_wrapped_teacher():
    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(D, C)

        def forward(self, x):
            return (None, self.layer(x))

    built = task((X, Y), teacher=Pair())
    assert isinstance(built.teacher, TensorModel)
    assert torch.equal(built.teacher(X), built.teacher.model.layer(X))
    again = task((X, Y), teacher=built.teacher)
    assert again.teacher is built.teacher and again.notes == []


def test_a_hugging_face_teacher_on_dict_batches_goes_through_a_search(tmp_path):
    import autocompress

    rows = _rows(60, [3, 8, 5, 9, 6])
    outcome = autocompress.search(
        _bert(), train=DataLoader(rows[:40], batch_size=8, collate_fn=_pad_batch),
        val=DataLoader(rows[40:], batch_size=8, collate_fn=_pad_batch),
        space={"transformer": {"blocks": [1]}, "quantize": {"bits": [8]},  # int8 ONNX Runtime
               "distill": {"hidden_weight": [1.0]}},
        trials=1, finetune_epochs=1, out_dir=tmp_path, progress=None)
    assert [r.state for r in outcome.results] == ["complete"], outcome.results[0].reason
    assert outcome.results[0].measurement["latency"]["runtime"] == "onnxruntime int8"
