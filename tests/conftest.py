"""Shared fixtures: small real data and teachers, trained once per test session."""

from __future__ import annotations

import os

import pytest
import torch
from postgres_server import postgres_url  # noqa: F401  (session fixture, see its docstring)

from autocompress.tasks import TEACHERS, load_dataset
from autocompress.techniques.training import fit

# Nothing reaches the network during tests: a closed network that drops packets instead of
# refusing them would turn a hub lookup or a usage report into a long hang.
for _name, _value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                      "HF_HUB_DISABLE_TELEMETRY": "1", "RAY_USAGE_STATS_ENABLED": "0"}.items():
    os.environ.setdefault(_name, _value)


@pytest.fixture
def one_thread():
    """Small models train many times faster on one torch thread than on two shared ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="session")
def mlp_teacher(digits):
    """LeNet-300-100 trained on the 8x8 digits (a second or two)."""
    torch.manual_seed(0)
    model = TEACHERS["lenet300"](digits.input_shape, digits.num_classes)
    fit(model, digits.train.x, digits.train.y, epochs=10, batch_size=64)
    return model.eval()


@pytest.fixture(scope="session")
def cnn_teacher(digits):
    torch.manual_seed(0)
    model = TEACHERS["lenet5"](digits.input_shape, digits.num_classes)
    fit(model, digits.train.x, digits.train.y, epochs=6, batch_size=64)
    return model.eval()


@pytest.fixture(scope="session")
def vit_teacher(digits):
    """A 4-block ViT (width 32, 4 heads) trained on the 8x8 digits (a few seconds)."""
    from autocompress.tasks.vit import ViT

    torch.manual_seed(0)
    model = ViT(digits.input_shape, digits.num_classes, dim=32, depth=4, heads=4, hidden=64)
    fit(model, digits.train.x, digits.train.y, epochs=12, batch_size=64)
    return model.eval()
