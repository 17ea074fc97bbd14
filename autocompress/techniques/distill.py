"""Knowledge distillation: fine-tune the student towards the teacher's softened outputs.

loss = alpha * KL(softmax(t / T) || softmax(s / T)) * T**2 + (1 - alpha) * cross-entropy(s, y)

The T**2 factor keeps the soft term's gradients on the scale of the hard term's (Hinton et al.
2015). The teacher's logits come precomputed in the context, once per study.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from autocompress.errors import TrialError
from autocompress.params import Param
from autocompress.plan import Plan
from autocompress.techniques.common import Context

PARAMETERS = (
    Param("temperature", "float", 4.0, "softening temperature T of both outputs",
          low=1.0, high=20.0),
    Param("alpha", "float", 0.7, "weight of the distillation term against cross-entropy",
          low=0.0, high=1.0),
)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """The distillation loss above; plain cross-entropy when there is no teacher or alpha is 0."""
    hard = F.cross_entropy(student_logits, labels)
    if teacher_logits is None or alpha == 0.0:
        return hard
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return alpha * soft * temperature**2 + (1.0 - alpha) * hard


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    teacher_logits: torch.Tensor | None = None,
    temperature: float = 4.0,
    alpha: float = 0.0,
    epochs: int = 3,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
    on_epoch=None,
) -> list[float]:
    """Train ``model`` in place with Adam; returns the mean loss of each epoch.

    Raises :class:`TrialError` on a non-finite loss, so a diverging trial fails with a reason.
    """
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(y), generator=generator)
        total, batches = 0.0, 0
        for start in range(0, len(y), batch_size):
            idx = order[start : start + batch_size]
            logits = model(x[idx])
            soft = teacher_logits[idx] if teacher_logits is not None else None
            loss = kd_loss(logits, soft, y[idx], temperature=temperature, alpha=alpha)
            if not math.isfinite(loss.item()):
                raise TrialError(f"non-finite loss {loss.item()} at epoch {epoch + 1}")
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += loss.item()
            batches += 1
        history.append(total / max(1, batches))
        model.eval()
        if on_epoch is not None:
            on_epoch(epoch + 1, model)
    return history


def apply(model: nn.Module, plan: Plan, ctx: Context) -> nn.Module:
    """Fine-tune the (narrowed, masked, fake-quantized) student against the teacher."""
    fit(
        model,
        ctx.train_x,
        ctx.train_y,
        teacher_logits=ctx.teacher_logits,
        temperature=float(plan.get("distill.temperature", 4.0)),
        alpha=float(plan.get("distill.alpha", 0.7)),
        epochs=ctx.epochs,
        lr=ctx.lr,
        batch_size=ctx.batch_size,
        seed=plan.seed,
        on_epoch=ctx.on_epoch,
    )
    return model
