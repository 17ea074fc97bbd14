"""Optuna backend: the embedded default. Samples Plans, runs trials in this process (or in
``--jobs`` worker processes), keeps everything in the study's storage through
:mod:`autocompress.backends.record`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import optuna

from autocompress.backends import record
from autocompress.backends.interrupts import InterruptGate
from autocompress.backends.record import (
    CURVE_ATTR,
    PREDICTION_ATTR,
    REASON_ATTR,
    SETTINGS_ATTR,
    count_finished,
    is_counted,
    load_results,
)
from autocompress.errors import ConfigError, TooManyFailures
from autocompress.plan import Plan
from autocompress.predictors import PlanPredictor
from autocompress.result import FAILED, PRUNED, TrialResult
from autocompress.space import SearchSpace
from autocompress.trial import TeacherOutputs

if TYPE_CHECKING:
    from autocompress.backends.job import SearchJob

FIRST_TRIALS = 10  # more than half of these failing stops the search: a bug, not bad luck


@contextlib.contextmanager
def optuna_quiet():
    """Optuna's own INFO/WARNING lines off: autocompress prints one line per trial instead."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


class _TrialFailed(Exception):
    """Raised inside the objective so Optuna records the trial as FAIL; the study goes on."""


def check_failures(study: optuna.Study, *, since: int = 0) -> None:
    """Raise :class:`TooManyFailures` once more than half of the first 10 trials numbered from
    ``since`` (this run's first) failed: a rerun after a fix is judged on its own trials."""
    first = sorted((t for t in study.get_trials(deepcopy=False)
                    if is_counted(t) and t.number >= since),
                   key=lambda t: t.number)[:FIRST_TRIALS]
    failed = [t for t in first if t.state == optuna.trial.TrialState.FAIL]
    if len(failed) > FIRST_TRIALS // 2:
        reasons = Counter(t.user_attrs.get(REASON_ATTR, "?") for t in failed).most_common(2)
        said = "; ".join(f"{n} x {reason}" for reason, n in reasons)
        raise TooManyFailures(
            f"stopped: {len(failed)} of the first {len(first)} trials failed, which points to a "
            f"bug or a broken setup rather than bad luck ({said}); trials.csv has every reason")


