"""One trial, for real: build the compressed model from a Plan, fine-tune it, measure it.

The steps follow ``../shared/DESIGN.md``: (1) build the compressed structure (student, pruning
masks, quantization formats), (2) fine-tune with distillation, (3) bake masks and quantization into
the weights, (4) measure accuracy, latency and stored size on the result. A problem inside a trial
never escapes: it comes back as a failed :class:`TrialResult` with its reason.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from autocompress.config import FinetuneConfig, MeasureConfig
from autocompress.errors import TrialError
from autocompress.measure import measure_latency, stored_bits, stored_bytes
from autocompress.measure.runtime import deploy
from autocompress.plan import Plan
from autocompress.tasks import Task
from autocompress.techniques import PIPELINE, distill
from autocompress.techniques.common import Context, bake, count_parameters
from autocompress.techniques.prune import sparsity

COMPLETE, FAILED = "complete", "failed"
MAIN_COLUMNS = ("accuracy", "latency_ms", "memory_bytes")  # kept first, never renamed


@dataclass
class TrialResult:
    """What one trial found: its plan, state, metrics and how they were measured."""

    plan: Plan
    state: str = COMPLETE
    metrics: dict[str, float] = field(default_factory=dict)
    measurement: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    duration_s: float = 0.0
    number: int | None = None

    @property
    def ok(self) -> bool:
        return self.state == COMPLETE

    def to_row(self) -> dict[str, Any]:
        """One flat row: ``trial``, ``state``, the metrics, then ``plan.<choice>`` columns."""
        row: dict[str, Any] = {"trial": self.number, "state": self.state}
        for name in MAIN_COLUMNS:
            row[name] = self.metrics.get(name)
        row.update({k: v for k, v in self.metrics.items() if k not in MAIN_COLUMNS})
        row["duration_s"] = round(self.duration_s, 3)
        row["reason"] = self.reason
        row.update({f"plan.{k}": v for k, v in self.plan.choices.items()})
        row["plan.seed"] = self.plan.seed
        return row


def measure_model(model: nn.Module, task: Task, settings: MeasureConfig) -> tuple[dict, dict]:
    """(metrics, measurement conditions) of a finished model: the teacher's or a trial's.

    Accuracy and latency are those of the model deployed in the study's runtime (int8 in ONNX
    Runtime where every layer is quantized); the stored size is that of the packed weights.
    """
    deployed = deploy(model, settings.runtime, example_input=task.example_input,
                      threads=settings.threads, calibration=task.train.x)
    latency = measure_latency(
        deployed,
        task.example_input,
        batch_size=settings.batch_size,
        threads=settings.threads,
        warmup=settings.warmup,
        repeats=settings.repeats,
    )
    metrics = {
        "accuracy": float(task.metric(deployed, task.val)),
        "latency_ms": latency.median_ms,
        "latency_noise_ms": latency.noise_ms,
        "memory_bytes": float(stored_bytes(model)),
        "parameters": float(count_parameters(model)),
        "sparsity": sparsity(model),
    }
    if task.test is not None:
        metrics["test_accuracy"] = float(task.metric(deployed, task.test))
    for name, value in metrics.items():
        if not math.isfinite(value):
            raise TrialError(f"measured {name} is {value}")
    int8 = bool(getattr(deployed, "int8", False))
    latency_info = {**latency.to_dict(), "runtime": settings.runtime + (" int8" if int8 else "")}
    measurement = {"latency": latency_info, "memory": "packed stored form, bytes"}
    if int8 and any(bits < 8 for bits in stored_bits(model).values()):
        measurement["note"] = "weights below 8 bits run as int8 (no faster CPU kernel); " \
                              "memory_bytes counts them packed at their own width"
    return metrics, measurement


def make_context(
    task: Task, teacher_outputs: TeacherOutputs | None, finetune: FinetuneConfig, seed: int
) -> Context:
    return Context(
        teacher=task.teacher,
        train_x=task.train.x,
        train_y=task.train.y,
        example_input=task.example_input,
        teacher_logits=teacher_outputs.logits if teacher_outputs else None,
        teacher_features=teacher_outputs.features if teacher_outputs else None,
        student_factory=task.student_factory,
        epochs=finetune.epochs,
        lr=finetune.lr,
        batch_size=finetune.batch_size,
        seed=seed,
    )


@dataclass(frozen=True)
class TeacherOutputs:
    """The teacher's logits and penultimate features on the training split, computed once."""

    logits: torch.Tensor
    features: torch.Tensor

    @classmethod
    def of(cls, teacher: nn.Module, x: torch.Tensor) -> TeacherOutputs:
        teacher.eval()
        with torch.inference_mode():
            logits = torch.cat([teacher(x[i : i + 1024]) for i in range(0, len(x), 1024)])
        return cls(logits, distill.penultimate_features(teacher, x))


def build_compressed(plan: Plan, ctx: Context) -> nn.Module:
    """Step 1: the compressed structure (every technique except the fine-tuning one)."""
    model = ctx.teacher
    for technique in PIPELINE:
        if technique is not distill:
            model = technique.apply(model, plan, ctx)
    return model


def run_trial(
    plan: Plan,
    task: Task,
    *,
    teacher_outputs: TeacherOutputs | None,
    finetune: FinetuneConfig,
    measure: MeasureConfig,
    on_epoch: Callable[[int, nn.Module], None] | None = None,
) -> TrialResult:
    """Build, fine-tune, bake and measure the model of ``plan``; never raises for trial faults."""
    started = time.perf_counter()
    torch.manual_seed(plan.seed)
    try:
        ctx = make_context(task, teacher_outputs, finetune, plan.seed)
        ctx.on_epoch = on_epoch
        model = build_compressed(plan, ctx)
        model = distill.apply(model, plan, ctx)
        model = bake(model)
        metrics, measurement = measure_model(model, task, measure)
        metrics.update(ctx.notes)
    except (TrialError, RuntimeError, ValueError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
        last = traceback.extract_tb(exc.__traceback__)[-1:]
        if last and not isinstance(exc, TrialError):
            reason += f" (at {last[0].filename.rsplit('/', 1)[-1]}:{last[0].lineno})"
        return TrialResult(plan, FAILED, reason=reason,
                           duration_s=time.perf_counter() - started)
    return TrialResult(plan, COMPLETE, metrics, measurement,
                       duration_s=time.perf_counter() - started)
