"""Run a study: the teacher (trained once, cached), the search, the front, the output files.

Outputs go to ``studies/<name>/`` (or ``out_dir``): ``study.db`` (Optuna SQLite storage, study
name = ``<name>``), ``teacher.pt`` and ``teacher.json``, ``trials.csv`` and ``pareto.csv``.
Running a study again adds trials to the stored study; it never starts over.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from autocompress.backends import optuna_backend
from autocompress.config import StudyConfig, resolve_space
from autocompress.files import write_atomic
from autocompress.pareto import ParetoFront, pareto_front
from autocompress.report.tables import describe_metrics, results_dataframe, write_tables
from autocompress.space import SearchSpace
from autocompress.tasks import TEACHERS, Task, load_dataset
from autocompress.techniques import distill
from autocompress.techniques.common import weight_layers
from autocompress.trial import TeacherOutputs, TrialResult, measure_model, run_trial

Progress = Callable[[str], None]
TEACHER_SEED = 0  # one teacher per task, whatever the study's seed


@dataclass
class StudyOutcome:
    """What a finished search leaves: the front, every trial, the teacher's figures, the folder."""

    config: StudyConfig
    out_dir: Path
    teacher: dict[str, float]
    results: list[TrialResult]
    front: ParetoFront
    space: SearchSpace

    def trials_dataframe(self) -> pd.DataFrame:
        return results_dataframe(self.results)


def _quiet(_: str) -> None:
    pass


def builtin_task(config: StudyConfig, out_dir: Path, progress: Progress = _quiet) -> Task:
    """The task a study file names, its teacher loaded from ``teacher.pt`` or trained and cached."""
    spec = config.task
    data = load_dataset(spec.dataset)
    torch.manual_seed(TEACHER_SEED)
    teacher = TEACHERS[spec.teacher](data.input_shape, data.num_classes)
    weights, card = out_dir / "teacher.pt", out_dir / "teacher.json"
    recipe = {
        "dataset": spec.dataset, "teacher": spec.teacher, "teacher_epochs": spec.teacher_epochs
    }
    cached = weights.is_file() and card.is_file()
    if cached and json.loads(card.read_text()).get("recipe") == recipe:
        teacher.load_state_dict(torch.load(weights, weights_only=True))
        progress(f"teacher {spec.teacher}: loaded from {weights}")
    else:
        progress(f"teacher {spec.teacher}: training on {spec.dataset} "
                 f"({len(data.train)} images, {spec.teacher_epochs} epochs) ...")
        started = time.perf_counter()
        distill.fit(teacher, data.train.x, data.train.y, epochs=spec.teacher_epochs,
                    lr=1e-3, batch_size=64, seed=TEACHER_SEED)
        buffer = io.BytesIO()
        torch.save(teacher.state_dict(), buffer)
        write_atomic(weights, buffer.getvalue())
        write_atomic(card, json.dumps({"recipe": recipe}))  # metrics follow once measured
        progress(f"teacher {spec.teacher}: trained in {time.perf_counter() - started:.1f} s")
    teacher.eval()
    return Task(f"{spec.dataset}/{spec.teacher}", teacher, data.train, data.val, data.test)


def _trial_line(total: int, count: list[int], space: SearchSpace, progress: Progress):
    searched = list(space.searched)

    def report(result: TrialResult) -> None:
        count[0] += 1
        choices = " ".join(f"{n.split('.')[-1]}={result.plan.get(n)!s:.5}" for n in searched)
        head = f"trial {count[0]}/{total} (#{result.number})"
        body = describe_metrics(result.metrics) if result.ok else f"FAILED {result.reason}"
        progress(f"{head}  {body}  [{choices}]  {result.duration_s:.1f} s")

    return report


