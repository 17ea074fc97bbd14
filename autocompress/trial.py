"""One trial, for real, constraint first: structure, measure, then (only if it can fit) train.

The steps follow ``docs/architecture.md``:

1. build the compressed structure (student, pruning masks, quantization formats);
2. measure what does not depend on weight values, on the structure in its final form: the stored
   size first (cheap), then latency (and peak memory when asked) in the study's runtime. Over the
   budget? The trial stops here, infeasible, without training;
3. fine-tune with distillation, reporting validation accuracy per epoch to an early-stopping rule;
4. bake masks and quantization into the weights;
5. measure accuracy (deployed) and the stored size again; check the accuracy limit.

A problem inside a trial never escapes: it comes back as a failed :class:`TrialResult` with its
reason.
"""

from __future__ import annotations

import contextlib
import copy
import math
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from autocompress.budget import Budget, feasible
from autocompress.config import FinetuneConfig, MeasureConfig
from autocompress.errors import TrialError
from autocompress.measure import measure_latency, pack_model, stored_bits, stored_bytes
from autocompress.measure.peak import peak_inference_bytes
from autocompress.measure.runtime import deploy
from autocompress.plan import Plan
from autocompress.result import (  # noqa: F401  (re-exported: the trial's public vocabulary)
    COMPLETE,
    FAILED,
    MAIN_COLUMNS,
    PRUNED,
    Stop,
    StopReason,
    TrialResult,
)
from autocompress.spill import collect
from autocompress.tasks import Task
from autocompress.techniques import STRUCTURAL, distill
from autocompress.techniques.common import Context, bake, count_parameters, penultimate_features
from autocompress.techniques.prune import sparsity
from autocompress.techniques.training import Recipe, recipe_for


def _deploy(model: nn.Module, task: Task, settings: MeasureConfig) -> nn.Module:
    return deploy(model, settings.runtime, example_input=task.example_input,
                  threads=settings.threads, calibration=task.train.x, device=settings.device)


