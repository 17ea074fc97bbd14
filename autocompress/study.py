"""Run a study: the teacher (trained once, cached), the search, the front, the output files.

Outputs go to ``studies/<name>/`` (or ``out_dir``): ``study.db`` (Optuna SQLite storage, study
name = ``<name>``), ``teacher.pt`` and ``teacher.json``, ``trials.csv`` and ``pareto.csv``.
Running a study again resumes it until it holds ``trials`` finished trials; it never starts
over.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import torch
from torch import nn

from autocompress.backends import optuna_backend
from autocompress.backends.parallel import check_picklable, run_workers
from autocompress.backends.storage import (
    abandoned,
    count_finished,
    default_url,
    display,
    fail_dead_trials,
    open_storage,
    requeue_abandoned,
    retried,
)
from autocompress.budget import Budget, feasible
from autocompress.config import StudyConfig, resolve_space
from autocompress.errors import ConfigError, Interrupted, SearchStopped
from autocompress.files import write_atomic
from autocompress.measure.peak import available_memory_bytes
from autocompress.pareto import ParetoFront, hypervolume_history, pareto_front
from autocompress.predictors import PlanPredictor, cross_validated_error
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
    SKIPPED,
    TeacherOutputs,
    TrialResult,
    build_compressed,
    final_form,
    make_context,
    measure_model,
    measure_structure,
    run_trial,
)
from autocompress.units import format_bytes

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
    if spec.checkpoint:
        _load_weights(teacher, Path(spec.checkpoint), where=config.source,
                      field="task.checkpoint")
        progress(f"teacher {spec.teacher}: weights from {spec.checkpoint}")
    elif cached and json.loads(card.read_text()).get("recipe") == recipe:
        _load_weights(teacher, weights, where=str(weights), field="cached teacher")
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


def _load_weights(model: nn.Module, path: Path, *, where: str, field: str) -> None:
    """``torch.load(weights_only=True)`` into ``model``; a corrupt or mismatched file is one
    ConfigError line (a cached teacher.pt is retrained once deleted)."""
    try:
        model.load_state_dict(torch.load(path, weights_only=True, map_location="cpu"))
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        fix = "; delete it and the teacher is trained again" if field == "cached teacher" else ""
        raise ConfigError(where, field, f"{path}: {type(exc).__name__}: {detail}",
                          f"a state_dict of the teacher's architecture saved with "
                          f"torch.save{fix}") from None


def _trial_line(total: int, done: int, space: SearchSpace, progress: Progress,
                out: Path | None = None, prefix: str = "",
                finished: Callable[[], int] | None = None):
    """Prints a line per trial and keeps each finished model's packed weights in
    ``models/trial_<N>.acpk`` (what ``autocompress export`` loads). ``finished()`` counts the
    study's finished trials when other workers add to them too."""
    searched = list(space.searched)
    count = [done]

    def report(result: TrialResult) -> None:
        if result.packed is not None and out is not None:
            write_atomic(out / "models" / f"trial_{result.number}.acpk", result.packed)
        count[0] = max(count[0], finished() if finished else 0) + 1
        choices = " ".join(f"{n.split('.')[-1]}={result.plan.get(n)!s:.5}" for n in searched)
        head = f"{prefix}trial {count[0]}/{total} (#{result.number})"
        body = describe_result(result)
        progress(f"{head}  {body}  [{choices}]  {result.duration_s:.1f} s")

    return report


