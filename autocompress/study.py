"""Run a study: the teacher, the search on a backend, the front, the output files.

Outputs go to ``studies/<name>/`` (or ``out_dir``): ``study.journal`` (Optuna journal storage,
study name = ``<name>``), ``teacher.pt`` and ``teacher.json``, ``trials.csv`` and ``pareto.csv``.
Running a study again resumes it until it holds ``trials`` finished trials; it never starts
over.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from autocompress import fingerprint, predictors, preflight
from autocompress.backends import record
from autocompress.backends.job import SearchJob, TrialSettings, backend
from autocompress.backends.optuna_backend import check_settings, open_study, resume
from autocompress.backends.parallel import (
    check_main_guard,
    check_picklable,
    leave_if_reimporting_main,
)
from autocompress.backends.storage import (
    OWN_DATABASE,
    OWN_JOURNAL,
    default_url,
    display,
    open_storage,
    recorded_url,
)
from autocompress.config import KEEP_LAST, StudyConfig, resolve_space
from autocompress.errors import ConfigError, Interrupted, SearchStopped
from autocompress.files import check_output_folder, study_lock, write_atomic
from autocompress.llm.calibrate import decoder_layers
from autocompress.llm.choices import LINEAR_KINDS
from autocompress.llm.task import builtin_lm_task, is_lm
from autocompress.pareto import ParetoFront, hypervolume_history, pareto_front
from autocompress.report.outputs import write_report
from autocompress.report.tables import TrialLine, describe_metrics, format_front, format_no_front
from autocompress.report.validate import check_memory_budget, needs_peak_memory
from autocompress.result import TrialResult
from autocompress.space import SearchSpace
from autocompress.tasks import Task
from autocompress.tasks.teacher import builtin_task
from autocompress.techniques.common import weight_layers
from autocompress.trial import measure_model

Progress = Callable[[str], None]


@dataclass
class StudyOutcome:
    """What a finished search leaves: the front, every trial, the teacher's figures, the folder."""

    config: StudyConfig
    out_dir: Path
    teacher: dict[str, float]
    results: list[TrialResult]
    front: ParetoFront
    space: SearchSpace
    task: Task | None = None  # the user's task (API studies): what export rebuilds from

    def export(self, trial: int, *, format: str = "torchscript",
               path: str | Path) -> dict[str, Any]:
        """Rebuild trial ``trial``, re-verify it and write it to ``path`` in ``format``
        (``torchscript``, ``onnx`` or ``state_dict``), as ``autocompress export`` does; returns
        the side-card (``model.json``)."""
        from autocompress.export import export_trial

        return export_trial(self.out_dir, trial, fmt=format, out=path, task=self.task)

    def front_table(self) -> str:
        """The front as text beside the teacher, or, with no feasible trial, the closest misses."""
        if self.front.members:
            return format_front(self.front, list(self.space.searched))
        return format_no_front(self.results)


def _quiet(_: str) -> None:
    pass