def measure_structure(
    model: nn.Module, task: Task, settings: MeasureConfig, budget: Budget, *,
    need_peak: bool = False,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Size, then latency and peak memory of ``model`` in its final form; stops at a broken limit.

    The stored size is measured first (on a parametrized model as if baked, without copying
    it); when it already breaks the budget, latency is not timed (the metrics then lack
    ``latency_ms``), which keeps infeasible trials cheap.
    """
    metrics = {"memory_bytes": float(stored_bytes(model)),
               "parameters": float(count_parameters(model)), "sparsity": sparsity(model)}
    if not feasible(budget.constraints(metrics)):
        return metrics, {"latency": "not timed: the stored size already breaks the budget"}
    if any(parametrize.is_parametrized(m) for m in model.modules()):
        model = bake(copy.deepcopy(model))
    deployed = _deploy(model, task, settings)
    latency = measure_latency(deployed, task.example_input, batch_size=settings.batch_size,
                              threads=settings.threads, warmup=settings.warmup,
                              repeats=settings.repeats)
    metrics["latency_ms"] = latency.median_ms
    metrics["latency_noise_ms"] = latency.noise_ms
    int8 = bool(getattr(deployed, "int8", False))
    measurement: dict[str, Any] = {
        "latency": {**latency.to_dict(), "runtime": settings.runtime + (" int8" if int8 else "")},
        "memory": "packed stored form, bytes",
    }
    if int8 and any(bits < 8 for bits in stored_bits(model).values()):
        measurement["note"] = ("weights below 8 bits run as int8 (no faster CPU kernel); "
                               "memory_bytes counts them packed at their own width")
    if need_peak:
        metrics["peak_memory_bytes"] = float(peak_inference_bytes(
            deployed, task.example_input, batch_size=settings.batch_size,
            threads=settings.threads))
        measurement["peak_memory"] = "fresh process: VmHWM - VmRSS around load + one batch"
    return metrics, measurement


def measure_model(
    model: nn.Module, task: Task, settings: MeasureConfig, *, need_peak: bool = False,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Every metric of a finished model (the teacher's or a trial's), no budget applied."""
    metrics, measurement = measure_structure(model, task, settings, Budget(),
                                             need_peak=need_peak)
    metrics.update(measure_accuracy(model, task, settings))
    return metrics, measurement


def measure_accuracy(model: nn.Module, task: Task, settings: MeasureConfig) -> dict[str, float]:
    """Validation (and test) accuracy of the model as the runtime deploys it."""
    deployed = _deploy(model, task, settings)
    metrics = {"accuracy": float(task.metric(deployed, task.val))}
    if task.test is not None:
        metrics["test_accuracy"] = float(task.metric(deployed, task.test))
    for name, value in metrics.items():
        if not math.isfinite(value):
            raise TrialError(f"measured {name} is {value}")
    return metrics


def make_context(
    task: Task, teacher_outputs: TeacherOutputs | None, finetune: FinetuneConfig, *,
    time_limit_s: float | None = None, on_epoch: Callable[[int, nn.Module], None] | None = None,
) -> Context:
    """What the techniques of one trial read (randomness comes from the Plan's seed).

    The fine-tuning recipe's ``auto`` values are resolved for the teacher here, once, and noted
    with the trial's metrics (``finetune_lr``, ``finetune_warmup``, ``finetune_weight_decay``).
    """
    recipe = recipe_for(task.teacher, **{name: getattr(finetune, name)
                                         for name in Recipe.__dataclass_fields__})
    ctx = Context(
        teacher=task.teacher,
        train_x=task.train.x,
        train_y=task.train.y,
        example_input=task.example_input,
        teacher_logits=teacher_outputs.logits if teacher_outputs else None,
        teacher_features=teacher_outputs.features if teacher_outputs else None,
        student_factory=task.student_factory,
        epochs=finetune.epochs,
        lr=recipe.lr,
        batch_size=finetune.batch_size,
        optimizer=recipe.optimizer,
        schedule=recipe.schedule,
        warmup=recipe.warmup,
        weight_decay=recipe.weight_decay,
        time_limit_s=time_limit_s,
        on_epoch=on_epoch,
    )
    ctx.note({"finetune_lr": recipe.lr, "finetune_warmup": recipe.warmup,
              "finetune_weight_decay": recipe.weight_decay})
    return ctx


@dataclass(frozen=True)
class TeacherOutputs:
    """The teacher's logits and penultimate features on the training split, computed once."""

    logits: torch.Tensor
    features: torch.Tensor

    @classmethod
    def of(cls, teacher: nn.Module, x: torch.Tensor) -> TeacherOutputs:
        teacher.eval()
        with torch.inference_mode():
            logits = collect((teacher(x[i : i + 1024]) for i in range(0, len(x), 1024)),
                             like=x, name="teacher-logits")
        return cls(logits, penultimate_features(teacher, x))


def build_compressed(plan: Plan, ctx: Context) -> nn.Module:
    """Step 1: the compressed structure (every technique except the fine-tuning one)."""
    model = ctx.teacher
    for technique in STRUCTURAL:
        model = technique.apply(model, plan, ctx)
    return model


def final_form(model: nn.Module, ctx: Context) -> nn.Module:
    """A baked copy of the untrained compressed model as training will leave it.

    Pruning schedules jump to their last epoch and post-training quantization is applied, so the
    structure, sparsity and formats measured here are those of the finished model.
    """
    hooks = ctx.registered
    if not hooks.before_epoch and not hooks.after_training:
        return model  # training changes only weight values: measured as it stands
    probe = copy.deepcopy(model)
    for hook in hooks.before_epoch:
        hook(max(0, ctx.epochs - 1), probe)
    for hook in hooks.after_training:
        hook(probe)
    return bake(probe)


@contextlib.contextmanager
def _alarm(seconds: float | None) -> Iterator[None]:
    """A watchdog for ``trial_timeout`` where a signal can reach the trial (the main thread on
    Unix): SIGALRM raises TrialError even inside a long forward pass or a user's metric. Else
    the cooperative checks (before every batch, between stages) are the limit."""
    usable = (seconds is not None and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return

    def fire(_signum, _frame) -> None:
        raise TrialError(f"over its time limit of {seconds:g} s (trial_timeout)")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class _StopEarly(Exception):
    def __init__(self, epoch: int, accuracy: float) -> None:
        super().__init__(epoch)
        self.epoch, self.accuracy = epoch, accuracy


def run_trial(
    plan: Plan,
    task: Task,
    *,
    teacher_outputs: TeacherOutputs | None,
    finetune: FinetuneConfig,
    measure: MeasureConfig,
    budget: Budget | None = None,
    teacher_metrics: Mapping[str, float] | None = None,
    need_peak: bool = False,
    should_stop: Callable[[int, float], bool] | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    train: Callable[[nn.Module, Plan, Context], nn.Module] = distill.apply,
    timeout_s: float | None = None,
    judge: Callable[[Mapping[str, float]], str] | None = None,
) -> TrialResult:
    """Build, check against the budget, fine-tune, bake and measure the model of ``plan``.

    ``should_stop(epoch, val_accuracy)`` may end training early (state ``pruned``);
    ``on_epoch(epoch, val_accuracy)`` sees every epoch. ``train`` is the fine-tuning step.
    ``timeout_s`` fails the trial once it has run that long (checked before every training
    batch and between stages). ``judge(structure_metrics)`` (a learned predictor) may return a
    reason not to train a Plan that fits: the trial then ends ``pruned``, ``skipped: reason``.
    Never raises for trial faults (any exception, a non-finite loss or metric, the time limit):
    they come back as a failed result with the reason.
    """
    budget = budget or Budget()
    teacher_accuracy = (teacher_metrics or {}).get("accuracy")
    started = time.perf_counter()

    def result(state: str, metrics: dict, measurement: dict, *,
               stop: StopReason | None = None) -> TrialResult:
        return TrialResult(plan, state, metrics, measurement,
                           duration_s=time.perf_counter() - started,
                           constraints=budget.constraints(metrics, teacher_accuracy), stop=stop)

    torch.manual_seed(plan.seed)
    try:
        with _alarm(timeout_s):
            reporter = (_epoch_reporter(task, should_stop, on_epoch)
                        if should_stop is not None or on_epoch is not None else None)
            ctx = make_context(task, teacher_outputs, finetune, time_limit_s=timeout_s,
                               on_epoch=reporter)  # the reporter runs only while training
            model = build_compressed(plan, ctx)
            ctx.check_time()
            metrics, measurement = measure_structure(final_form(model, ctx), task, measure, budget,
                                                     need_peak=need_peak)
            metrics.update(ctx.registered.notes)
            if not feasible(budget.constraints(metrics)):
                return result(COMPLETE, metrics, measurement, stop=StopReason(Stop.STRUCTURE))
            skip = judge(metrics) if judge is not None else ""
            if skip:
                return result(PRUNED, metrics, measurement,
                              stop=StopReason(Stop.SKIPPED, why=skip))
            try:
                model = train(model, plan, ctx)
            except _StopEarly as early:
                metrics["accuracy"] = early.accuracy
                return result(PRUNED, metrics, measurement,
                              stop=StopReason(Stop.EARLY, epoch=early.epoch))
            ctx.check_time()
            model = bake(model)
            packed = pack_model(model)
            metrics["memory_bytes"] = float(len(packed))  # re-measured on the trained weights
            metrics["sparsity"] = sparsity(model)
            metrics.update(measure_accuracy(model, task, measure))
    except Exception as exc:  # a trial's fault is recorded; the study goes on
        return failed(plan, exc, started)
    finished = result(COMPLETE, metrics, measurement)
    finished.packed = packed
    return finished


def failed(plan: Plan, exc: Exception, started: float) -> TrialResult:
    """A trial's fault as its result: the reason, and where it arose unless the trial said."""
    reason = f"{type(exc).__name__}: {exc}"
    last = traceback.extract_tb(exc.__traceback__)[-1:]
    if last and not isinstance(exc, TrialError):
        reason += f" (at {last[0].filename.rsplit('/', 1)[-1]}:{last[0].lineno})"
    return TrialResult(plan, FAILED, reason=reason, duration_s=time.perf_counter() - started)


def _epoch_reporter(task: Task, should_stop, on_epoch):
    def report(epoch: int, model: nn.Module) -> None:
        accuracy = float(task.metric(model, task.val))
        if on_epoch is not None:
            on_epoch(epoch, accuracy)
        if should_stop is not None and should_stop(epoch, accuracy):
            raise _StopEarly(epoch, accuracy)

    return report
