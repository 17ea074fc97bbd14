"""Short, stable fingerprints of a teacher's weights and of a task's data.

A study folder belongs to one teacher and one task: its trials are only comparable with each
other. The fingerprints are stored with the study, and resuming with another teacher or other
data is refused, instead of silently mixing two studies.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

SAMPLE_ROWS = 4096  # rows of a large split hashed (spread evenly), so fingerprinting stays cheap


def _update(digest: hashlib._Hash, tensor: torch.Tensor) -> None:
    tensor = tensor.detach().cpu().contiguous()
    digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes()
                  if tensor.numel() else b"")


def of_model(model: nn.Module) -> str:
    """sha256 of every parameter and buffer (names, dtypes, shapes, values), 16 hex digits."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        _update(digest, tensor)
    return digest.hexdigest()[:16]


def of_tensors(*tensors: torch.Tensor | None) -> str:
    """sha256 of tensors' shapes and (for long ones, an even sample of) their rows."""
    digest = hashlib.sha256()
    for tensor in tensors:
        if tensor is None:
            digest.update(b"none")
            continue
        if len(tensor) > SAMPLE_ROWS:
            digest.update(f"rows{len(tensor)}".encode())
            tensor = tensor[torch.linspace(0, len(tensor) - 1, SAMPLE_ROWS).long()]
        _update(digest, tensor)
    return digest.hexdigest()[:16]
