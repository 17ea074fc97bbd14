"""Run a study: the teacher (trained once, cached), the search, the front, the output files.

Outputs go to ``studies/<name>/`` (or ``out_dir``): ``study.db`` (Optuna SQLite storage, study
name = ``<name>``), ``teacher.pt`` and ``teacher.json``, ``trials.csv`` and ``pareto.csv``.
Running a study again adds trials to the stored study; it never starts over.
"""

from __future__ import annotations

import dataclasses
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
from autocompress.budget import Budget, feasible
from autocompress.config import StudyConfig, resolve_space
from autocompress.errors import ConfigError
from autocompress.files import write_atomic
from autocompress.pareto import ParetoFront, hypervolume_history, pareto_front
from autocompress.report.outputs import write_report
from autocompress.report.tables import (
    describe_metrics,
    describe_result,
    format_front,
    format_no_front,
    results_dataframe,
)
from autocompress.report.validate import budget_verdict, most_compressed_plan, space_size
from autocompress.space import SearchSpace
from autocompress.tasks import TEACHERS, Task, load_dataset
from autocompress.techniques import distill
from autocompress.techniques.common import weight_layers
from autocompress.trial import (
    TeacherOutputs,
    TrialResult,
    build_compressed,
    final_form,
    make_context,
    measure_model,
    measure_structure,
    run_trial,
)

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

    def front_table(self) -> str:
        """The front as text beside the teacher, or, with no feasible trial, the closest misses."""
        if self.front.members:
            return format_front(self.front, list(self.space.searched))
        return format_no_front(self.results)


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
    return Task(f"{spec.dataset}/{spec.teacher}", teacher, data.train, data.val, data.test,
                preprocessing=data.preprocessing)


def _trial_line(total: int, count: list[int], space: SearchSpace, progress: Progress,
                out: Path | None = None):
    """Prints a line per trial and keeps each finished model's packed weights in
    ``models/trial_<N>.acpk`` (what ``autocompress export`` loads)."""
    searched = list(space.searched)

    def report(result: TrialResult) -> None:
        if result.packed is not None and out is not None:
            write_atomic(out / "models" / f"trial_{result.number}.acpk", result.packed)
        count[0] += 1
        choices = " ".join(f"{n.split('.')[-1]}={result.plan.get(n)!s:.5}" for n in searched)
        head = f"trial {count[0]}/{total} (#{result.number})"
        body = describe_result(result)
        progress(f"{head}  {body}  [{choices}]  {result.duration_s:.1f} s")

    return report


def run_study(
    config: StudyConfig,
    *,
    task: Task | None = None,
    space: SearchSpace | None = None,
    out_dir: str | Path | None = None,
    progress: Progress = _quiet,
    ray_settings: Mapping[str, Any] | None = None,
) -> StudyOutcome:
    """Run ``config.trials`` more trials of the study and return its front over all trials.

    ``config.backend`` picks Optuna in this process or Ray Tune; ``ray_settings`` passes extra
    worker settings on Ray (``pid_dir``: a folder where each trial's worker leaves its process
    id, so a test can kill one).
    """
    out = Path(out_dir) if out_dir is not None else Path("studies") / config.name
    if space is None:
        space = SearchSpace.from_yaml(resolve_space(config.space, study_source=config.source))
    if config.measure.device != "cpu" and not torch.cuda.is_available():
        raise ConfigError(config.source, "budget.device", config.measure.device,
                          "cpu: torch sees no CUDA device on this machine")
    out.mkdir(parents=True, exist_ok=True)
    builtin = task is None
    if task is None:
        task = builtin_task(config, out, progress)
    need_peak = needs_peak_memory(config)
    teacher_metrics = measure_teacher(task, config, out, need_peak=need_peak)
    progress(f"teacher: {describe_metrics(teacher_metrics)}  "
             f"(batch {config.measure.batch_size}, {config.measure.threads} thread(s), "
             f"{config.measure.runtime})")
    for line in config.budget.describe(teacher_metrics["accuracy"]):
        progress(f"budget: {line}")

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
    early = (optuna_backend.EarlyStopping(config.pruner, study, epochs=config.finetune.epochs)
             if config.pruner != "none" else None)

    def run(plan, *, should_stop=None, on_epoch=None):
        return run_trial(plan, task, teacher_outputs=outputs, finetune=config.finetune,
                         measure=config.measure, budget=config.budget,
                         teacher_metrics=teacher_metrics, need_peak=need_peak,
                         should_stop=should_stop, on_epoch=on_epoch)

    stand_in = {**teacher_metrics, "accuracy": 0.0}
    report = _trial_line(config.trials, [0], space, progress, out)
    if config.backend == "ray":
        from autocompress.backends import ray_backend

        progress(f"running on Ray: {config.ray.max_concurrent} trials at a time, "
                 f"{config.ray.cpus_per_trial} CPU(s) each, scheduler {config.ray.scheduler}")
        ray_backend.optimize(
            study_name=config.name, storage=storage, space=space,
            objectives=config.objectives, n_trials=config.trials, seed=config.seed,
            sampler_name=config.sampler, task=task, outputs=outputs, ray_config=config.ray,
            settings={"finetune": config.finetune, "measure": config.measure,
                      "budget": config.budget, "teacher_metrics": teacher_metrics,
                      "need_peak": need_peak, **(ray_settings or {})},
            results_dir=out / "ray_results",
            constraint_names=config.budget.constraint_names(), stand_in=stand_in,
            on_result=report,
        )
    else:
        optuna_backend.optimize(
            study, space, run, n_trials=config.trials, seed=config.seed,
            objectives=config.objectives, constraint_names=config.budget.constraint_names(),
            stand_in=stand_in, early_stopping=early, on_result=report,
        )
    results = optuna_backend.load_results(study)
    front = pareto_front(results, config.objectives, teacher_metrics, config.budget)
    history = hypervolume_history(results, config.objectives, teacher_metrics, config.budget)
    write_atomic(out / "study.json", json.dumps({
        "name": config.name, "budget": config.budget.to_dict(),
        "objectives": dict(config.objectives), "sampler": config.sampler, "seed": config.seed,
        "pruner": config.pruner, "runtime": config.measure.runtime,
        "hypervolume": front.hypervolume, "hypervolume_reference": front.reference,
        "hypervolume_history": history, "trials": len(results), "front": len(front),
        "task": dataclasses.asdict(config.task) if builtin else None,
        "measure": dataclasses.asdict(config.measure),
        "finetune": dataclasses.asdict(config.finetune),
    }, indent=2))
    write_report(out)
    return StudyOutcome(config, out, teacher_metrics, results, front, space)