def make_sampler(name: str, *, seed: int, n_trials: int) -> optuna.samplers.BaseSampler:
    """A seeded Optuna sampler by its study-file name; all of them honour trial constraints."""
    seed %= 2**32  # derived seeds (seed + done, seed + 7919 * worker) stay in numpy's range
    if name == "nsga2":
        population = max(4, min(50, n_trials // 3))
        return optuna.samplers.NSGAIISampler(population_size=population, seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    if name == "qmc":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.QMCSampler(seed=seed)
    if name == "auto":
        try:
            import optunahub
        except ImportError:
            raise ConfigError("study", "sampler", "auto",
                              "optunahub installed (pip install optunahub) for AutoSampler; "
                              "or nsga2, tpe, random, qmc") from None
        return optunahub.load_module("samplers/auto_sampler").AutoSampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


class EarlyStopping:
    """Optuna's median or Hyperband pruner over fine-tune epochs, on validation accuracy.

    Optuna's pruners refuse multi-objective studies (``Trial.report`` raises there), so each
    search keeps a single-objective shadow study in memory that holds only the per-epoch
    accuracies; the real pruner decides on it. It is refilled from storage on resume.
    """

    def __init__(self, kind: str, study: optuna.Study, *, epochs: int) -> None:
        if kind == "median":
            pruner: optuna.pruners.BasePruner = optuna.pruners.MedianPruner(
                n_startup_trials=5, n_warmup_steps=1)
        else:
            pruner = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, epochs),
                                                    reduction_factor=3)
        with optuna_quiet():
            self.shadow = optuna.create_study(direction="maximize", pruner=pruner,
                                              study_name=f"{study.study_name}-epochs")
        for frozen in study.get_trials(deepcopy=False):
            curve = frozen.user_attrs.get(CURVE_ATTR)
            if not curve:
                continue
            state = (optuna.trial.TrialState.PRUNED if frozen.state.name == "PRUNED"
                     else optuna.trial.TrialState.COMPLETE)
            self.shadow.add_trial(optuna.trial.create_trial(
                state=state, value=None if state.name == "PRUNED" else curve[-1],
                intermediate_values={i + 1: v for i, v in enumerate(curve)},
            ))

    def start(self) -> optuna.Trial:
        return self.shadow.ask()

    def finish(self, shadow: optuna.Trial, curve: list[float], pruned: bool) -> None:
        if pruned:
            self.shadow.tell(shadow, state=optuna.trial.TrialState.PRUNED)
        elif curve:
            self.shadow.tell(shadow, curve[-1])
        else:
            self.shadow.tell(shadow, state=optuna.trial.TrialState.FAIL)


def check_settings(storage: optuna.storages.BaseStorage, name: str,
                   settings: Mapping[str, Any], *, where: str = "study") -> None:
    """Refuse a stored study of this name whose settings differ, naming the first that does."""
    try:
        existing = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return
    kept = existing.user_attrs.get(SETTINGS_ATTR)
    for key, value in settings.items():
        if kept is not None and key in kept and kept[key] != _jsonable(value):
            raise ConfigError(
                where, key, _jsonable(value),
                f"the {key} stored with study {name!r} ({kept[key]}), since its trials were "
                f"run with it; use another name, --out or --storage for a new study")


def open_study(
    storage: optuna.storages.RDBStorage, name: str, objectives: Mapping[str, str], *,
    sampler_name: str, seed: int, n_trials: int, settings: Mapping[str, Any] | None = None,
    where: str = "study",
) -> optuna.Study:
    """Create the study, or load it to add trials when it exists with the same settings.

    ``settings`` (task, space, budget, measurement, fine-tuning) are stored with a new study; a
    study of the same name stored with other settings is refused, naming the first that differs,
    because its trials would not be comparable with the new ones.
    """
    directions = ["maximize" if d == "max" else "minimize" for d in objectives.values()]
    try:
        existing = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        existing = None
    if existing is not None:
        stored = list(existing.user_attrs.get("objectives", {}))
        if stored and stored != list(objectives):
            raise ConfigError(
                where, "objectives", list(objectives),
                f"the objectives stored with study {name!r}: {stored} (or another name or --out)",
            )
        check_settings(storage, name, settings or {}, where=where)
    done = len(existing.trials) if existing is not None else 0
    # A resumed study gets a fresh stream of random numbers, so it does not repeat its trials.
    sampler = make_sampler(sampler_name, seed=seed + done, n_trials=n_trials)
    with optuna_quiet():
        study = optuna.create_study(
            storage=storage, study_name=name, directions=directions, sampler=sampler,
            load_if_exists=True,
        )
    if existing is None:
        study.set_user_attr("objectives", dict(objectives))
        if settings:
            study.set_user_attr(SETTINGS_ATTR, _jsonable(dict(settings)))
    name_objectives(study, list(objectives))
    return study


def name_objectives(study: optuna.Study, names: list[str]) -> None:
    """Name the study's values (``accuracy``, ``latency_ms``, ...) where Optuna's plots, its
    dataframes and optuna-dashboard look; also on a study stored before they were named."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if study.metric_names != names:
            study.set_metric_names(names)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


Runner = Callable[..., TrialResult]


def optimize(
    study: optuna.Study,
    space: SearchSpace,
    run: Runner,
    *,
    n_trials: int,
    target: int | None = None,
    seed: int,
    objectives: Mapping[str, str],
    constraint_names: Sequence[str] = (),
    stand_in: Mapping[str, float] | None = None,
    early_stopping: EarlyStopping | None = None,
    on_result: Callable[[TrialResult], None] | None = None,
    predictor: PlanPredictor | None = None,
) -> None:
    """Run up to ``n_trials`` trials, fewer once the study holds ``target`` finished ones
    (counting those running elsewhere): sample a Plan, ``run(plan, should_stop=, on_epoch=,
    judge=)`` it, record metrics, constraints and state in storage. With a ``predictor``, ``judge``
    asks it after the trial's structure stage whether to train (a skip is ``pruned``, with the
    prediction in the ``prediction`` attribute).

    Every trial sets the same constraints (:func:`record.set_constraints`, ``<= 0`` feasible),
    so NSGA-II and TPE learn where the budget lies. A trial stopped at the structure stage completes
    with its measured size (and latency, if timed), ``stand_in`` values for what it never
    measured (accuracy 0, the teacher's latency) and its positive constraint values. A retried
    trial (``retry_of``, enqueued by :func:`storage.requeue_abandoned`) runs its original plan
    with its original seed.
    """
    stand_in = dict(stand_in or {})
    gate = InterruptGate()

    def objective(trial: optuna.Trial) -> tuple[float, ...]:
        plan = record.sample_plan(trial, space, seed=seed)
        judge = None
        if predictor is not None:
            def judge(measured: Mapping[str, float]) -> str:
                with gate.closed():
                    verdict = judge_plan(predictor, trial.study, plan, objectives, measured)
                    if verdict is None:
                        return ""
                    trial.set_user_attr(PREDICTION_ATTR, verdict.to_dict())
                    return verdict.reason if verdict.skip else ""

        curve: list[float] = []
        shadow = early_stopping.start() if early_stopping else None

        def should_stop(epoch: int, accuracy: float) -> bool:
            shadow.report(accuracy, epoch)
            return shadow.should_prune()

        with gate.opened():
            result = run(plan, should_stop=should_stop if shadow else None,
                         on_epoch=lambda epoch, accuracy: curve.append(accuracy), judge=judge)
        result.number = trial.number
        if shadow is not None:
            early_stopping.finish(shadow, curve, pruned=result.state == PRUNED)
        record.write(trial, result, constraint_names=constraint_names, curve=curve)
        if on_result is not None:
            on_result(result)
        if result.state == FAILED:
            raise _TrialFailed(result.reason)
        if result.state == PRUNED:
            raise optuna.TrialPruned(result.stopped_at)
        return record.objective_values(result, list(objectives), stand_in)

    running = optuna.trial.TrialState.RUNNING
    since = len(study.trials)
    with optuna_quiet(), gate.installed():
        for _ in range(n_trials):
            gate.check()
            if target is not None and sum(  # finished here or running anywhere: one read
                    is_counted(t) or t.state == running
                    for t in study.get_trials(deepcopy=False)) >= target:
                break
            study.optimize(objective, n_trials=1, catch=(_TrialFailed,))
            check_failures(study, since=since)
        gate.check()


REFIT_EVERY = 5  # finished trials between refits of the predictor


def judge_plan(predictor: PlanPredictor, study: optuna.Study, plan: Plan,
           objectives: Mapping[str, str], measured: Mapping[str, float]):
    """Refit when enough new trials finished, then judge ``plan`` with its ``measured``
    structure metrics (None while warming up)."""
    results = load_results(study)
    done = sum(r.ok for r in results)
    if not predictor.ready or done >= predictor.fitted_on + REFIT_EVERY:
        predictor.fit(results)
    if not predictor.ready:
        return None
    from autocompress.pareto import pareto_front

    return predictor.judge(plan, pareto_front(results, objectives).members, measured)


def resume(study: optuna.Study, *, without_heartbeat: bool) -> str:
    """Fail the trials a killed search left running and queue their choices again; returns
    what was done, for the progress line ("" for a new study)."""
    from autocompress.backends.storage import fail_dead_trials, requeue_abandoned

    if not study.trials:
        return ""
    finished = count_finished(study)
    dead = fail_dead_trials(study, without_heartbeat=without_heartbeat)
    queued = requeue_abandoned(study)
    return (f"resuming study {study.study_name!r}: {finished} finished trials kept"
            + (f"; trials {dead} were left running by a stopped search" if dead else "")
            + (f"; retrying the choices of trials {queued}" if queued else ""))


def run_trials(job: SearchJob, index: int, quota: int, *,
               outputs: TeacherOutputs | None = None) -> None:
    """Run ``quota`` trials of ``job`` (fewer once the study is complete) in this process;
    ``index`` numbers the worker (its sampler seed and its label)."""
    from autocompress.backends.storage import open_storage

    config = job.config
    study = open_study(open_storage(job.storage_url, where=config.source), config.name,
                       config.objectives, sampler_name=config.sampler,
                       seed=config.seed + 7919 * index, n_trials=config.trials)
    outputs = outputs or job.teacher_outputs()
    early = (EarlyStopping(config.pruner, study, epochs=config.finetune.epochs)
             if config.pruner != "none" else None)
    label = f"[worker {index}] " if config.jobs > 1 else ""
    count = [count_finished(study)]

    def on_result(result: TrialResult) -> None:
        count[0] = max(count[0], count_finished(study)) + 1  # other workers add trials too
        job.finished(result, count[0], label)

    def run(plan: Plan, **hooks: Any) -> TrialResult:
        return job.settings.run(plan, job.task, outputs, **hooks)

    optimize(study, job.space, run, n_trials=quota, target=config.trials, seed=config.seed,
             objectives=config.objectives, constraint_names=config.budget.constraint_names(),
             stand_in=job.settings.stand_in, early_stopping=early, on_result=on_result,
             predictor=job.predictor())


def _run_worker(job: SearchJob, index: int, quota: int) -> None:
    run_trials(job, index, quota)


class OptunaBackend:
    """Trials in this process, or in ``config.jobs`` spawned worker processes on one storage."""

    def run(self, job: SearchJob, n_trials: int, *, progress: Callable[[str], None]) -> None:
        jobs = job.config.jobs
        if jobs <= 1:
            run_trials(job, 0, n_trials)
            return
        from autocompress.backends.parallel import run_workers

        progress(f"running {n_trials} trials in {jobs} worker processes")
        run_workers(functools.partial(_run_worker, job), remaining=n_trials, jobs=jobs,
                    where=job.config.source)