def _print_line(line: str) -> None:
    print(line, flush=True)


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
    ``ray_settings`` are options of the Ray backend (``pid_dir``: a folder where each trial's
    worker leaves its process id, so a test can kill one). Ctrl-C or too many failing trials
    raise :class:`SearchStopped` after the outputs of the finished trials are written.
    """
    leave_if_reimporting_main()  # before any work: a worker re-running an unguarded script
    if config.jobs > 1:
        check_main_guard(config.source)
    progress = progress or _quiet
    out = Path(out_dir) if out_dir is not None else Path("studies") / config.name
    if space is None:
        space = SearchSpace.from_yaml(resolve_space(config.space, study_source=config.source))
    runner = backend(config.backend, **(ray_settings or {}))
    if config.measure.device != "cpu" and not torch.cuda.is_available():
        raise ConfigError(config.source, "budget.device", config.measure.device,
                          "cpu: torch sees no CUDA device on this machine")
    check_memory_budget(config)
    check_output_folder(out, where="command line" if out_dir is not None else config.source,
                        field="--out")
    if config.backend == "ray" and hasattr(runner, "connect"):
        where = config.origins.get("ray.address", config.source)
        runner.connect(config.ray.address, where=where,
                       field="--address" if where == "command line" else "ray.address")
    if task is not None:
        task.check_forward(where=config.source)
        for note in task.notes:
            progress(f"data: {note}")
    if config.jobs > 1 and task is not None:
        check_picklable(task, where=config.source)
    builtin = task is None
    settings = {"task": dataclasses.asdict(config.task) if builtin else task.name,
                "budget": config.budget.to_dict(), "measure": dataclasses.asdict(config.measure),
                "finetune": dataclasses.asdict(config.finetune)}
    if task is not None:  # a built-in task is named by its recipe; a user's by its contents
        settings["teacher"] = fingerprint.of_model(task.teacher)
        settings["data"] = fingerprint.of_tensors(
            task.train.x, task.train.y, task.val.x, task.val.y,
            *((task.test.x, task.test.y) if task.test is not None else ()))
    storage_where = config.origins.get("storage", config.source)
    storage_field = "--storage" if storage_where == "command line" else "storage"
    url = config.storage or default_url(out)
    # one search per study folder, from here on (the storage, the teacher, the trials)
    with study_lock(out, where="command line" if out_dir is not None else config.source,
                    wait=_print_line):
        return _search(config, task, space, out, runner, settings, url,
                       storage_where, storage_field, builtin, progress)


def _search(config: StudyConfig, task: Task | None, space: SearchSpace, out: Path,
            runner: Any, settings: dict[str, Any], url: str,
            storage_where: str, storage_field: str, builtin: bool,
            progress: Progress) -> StudyOutcome:
    """The locked part of :func:`run_study`: the storage, the teacher, the search."""
    # Refusals first: a storage that cannot be opened, or a study of this name stored with other
    # settings, is refused before the teacher is trained or any file is written.
    storage = None
    if config.storage or (out / OWN_JOURNAL).is_file() or (out / OWN_DATABASE).is_file():
        storage = open_storage(url, where=storage_where, field=storage_field)
        check_settings(storage, config.name, settings, where=config.source)
    if task is None:
        task = (builtin_lm_task(config, progress) if config.task.kind == "causal_lm"
                else builtin_task(config, out, progress))
    if is_lm(task):  # per-layer choices of a language model: one per kind of linear layer
        space = preflight.check_lm_space(space.for_layers(list(LINEAR_KINDS)),
                                         len(decoder_layers(task.teacher)), progress=progress)
    else:
        space = space.for_layers([name for name, _ in weight_layers(task.teacher)])
        space = preflight.check_space(space, task, config.finetune, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    storage = storage or open_storage(url, where=storage_where, field=storage_field)
    study = open_study(  # refuses a stored study of this name with other settings
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
    trial_settings = TrialSettings(config.finetune, config.measure, config.budget,
                                   teacher_metrics, need_peak, config.trial_timeout)
    show = progress if config.jobs <= 1 else (_quiet if progress is _quiet else _print_line)
    job = SearchJob(config, task, space, url, out, trial_settings,
                    on_result=TrialLine(config.trials, tuple(space.searched), show))
    try:
        resumed = resume(study, without_heartbeat=config.backend == "ray")
        if resumed:
            progress(resumed)
        remaining = config.trials - record.count_finished(study)
        if remaining <= 0:
            progress(f"study {config.name!r} already holds {record.count_finished(study)} "
                     f"finished trials (trials: {config.trials}); raise --trials to run more")
        else:
            runner.run(job, remaining, progress=progress)
    except (KeyboardInterrupt, SearchStopped) as stop:
        outcome = _finish(job, study, builtin)
        if isinstance(stop, SearchStopped):
            raise
        raise Interrupted(_interrupted(study, url, outcome.out_dir)) from None
    return _finish(job, study, builtin)


def _interrupted(study: Any, url: str, out: Path) -> str:
    retries = record.retried(study)
    running = [t.number for t in record.abandoned(study) if t.number not in retries]
    return (f"interrupted: {record.count_finished(study)} finished trials are saved in "
            f"{url_hint(url)} and the outputs in {out}/ cover them; "
            + (f"trial(s) {running} were running and will be retried; " if running else "")
            + "the same command resumes the study")


def url_hint(url: str) -> str:
    return display(url).removeprefix("sqlite:///").removeprefix("journal:///")


def _finish(job: SearchJob, study: Any, builtin: bool) -> StudyOutcome:
    """The front over every finished trial, and every output file written (atomically)."""
    config, out = job.config, job.out
    results = record.load_results(study)
    teacher_metrics = dict(job.settings.teacher_metrics)
    front = pareto_front(results, config.objectives, teacher_metrics, config.budget)
    history = hypervolume_history(results, config.objectives, teacher_metrics, config.budget)
    summary = (predictors.summary(job.space, results, config.objectives,
                                  warmup=config.predictor_warmup, seed=config.seed)
               if config.predictor else None)
    write_atomic(out / "study.json", json.dumps({
        "name": config.name, "budget": config.budget.to_dict(),
        "objectives": dict(config.objectives), "sampler": config.sampler, "seed": config.seed,
        "pruner": config.pruner, "runtime": config.measure.runtime,
        "hypervolume": front.hypervolume, "hypervolume_reference": front.reference,
        "hypervolume_history": history, "trials": len(results), "front": len(front),
        "task": dataclasses.asdict(config.task) if builtin else None,
        "measure": dataclasses.asdict(config.measure),
        "finetune": dataclasses.asdict(config.finetune),
        "storage": recorded_url(job.storage_url, out),
        "predictor": summary,
    }, indent=2))
    write_report(out)
    keep_models(out, results, front, config.keep_models)
    return StudyOutcome(config, out, teacher_metrics, results, front, job.space,
                        task=None if builtin else job.task)


def keep_models(out: Path, results: list[TrialResult], front: ParetoFront, policy: str) -> None:
    """Delete the kept weights ``keep_models`` does not keep, so disk use stays bounded: with
    ``front``, the front's members and the last :data:`KEEP_LAST` trials stay."""
    folder = out / "models"
    if policy == "all" or not folder.is_dir():
        return
    numbers = sorted(r.number for r in results if r.number is not None)
    wanted = ({m.number for m in front.members} | set(numbers[-KEEP_LAST:])
              if policy == "front" else set())
    for path in folder.glob("trial_*.acpk"):
        if path.stem.removeprefix("trial_").isdigit() and \
                int(path.stem.removeprefix("trial_")) not in wanted:
            path.unlink(missing_ok=True)


def measure_teacher(task: Task, config: StudyConfig, out: Path, *, need_peak: bool = False
                    ) -> dict[str, float]:
    """The teacher's figures, measured as the trials are, saved in ``teacher.json``."""
    if is_lm(task):
        from autocompress.llm.trial import measure_lm_teacher

        metrics, measurement = measure_lm_teacher(task, config.measure, need_peak=need_peak)
    else:
        metrics, measurement = measure_model(task.teacher, task, config.measure,
                                             need_peak=need_peak)
    card = out / "teacher.json"
    saved: dict[str, Any] = json.loads(card.read_text()) if card.is_file() else {}
    saved.update(metrics)
    saved["measurement"] = measurement
    write_atomic(card, json.dumps(saved, indent=2))
    return metrics