def run_study(
    config: StudyConfig,
    *,
    task: Task | None = None,
    space: SearchSpace | None = None,
    out_dir: str | Path | None = None,
    progress: Progress = _quiet,
) -> StudyOutcome:
    """Run ``config.trials`` more trials of the study and return its front over all trials."""
    out = Path(out_dir) if out_dir is not None else Path("studies") / config.name
    if space is None:
        space = SearchSpace.from_yaml(resolve_space(config.space, study_source=config.source))
    out.mkdir(parents=True, exist_ok=True)
    if task is None:
        task = builtin_task(config, out, progress)
    teacher_metrics, teacher_measurement = measure_model(task.teacher, task, config.measure)
    card = out / "teacher.json"
    saved: dict[str, Any] = json.loads(card.read_text()) if card.is_file() else {}
    saved.update(teacher_metrics)
    saved["measurement"] = teacher_measurement
    write_atomic(card, json.dumps(saved, indent=2))
    progress(f"teacher: {describe_metrics(teacher_metrics)}  "
             f"(batch {config.measure.batch_size}, {config.measure.threads} thread(s))")

    outputs = TeacherOutputs.of(task.teacher, task.train.x)
    space = space.for_layers([name for name, _ in weight_layers(task.teacher)])
    storage = f"sqlite:///{(out / 'study.db').resolve()}"
    study = optuna_backend.open_study(
        storage, config.name, config.objectives, sampler_name=config.sampler, seed=config.seed,
        n_trials=config.trials,
    )
    before = len(study.trials)
    if before:
        progress(f"resuming study {config.name!r}: {before} trials stored, adding {config.trials}")

    def run(plan):
        return run_trial(plan, task, teacher_outputs=outputs, finetune=config.finetune,
                         measure=config.measure)

    optuna_backend.optimize(
        study, space, run, n_trials=config.trials, seed=config.seed,
        objectives=config.objectives,
        on_result=_trial_line(config.trials, [0], space, progress),
    )
    results = optuna_backend.load_results(study)
    front = pareto_front(results, config.objectives, teacher_metrics)
    write_tables(out, results, front)
    return StudyOutcome(config, out, teacher_metrics, results, front, space)


def search(
    teacher: nn.Module,
    *,
    train: Any,
    val: Any,
    test: Any = None,
    metric: Callable[[nn.Module, Any], float] | None = None,
    example_input: torch.Tensor | None = None,
    space: str | Path | Mapping[str, Any] | SearchSpace = "default",
    name: str = "custom",
    out_dir: str | Path | None = None,
    trials: int = 20,
    seed: int = 0,
    sampler: str = "nsga2",
    objectives: Mapping[str, str] | None = None,
    batch_size: int = 1,
    threads: int = 1,
    runtime: str = "onnxruntime",
    finetune_epochs: int = 3,
    student_factory: Callable[[Any, nn.Module], nn.Module] | None = None,
    progress: Progress = print,
) -> StudyOutcome:
    """Search compressed versions of your own trained ``teacher``; the study-file path in Python.

    ``train``/``val``/``test``: ``(x, y)`` tensor pairs or DataLoaders of ``(x, y)`` batches.
    ``metric(model, split)`` is maximised (default: accuracy); ``split.x``/``split.y`` are tensors.
    ``space``: a shipped space name, a YAML path, a mapping as in the YAML, or a SearchSpace.
    ``student_factory(plan, teacher)``: builds the student when the teacher is not a flat
    ``nn.Sequential`` (see :mod:`autocompress.techniques.student`).
    """
    from autocompress.config import study_from_dict

    fields: dict[str, Any] = {
        "name": name, "trials": trials, "seed": seed, "sampler": sampler,
        "measure": {"batch_size": batch_size, "threads": threads, "runtime": runtime},
        "finetune": {"epochs": finetune_epochs},
    }
    if objectives is not None:
        fields["objectives"] = dict(objectives)
    config = study_from_dict(fields, where="search()")
    if isinstance(space, Mapping):
        space = SearchSpace.from_dict(space, where="search(space=...)")
    elif not isinstance(space, SearchSpace):
        space = SearchSpace.from_yaml(resolve_space(str(space), study_source="search()"))
    task_kwargs: dict[str, Any] = {"example_input": example_input, "test": test,
                                   "student_factory": student_factory}
    if metric is not None:
        task_kwargs["metric"] = metric
    task = Task(name, teacher.eval(), train, val, **task_kwargs)
    return run_study(config, task=task, space=space, out_dir=out_dir, progress=progress)
