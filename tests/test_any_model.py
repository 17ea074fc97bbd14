"""Models this project did not write, through the API with the shipped default space and no
student factory: a model-library ResNet and MobileNetV2 (Hugging Face's; torchvision does not
import on this machine's CPU torch), a user's residual CNN, a BERT classifier and a Llama causal
LM. Each gives a front with a feasible member smaller than its teacher, exported from Python in
TorchScript and ONNX and reloaded in a fresh process with the same predictions."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import autocompress
from autocompress.techniques.training import fit

transformers = pytest.importorskip("transformers")


class ResidualCNN(nn.Module):
    """A user's own residual network: a stem and two blocks on one 16-channel trunk."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16))
            for _ in range(2))
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = torch.relu(x + block(x))
        return self.head(x.mean(dim=(2, 3)))


def _resnet() -> nn.Module:
    config = transformers.ResNetConfig(num_channels=1, embedding_size=16, hidden_sizes=[16, 32],
                                       depths=[1, 1], layer_type="basic", num_labels=10)
    return transformers.ResNetForImageClassification(config)


def _mobilenet() -> nn.Module:
    config = transformers.MobileNetV2Config(num_channels=1, image_size=8, depth_multiplier=0.35,
                                            num_labels=10)
    return transformers.MobileNetV2ForImageClassification(config)


def _bert() -> nn.Module:
    config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64,
                                     max_position_embeddings=32, num_labels=2)
    return transformers.BertForSequenceClassification(config)


def _llama() -> nn.Module:
    config = transformers.LlamaConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2,
                                      intermediate_size=64, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(config)


def _images(digits):
    return ((digits.train.x[:600], digits.train.y[:600]), (digits.val.x, digits.val.y))


def _text(seed: int = 0):
    """Sequences whose label says whether token 7 occurs: learnable in a few epochs."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (600, 12), generator=generator)
    ids[::2, 5] = 7
    labels = (ids == 7).any(dim=1).long()
    samples = [{"input_ids": ids[i], "labels": labels[i]} for i in range(450)]
    batches = DataLoader(samples, batch_size=50)  # Hugging Face style dict batches
    return batches, {"input_ids": ids[450:], "labels": labels[450:]}


def _counting(seed: int = 0):
    """Token sequences that count up mod 40 from a random start: next-token labels."""
    generator = torch.Generator().manual_seed(seed)
    start = torch.randint(0, 40, (400, 1), generator=generator)
    ids = (start + torch.arange(13)) % 40
    return (ids[:300, :-1], ids[:300, 1:]), (ids[300:, :-1], ids[300:, 1:])


def _train_briefly(model: nn.Module, train, *, epochs: int) -> nn.Module:
    task = autocompress.Task("warm-up", model, *train)  # data read as the search reads it
    fit(task.teacher, task.train.x, task.train.y, epochs=epochs, lr=3e-3, batch_size=32)
    return model.eval()


CASES = {
    "residual_cnn": (ResidualCNN, "images", 3),
    "hf_resnet": (_resnet, "images", 3),
    "hf_mobilenet_v2": (_mobilenet, "images", 3),
    "hf_bert": (_bert, "text", 4),
    "hf_llama": (_llama, "counting", 6),
}


@pytest.fixture(scope="module", params=list(CASES))
def searched(request, digits, tmp_path_factory):
    build, data, epochs = CASES[request.param]
    torch.manual_seed(0)
    train, val = {"images": lambda: _images(digits), "text": _text,
                  "counting": _counting}[data]()
    teacher = _train_briefly(build(), (train, val), epochs=epochs)
    out = tmp_path_factory.mktemp(request.param)
    outcome = autocompress.search(
        teacher, train=train, val=val, space="default", trials=4, seed=0, sampler="random",
        finetune={"epochs": 1}, measure={"repeats": 5, "warmup": 1}, predictor=False,
        out_dir=out / "study", progress=lambda _: None)
    return request.param, outcome, val, out


def test_each_model_gives_a_feasible_member_smaller_than_its_teacher(searched):
    name, outcome, _, _ = searched
    assert not [r.reason for r in outcome.results if r.state == "failed"], name
    smaller = [m for m in outcome.front.members
               if m.feasible and m.metrics["memory_bytes"] < outcome.teacher["memory_bytes"]]
    assert smaller, f"{name}: no front member smaller than the teacher"


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_each_model_exports_and_reloads_in_a_fresh_process(searched, fmt):
    name, outcome, _, out = searched
    member = min(outcome.front.members, key=lambda m: m.metrics["memory_bytes"])
    folder = out / f"export-{fmt}"
    outcome.export(member.number, format=fmt, path=folder)
    x = outcome.task.val.x[:8]
    np.save(folder / "x.npy", x.numpy())
    run = ("import torch; m = torch.jit.load('model.pt')\n"
           "y = m(torch.from_numpy(x)).detach().numpy()" if fmt == "torchscript" else
           "import onnxruntime as ort; s = ort.InferenceSession('model.onnx')\n"
           "y = s.run(None, {'input': x})[0]")
    script = f"import numpy as np\nx = np.load('x.npy')\n{run}\nprint(y.argmax(-1).tolist())"
    fresh = subprocess.run([sys.executable, "-c", script], cwd=folder, capture_output=True,
                           text=True, check=True)
    model, *_ = autocompress.export.rebuild(outcome.out_dir, member.number, outcome.task)
    with torch.no_grad():
        expected = model(x).argmax(-1)
    got = torch.tensor(json.loads(fresh.stdout))
    agree = float((got == expected).float().mean())
    assert agree >= (1.0 if fmt == "torchscript" else 0.97), f"{name}: {agree:.2f}"


def test_a_torchvision_resnet_searches_where_torchvision_imports(digits, tmp_path):
    """torchvision's wheels need torch's CUDA libraries, so this runs only where it imports."""
    models = pytest.importorskip("torchvision.models")
    teacher = models.resnet18(num_classes=10)
    teacher.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)  # one-channel digits
    teacher = _train_briefly(teacher, _images(digits), epochs=1)
    outcome = autocompress.search(
        teacher, train=_images(digits)[0], val=_images(digits)[1], space="default", trials=2,
        seed=0, sampler="random", finetune={"epochs": 1}, measure={"repeats": 3, "warmup": 1},
        predictor=False, out_dir=tmp_path, progress=lambda _: None)
    assert not [r.reason for r in outcome.results if r.state == "failed"]
    assert any(m.metrics["memory_bytes"] < outcome.teacher["memory_bytes"]
               for m in outcome.front.members)
