"""The task's loss on a calibration batch, read from whatever a model's forward returns.

Gradient criteria and block ablation score a model by the task's loss on a calibration batch;
the logits come from :func:`autocompress.outputs.logits_of`, as for tracing and the task adapter.
"""

from __future__ import annotations

from typing import Any

import torch

from autocompress.outputs import logits_of
from autocompress.techniques.training import task_loss


def calibration_loss(outputs: Any, targets: torch.Tensor) -> torch.Tensor:
    """The task's loss on a model's ``outputs`` (per token for a language model's logits)."""
    return task_loss(logits_of(outputs), targets)
