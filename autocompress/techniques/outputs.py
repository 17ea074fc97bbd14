"""Reading a model's output: the logits tensor, and the task's loss on a calibration batch.

A user's model may return a plain tensor, a tuple, or a structured output (Hugging Face's
``ModelOutput`` with ``.logits``). Tracing (:mod:`~autocompress.techniques.graph`), gradient
criteria and block ablation all need the one tensor the task is judged on, so they read it here
rather than each guessing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from autocompress.techniques.training import task_loss


def logits_of(outputs: Any) -> torch.Tensor:
    """The tensor a model's ``outputs`` are judged by: itself, ``.logits``, or the first one."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    logits = getattr(outputs, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(outputs, Mapping):
        found = outputs.get("logits")
        if isinstance(found, torch.Tensor):
            return found
        outputs = list(outputs.values())
    if isinstance(outputs, (tuple, list)):
        for item in outputs:
            if isinstance(item, torch.Tensor):
                return item
    raise TypeError(f"model output {type(outputs).__name__} holds no tensor to judge it by")


def calibration_loss(outputs: Any, targets: torch.Tensor) -> torch.Tensor:
    """The task's loss on ``outputs``; per-token logits (batch, seq, vocab) against token ids."""
    logits = logits_of(outputs)
    if (logits.dim() > 2 and not targets.is_floating_point()
            and targets.shape == logits.shape[:-1]):
        return F.cross_entropy(logits.flatten(0, -2), targets.flatten())
    return task_loss(logits, targets)