def validate_study(
    config: StudyConfig, *, out_dir: str | Path | None = None, progress: Progress = _quiet
) -> list[str]:
    """Lines for ``autocompress validate``: space, size, budget, and what the teacher and the
    most compressed model of the space measure against the budget (nothing is trained but the
    teacher, which is cached as for a search)."""
    out = Path(out_dir) if out_dir is not None else Path("studies") / config.name
    space_path = resolve_space(config.space, study_source=config.source)
    space = SearchSpace.from_yaml(space_path)
    out.mkdir(parents=True, exist_ok=True)
    task = builtin_task(config, out, progress)
    space = space.for_layers([name for name, _ in weight_layers(task.teacher)])
    m = config.measure
    lines = [f"study {config.name}: {config.task.dataset} / {config.task.teacher}, "
             f"{config.trials} trials, sampler {config.sampler}, seed {config.seed}, "
             f"pruner {config.pruner}",
             "objectives: " + ", ".join(f"{k} ({v})" for k, v in config.objectives.items()),
             f"measured at batch {m.batch_size}, {m.threads} thread(s), runtime {m.runtime}, "
             f"device {m.device}",
             f"space {space_path}: {space_size(space)}", space.describe()]
    need_peak = needs_peak_memory(config)
    teacher, _ = measure_model(task.teacher, task, m, need_peak=need_peak)
    budget = config.budget
    lines.append("budget: " + ("none" if budget.empty else
                               "; ".join(budget.describe(teacher["accuracy"]))))
    lines.append(budget_verdict("teacher", teacher,
                                budget.constraints(teacher, teacher["accuracy"])))
    plan = most_compressed_plan(space)
    ctx = make_context(task, None, config.finetune, 0)
    smallest, _ = measure_structure(final_form(build_compressed(plan, ctx), ctx), task, m,
                                    Budget(), need_peak=need_peak)
    constraints = {k: v for k, v in budget.constraints(smallest).items() if k != "accuracy"}
    lines.append(budget_verdict("most compressed model of the space (untrained)", smallest,
                                constraints))
    if constraints and not feasible(constraints):
        lines.append("=> even the most compressed model breaks the budget: it is unreachable "
                     "with this space")
    elif not budget.empty and feasible(budget.constraints(teacher, teacher["accuracy"])):
        lines.append("=> the teacher already meets the budget: compression buys margin only")
    floor = budget.accuracy_floor(teacher["accuracy"])
    if floor is not None and floor > teacher["accuracy"]:
        lines.append(f"=> the accuracy floor {100 * floor:.2f}% is above the teacher's "
                     f"{100 * teacher['accuracy']:.2f}%: compression alone will not reach it")
    return lines


def needs_peak_memory(config: StudyConfig) -> bool:
    """Peak memory costs a process start per trial: measured only when asked for."""
    return (config.budget.max_peak_memory_bytes is not None
            or "peak_memory_bytes" in config.objectives)


def measure_teacher(task: Task, config: StudyConfig, out: Path, *, need_peak: bool = False
                    ) -> dict[str, float]:
    """The teacher's figures, measured as the trials are, saved in ``teacher.json``."""
    metrics, measurement = measure_model(task.teacher, task, config.measure, need_peak=need_peak)
    card = out / "teacher.json"
    saved: dict[str, Any] = json.loads(card.read_text()) if card.is_file() else {}
    saved.update(metrics)
    saved["measurement"] = measurement
    write_atomic(card, json.dumps(saved, indent=2))
    return metrics


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
