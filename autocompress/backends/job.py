"""What a backend needs to run trials of one study, as typed objects that travel to workers.

:class:`TrialSettings` is everything :func:`~autocompress.trial.run_trial` needs besides the plan
and the task (it replaces a loose dict sent to Ray workers); :class:`SearchJob` adds the study's
place in storage and on disk. Both pickle, so ``--jobs`` workers and Ray workers get them whole.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from autocompress.budget import Budget
from autocompress.config import FinetuneConfig, MeasureConfig, StudyConfig
from autocompress.files import write_atomic
from autocompress.plan import Plan
from autocompress.predictors import PlanPredictor
from autocompress.result import TrialResult
from autocompress.space import SearchSpace
from autocompress.tasks import Task
from autocompress.trial import TeacherOutputs, run_trial

Progress = Callable[[str], None]
# Called once per finished trial with the number of trials the study holds after it and the
# label of the worker that ran it ("" in the search's own process).
OnResult = Callable[[TrialResult, int, str], None]
Judge = Callable[[Mapping[str, float]], str]


@dataclass(frozen=True)
class TrialSettings:
    """How every trial of a study is fine-tuned, measured and judged."""

    finetune: FinetuneConfig
    measure: MeasureConfig
    budget: Budget
    teacher_metrics: Mapping[str, float] = field(default_factory=dict)
    need_peak: bool = False
    timeout_s: float | None = None

    def run(self, plan: Plan, task: Task, outputs: TeacherOutputs | None, *,
            threads: int | None = None,
            should_stop: Callable[[int, float], bool] | None = None,
            on_epoch: Callable[[int, float], None] | None = None,
            judge: Judge | None = None) -> TrialResult:
        """:func:`run_trial` with these settings (``threads`` overrides the measured count)."""
        measure = (self.measure if threads is None
                   else dataclasses.replace(self.measure, threads=threads))
        if getattr(task, "kind", "") == "causal_lm":  # its own steps: no epochs, no predictor
            from autocompress.llm.trial import run_lm_trial

            return run_lm_trial(plan, task, measure=measure, budget=self.budget,
                                teacher_metrics=self.teacher_metrics,
                                need_peak=self.need_peak, timeout_s=self.timeout_s)
        return run_trial(plan, task, teacher_outputs=outputs, finetune=self.finetune,
                         measure=measure, budget=self.budget,
                         teacher_metrics=dict(self.teacher_metrics), need_peak=self.need_peak,
                         should_stop=should_stop, on_epoch=on_epoch, timeout_s=self.timeout_s,
                         judge=judge)

    @property
    def stand_in(self) -> dict[str, float]:
        """Objective values for what a trial stopped at structure never measured."""
        return {**self.teacher_metrics, "accuracy": 0.0}


@dataclass
class SearchJob:
    """One study's search, as each backend process needs it."""

    config: StudyConfig
    task: Task
    space: SearchSpace
    storage_url: str
    out: Path
    settings: TrialSettings
    on_result: OnResult | None = None  # must pickle for --jobs workers

    def keep_model(self, result: TrialResult) -> None:
        """Keep a finished model's packed weights in ``models/trial_<N>.acpk`` (what
        ``autocompress export`` loads; ``keep_models: none`` keeps none)."""
        if result.packed is not None and self.config.keep_models != "none":
            write_atomic(self.out / "models" / f"trial_{result.number}.acpk", result.packed)

    def finished(self, result: TrialResult, count: int, label: str = "") -> None:
        self.keep_model(result)
        if self.on_result is not None:
            self.on_result(result, count, label)

    def predictor(self) -> PlanPredictor | None:
        """The study's learned predictor (``predictor: on``, the default), unfitted."""
        config = self.config
        if not config.predictor:
            return None
        return PlanPredictor(self.space, config.objectives, config.budget,
                             self.settings.teacher_metrics.get("accuracy"),
                             warmup=config.predictor_warmup,
                             max_skip_share=config.predictor_max_skip, seed=config.seed)

    def teacher_outputs(self) -> TeacherOutputs | None:
        """The teacher's outputs on the training split, for distillation; a language model's
        (tens of GB of logits over a 49k vocabulary) are computed per batch instead."""
        if getattr(self.task, "kind", "") == "causal_lm":
            return None
        return TeacherOutputs.of(self.task.teacher, self.task.train.x)


@runtime_checkable
class Backend(Protocol):
    """Runs trials of a study until it holds ``n_trials`` more; each lands in the study's
    storage through :mod:`autocompress.backends.record`, and each finished one is passed to
    ``job.finished``. Raises :class:`~autocompress.errors.SearchStopped` when too many fail."""

    def run(self, job: SearchJob, n_trials: int, *, progress: Progress) -> None: ...


def backend(name: str, **options: Any) -> Backend:
    """The backend a study file names; Ray is imported only when asked for."""
    if name == "ray":
        from autocompress.backends.ray_backend import RayBackend

        return RayBackend(**options)
    from autocompress.backends.optuna_backend import OptunaBackend

    if options:
        raise TypeError(f"the optuna backend takes no options: {sorted(options)}")
    return OptunaBackend()