@dataclass
class _Search:
    """Everything a process needs to run trials of one study (pickled to ``--jobs`` workers)."""

    config: StudyConfig
    task: Task
    space: SearchSpace
    storage_url: str
    out: Path
    teacher_metrics: dict[str, float]
    need_peak: bool

    def runner(self, outputs: TeacherOutputs):
        config = self.config

        def run(plan, *, should_stop=None, on_epoch=None, judge=None):
            return run_trial(plan, self.task, teacher_outputs=outputs, finetune=config.finetune,
                             measure=config.measure, budget=config.budget,
                             teacher_metrics=self.teacher_metrics, need_peak=self.need_peak,
                             should_stop=should_stop, on_epoch=on_epoch,
                             timeout_s=config.trial_timeout, judge=judge)

        return run

    def run_trials(self, index: int, quota: int, *, progress: Progress = print,
                   outputs: TeacherOutputs | None = None) -> None:
        """Run ``quota`` trials (fewer once the study is complete) in this process."""
        config = self.config
        storage = open_storage(self.storage_url, where=config.source)
        study = optuna_backend.open_study(
            storage, config.name, config.objectives, sampler_name=config.sampler,
            seed=config.seed + 7919 * index, n_trials=config.trials)
        outputs = outputs or TeacherOutputs.of(self.task.teacher, self.task.train.x)
        early = (optuna_backend.EarlyStopping(config.pruner, study, epochs=config.finetune.epochs)
                 if config.pruner != "none" else None)
        prefix = f"[worker {index}] " if config.jobs > 1 else ""
        optuna_backend.optimize(
            study, self.space, self.runner(outputs), n_trials=quota, target=config.trials,
            seed=config.seed, objectives=config.objectives,
            constraint_names=config.budget.constraint_names(),
            stand_in={**self.teacher_metrics, "accuracy": 0.0}, early_stopping=early,
            on_result=_trial_line(config.trials, count_finished(study), self.space, progress,
                                  self.out, prefix, finished=lambda: count_finished(study)),
            predictor=self.predictor())

    def predictor(self) -> PlanPredictor | None:
        """The study's learned predictor (``predictor: on``, the default), unfitted."""
        config = self.config
        if not config.predictor:
            return None
        return PlanPredictor(self.space, config.objectives, config.budget,
                             self.teacher_metrics.get("accuracy"),
                             warmup=config.predictor_warmup,
                             max_skip_share=config.predictor_max_skip, seed=config.seed)


def _print_line(line: str) -> None:
    print(line, flush=True)


def _run_worker(search: _Search, verbose: bool, index: int, quota: int) -> None:
    search.run_trials(index, quota, progress=_print_line if verbose else _quiet)


