"""Teachers we define ourselves: flat ``nn.Sequential`` stacks, and a small ViT.

Flat stacks of linear / conv blocks are what the student builder can narrow and migrate, so the
LeNets are written that way; the ViT (:mod:`autocompress.tasks.vit`) is cut by the transformer
technique instead (blocks, heads, feed-forward neurons).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from autocompress.tasks.vit import vit_tiny


def lenet300(input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """LeNet-300-100, the MLP of Deep Compression (Han et al. 2016): in-300-100-out."""
    features = int(torch.tensor(input_shape).prod())
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(features, 300),
        nn.ReLU(),
        nn.Linear(300, 100),
        nn.ReLU(),
        nn.Linear(100, num_classes),
    )


def lenet5(input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """The Caffe LeNet-5 of Deep Compression: conv 20, conv 50, fc 500 (431k weights on 28x28).

    Inputs smaller than 28 pixels get padded convolutions so both poolings still fit.
    """
    channels, height = input_shape[0], input_shape[1]
    pad = 0 if height >= 28 else 2
    body = nn.Sequential(
        nn.Conv2d(channels, 20, 5, padding=pad),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5, padding=pad),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
    )
    with torch.no_grad():
        flat = body(torch.zeros(1, *input_shape)).shape[1]
    return nn.Sequential(
        *body, nn.Linear(flat, 500), nn.ReLU(), nn.Linear(500, num_classes)
    )


TEACHERS: dict[str, Callable[[tuple[int, ...], int], nn.Module]] = {
    "lenet300": lenet300,
    "lenet5": lenet5,
    "vit_tiny": vit_tiny,
}
