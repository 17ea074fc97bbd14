"""Knowledge distillation: fine-tune the student towards the teacher's softened outputs.

loss = alpha * KL(softmax(t / T) || softmax(s / T)) * T**2 + (1 - alpha) * cross-entropy(s, y)
       + feature_weight * MSE(P(student features), teacher features)

The T**2 factor keeps the soft term's gradients on the scale of the hard term's (Hinton et al.
2015). The optional feature term matches the inputs of the last weight layer (the penultimate
features), through a learned linear map ``P`` when the student is narrower (FitNets, Romero et
al. 2015); ``P`` is trained with the student and then dropped. The teacher's logits and features
come precomputed in the context, once per study.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from autocompress.errors import TrialError
from autocompress.params import Param
from autocompress.plan import Plan
from autocompress.techniques import nni_adapter
from autocompress.techniques.common import Context, weight_layers

PARAMETERS = (
    Param("temperature", "float", 4.0, "softening temperature T of both outputs",
          low=1.0, high=20.0),
    Param("alpha", "float", 0.7, "weight of the distillation term against cross-entropy",
          low=0.0, high=1.0),
    Param("feature_weight", "float", 0.0,
          "weight of the penultimate-feature matching loss (0 = off)", low=0.0, high=10.0),
    Param("method", "choice", "kd",
          "kd: the loss above; nni.layerwise: plus NNI's MSE between matching layers' outputs",
          values=("kd", *nni_adapter.DISTILLERS)),
    Param("layer_weight", "float", 1.0, "nni.layerwise: weight of each matched layer's MSE",
          low=0.0, high=10.0),
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


def penultimate_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The inputs of ``model``'s last weight layer on ``x`` (flattened per example)."""
    last = weight_layers(model)[-1][1]
    captured: list[torch.Tensor] = []
    handle = last.register_forward_pre_hook(lambda _, args: captured.append(args[0].flatten(1)))
    try:
        model.eval()
        with torch.inference_mode():
            for start in range(0, len(x), 1024):
                model(x[start : start + 1024])
    finally:
        handle.remove()
    return torch.cat(captured)


class _FeatureMatch:
    """Captures the student's penultimate features and scores them against the teacher's."""

    def __init__(self, model: nn.Module, target: torch.Tensor) -> None:
        last = weight_layers(model)[-1][1]
        self.target = target
        self.current: torch.Tensor | None = None
        self.handle = last.register_forward_pre_hook(self._capture)
        width = last.weight.shape[1] if isinstance(last, nn.Linear) else None
        same = width == target.shape[1]
        self.projection = nn.Identity() if same else nn.LazyLinear(target.shape[1], bias=False)

    def _capture(self, _: nn.Module, args: tuple) -> None:
        self.current = args[0].flatten(1)

    def loss(self, idx: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self.projection(self.current), self.target[idx])


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    teacher_logits: torch.Tensor | None = None,
    temperature: float = 4.0,
    alpha: float = 0.0,
    teacher_features: torch.Tensor | None = None,
    feature_weight: float = 0.0,
    epochs: int = 3,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
    before_epoch: Sequence[Callable[[int, nn.Module], None]] = (),
    on_epoch: Callable[[int, nn.Module], None] | None = None,
    check: Callable[[], None] | None = None,
) -> list[float]:
    """Train ``model`` in place with Adam; returns the mean loss of each epoch.

    Raises :class:`TrialError` on a non-finite loss, so a diverging trial fails with a reason.
    ``check()`` runs before every batch (a trial's time limit raises from it).
    """
    generator = torch.Generator().manual_seed(seed)
    features = None
    if teacher_features is not None and feature_weight > 0:
        features = _FeatureMatch(model, teacher_features)
        with torch.no_grad():
            model(x[:2])
            features.projection(features.current)  # materialise a lazy projection
    params = list(model.parameters()) + (list(features.projection.parameters()) if features else [])
    optimiser = torch.optim.Adam(params, lr=lr)
    history = []
    try:
        for epoch in range(epochs):
            for hook in before_epoch:
                hook(epoch, model)
            model.train()
            order = torch.randperm(len(y), generator=generator)
            total, batches = 0.0, 0
            for start in range(0, len(y), batch_size):
                if check is not None:
                    check()
                idx = order[start : start + batch_size]
                logits = model(x[idx])
                soft = teacher_logits[idx] if teacher_logits is not None else None
                loss = kd_loss(logits, soft, y[idx], temperature=temperature, alpha=alpha)
                if features is not None:
                    loss = loss + feature_weight * features.loss(idx)
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
    finally:
        if features is not None:
            features.handle.remove()
    return history


def apply(model: nn.Module, plan: Plan, ctx: Context) -> nn.Module:
    """Fine-tune the (narrowed, pruned, fake-quantized) student against the teacher.

    When the plan asks for NNI's quantizer or distiller, NNI wraps the model for the same loop
    (:func:`autocompress.techniques.nni_adapter.finetune`); the feature term is then off.
    """
    if nni_adapter.is_nni(plan.get("quantize.mode")) or nni_adapter.is_nni(
            plan.get("distill.method")):
        return nni_adapter.finetune(model, plan, ctx)
    fit(
        model,
        ctx.train_x,
        ctx.train_y,
        teacher_logits=ctx.teacher_logits,
        temperature=float(plan.get("distill.temperature", 4.0)),
        alpha=float(plan.get("distill.alpha", 0.7)),
        teacher_features=ctx.teacher_features,
        feature_weight=float(plan.get("distill.feature_weight", 0.0)),
        epochs=ctx.epochs,
        lr=ctx.lr,
        batch_size=ctx.batch_size,
        seed=plan.seed,
        check=ctx.check_time,
        before_epoch=ctx.before_epoch,
        on_epoch=ctx.on_epoch,
    )
    for hook in ctx.after_training:
        hook(model)
    return model