def run_study(
    config: StudyConfig,
    *,
    task: Task | None = None,
    space: SearchSpace | None = None,
    out_dir: str | Path | None = None,
    progress: Progress | None = _quiet,
    ray_settings: Mapping[str, Any] | None = None,
) -> StudyOutcome:
    """Run the study until it holds ``config.trials`` finished trials; return its front.

    A study that exists (same name, same storage) is resumed: trials that were running when a
    search was killed or interrupted are retried, finished ones are kept. ``config.backend``
    picks Optuna in this process (``config.jobs`` worker processes) or Ray Tune;
    ``ray_settings`` passes extra worker settings on Ray (``pid_dir``: a folder where each
    trial's worker leaves its process id, so a test can kill one). Ctrl-C or too many failing
    trials raise :class:`SearchStopped` after the outputs of the finished trials are written.
    """
    progress = progress or _quiet
    out = Path(out_dir) if out_dir is not None else Path("studies") / config.name
    if space is None:
        space = SearchSpace.from_yaml(resolve_space(config.space, study_source=config.source))
    if config.measure.device != "cpu" and not torch.cuda.is_available():
        raise ConfigError(config.source, "budget.device", config.measure.device,
                          "cpu: torch sees no CUDA device on this machine")
    check_memory_budget(config)
    if out.exists() and not out.is_dir():
        raise ConfigError("command line" if out_dir is not None else config.source, "--out",
                          str(out), "a folder (this is a file)")
    if task is not None:
        task.check_forward(where=config.source)
    if config.jobs > 1 and task is not None:
        check_picklable(task, where=config.source)
    builtin = task is None
    settings = {"task": dataclasses.asdict(config.task) if builtin else task.name,
                "budget": config.budget.to_dict(), "measure": dataclasses.asdict(config.measure),
                "finetune": dataclasses.asdict(config.finetune)}
    storage_where = config.origins.get("storage", config.source)
    storage_field = "--storage" if storage_where == "command line" else "storage"
    url = config.storage or default_url(out)
    # Refusals first: a storage that cannot be opened, or a study of this name stored with other
    # settings, is refused before the teacher is trained or any file is written.
    storage = None
    if config.storage or (out / "study.db").is_file():
        storage = open_storage(url, where=storage_where, field=storage_field)
        optuna_backend.check_settings(storage, config.name, settings, where=config.source)
    if task is None:
        task = builtin_task(config, out, progress)
    space = space.for_layers([name for name, _ in weight_layers(task.teacher)])
    out.mkdir(parents=True, exist_ok=True)
    storage = storage or open_storage(url, where=storage_where, field=storage_field)
    study = optuna_backend.open_study(  # refuses a stored study of this name with other settings
        storage, config.name, config.objectives, sampler_name=config.sampler, seed=config.seed,
        n_trials=config.trials, where=config.source,
        settings={**settings, "space": space.describe()},
    )
    need_peak = needs_peak_memory(config)
    teacher_metrics = measure_teacher(task, config, out, need_peak=need_peak)
    progress(f"teacher: {describe_metrics(teacher_metrics)}  "
             f"(batch {config.measure.batch_size}, {config.measure.threads} thread(s), "
             f"{config.measure.runtime})")
    for line in config.budget.describe(teacher_metrics["accuracy"]):
        progress(f"budget: {line}")
    search = _Search(config, task, space, url, out, teacher_metrics, need_peak)
    try:
        _resume(study, config, progress)
        remaining = config.trials - count_finished(study)
        if remaining <= 0:
            progress(f"study {config.name!r} already holds {count_finished(study)} finished "
                     f"trials (trials: {config.trials}); raise --trials to run more")
        elif config.backend == "ray":
            _run_on_ray(search, remaining, progress, ray_settings)
        elif config.jobs > 1:
            progress(f"running {remaining} trials in {config.jobs} worker processes")
            run_workers(functools.partial(_run_worker, search, progress is not _quiet),
                        remaining=remaining,
                        jobs=config.jobs, where=config.source)
        else:
            search.run_trials(0, remaining, progress=progress,
                              outputs=TeacherOutputs.of(task.teacher, task.train.x))
    except (KeyboardInterrupt, SearchStopped) as stop:
        outcome = _finish(search, study, builtin)
        if isinstance(stop, SearchStopped):
            raise
        abandoned_now = [t.number for t in abandoned(study) if t.number not in retried(study)]
        raise Interrupted(
            f"interrupted: {count_finished(study)} finished trials are saved in {url_hint(url)} "
            f"and the outputs in {outcome.out_dir}/ cover them; "
            + (f"trial(s) {abandoned_now} were running and will be retried; "
               if abandoned_now else "")
            + "the same command resumes the study") from None
    return _finish(search, study, builtin)


def url_hint(url: str) -> str:
    return display(url).removeprefix("sqlite:///")


def _resume(study: optuna.Study, config: StudyConfig, progress: Progress) -> None:
    """Fail the trials a killed search left running, and queue their choices again."""
    finished = count_finished(study)
    if not study.trials:
        return
    dead = fail_dead_trials(study, without_heartbeat=config.backend == "ray")
    queued = requeue_abandoned(study)
    progress(f"resuming study {config.name!r}: {finished} finished trials kept"
             + (f"; trials {dead} were left running by a stopped search" if dead else "")
             + (f"; retrying the choices of trials {queued}" if queued else ""))


def _run_on_ray(search: _Search, remaining: int, progress: Progress,
                ray_settings: Mapping[str, Any] | None) -> None:
    from autocompress.backends import ray_backend

    config = search.config
    progress(f"running on Ray: {config.ray.max_concurrent} trials at a time, "
             f"{config.ray.cpus_per_trial} CPU(s) each, scheduler {config.ray.scheduler}")
    ray_backend.optimize(
        study_name=config.name, storage=search.storage_url, space=search.space,
        objectives=config.objectives, n_trials=remaining, seed=config.seed,
        sampler_name=config.sampler, task=search.task,
        outputs=TeacherOutputs.of(search.task.teacher, search.task.train.x),
        ray_config=config.ray,
        settings={"finetune": config.finetune, "measure": config.measure,
                  "budget": config.budget, "teacher_metrics": search.teacher_metrics,
                  "need_peak": search.need_peak, "timeout_s": config.trial_timeout,
                  **(ray_settings or {})},
        results_dir=search.out / "ray_results",
        constraint_names=config.budget.constraint_names(),
        stand_in={**search.teacher_metrics, "accuracy": 0.0},
        on_result=_trial_line(config.trials, config.trials - remaining, search.space, progress,
                              search.out),
        predictor=search.predictor(),
    )


def _finish(search: _Search, study: optuna.Study, builtin: bool) -> StudyOutcome:
    """The front over every finished trial, and every output file written (atomically)."""
    config, out = search.config, search.out
    results = optuna_backend.load_results(study)
    teacher_metrics = search.teacher_metrics
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
        "storage": display(search.storage_url),
        "predictor": predictor_summary(config, search.space, results),
    }, indent=2))
    write_report(out)
    return StudyOutcome(config, out, teacher_metrics, results, front, search.space)


def predictor_summary(config: StudyConfig, space: SearchSpace,
                      results: Sequence[TrialResult]) -> dict[str, Any] | None:
    """How the learned predictor did in this study: skipped trials, and the cross-validated
    mean absolute error of its forests on the trained trials (once there are enough)."""
    if not config.predictor:
        return None
    trained = sum(r.ok for r in results)
    summary: dict[str, Any] = {
        "warmup": config.predictor_warmup, "trained_trials": trained,
        "skipped": sum(r.stopped_at.startswith(SKIPPED) for r in results),
        "cross_validated_mean_abs_error": None,
    }
    if trained >= max(config.predictor_warmup, 5):
        summary["cross_validated_mean_abs_error"] = cross_validated_error(
            space, results, config.objectives, seed=config.seed)
    return summary


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


def check_memory_budget(config: StudyConfig) -> None:
    """Refuse a memory limit above what this machine has free: no model that large could be
    loaded here to be measured, so the limit would be checked against nothing."""
    available = available_memory_bytes()
    if available is None:
        return
    for field in ("max_memory_bytes", "max_peak_memory_bytes"):
        limit = getattr(config.budget, field)
        if limit is not None and limit > available:
            raise ConfigError(config.source, f"budget.{field}",
                              format_bytes(limit),
                              f"at most this machine's available memory "
                              f"({format_bytes(available)}): a model that large could not be "
                              f"loaded here to be measured")


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
    trial_timeout: float | None = None,
    jobs: int = 1,
    storage: str | None = None,
    progress: Progress = print,
) -> StudyOutcome:
    """Search compressed versions of your own trained ``teacher``; the study-file path in Python.

    ``train``/``val``/``test``: ``(x, y)`` tensor pairs or DataLoaders of ``(x, y)`` batches.
    ``metric(model, split)`` is maximised (default: accuracy); ``split.x``/``split.y`` are tensors.
    ``space``: a shipped space name, a YAML path, a mapping as in the YAML, or a SearchSpace.
    ``student_factory(plan, teacher)``: builds the student when the teacher is not a flat
    ``nn.Sequential`` (see :mod:`autocompress.techniques.student`). ``trial_timeout`` (seconds),
    ``jobs`` (worker processes; the metric and factory must then be module-level functions)
    and ``storage`` (a SQLAlchemy URL) are as in a study file.
    """
    from autocompress.config import study_from_dict

    fields: dict[str, Any] = {
        "name": name, "trials": trials, "seed": seed, "sampler": sampler,
        "measure": {"batch_size": batch_size, "threads": threads, "runtime": runtime},
        "finetune": {"epochs": finetune_epochs}, "jobs": jobs,
    }
    if trial_timeout is not None:
        fields["trial_timeout"] = trial_timeout
    if storage is not None:
        fields["storage"] = storage
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
