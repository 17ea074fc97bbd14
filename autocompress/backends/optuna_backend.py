"""Optuna backend: the embedded default. Samples Plans, runs trials, keeps everything in storage.

Every metric, the plan and the measurement conditions are stored as user attributes of the
Optuna trial, so any Optuna client (optuna-dashboard included) sees them, and the study can be
read back into :class:`TrialResult`\\ s from storage alone.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Mapping, Sequence

import optuna

from autocompress.errors import ConfigError
from autocompress.plan import Plan
from autocompress.space import SearchSpace
from autocompress.trial import COMPLETE, FAILED, PRUNED, TrialResult

PLAN_ATTR, METRICS_ATTR, MEASUREMENT_ATTR = "plan", "metrics", "measurement"
REASON_ATTR, DURATION_ATTR = "fail_reason", "duration_s"
CONSTRAINTS_ATTR, STOPPED_ATTR, CURVE_ATTR = "constraints", "stopped_at", "epoch_accuracy"


@contextlib.contextmanager
def _optuna_quiet():
    """Optuna's own INFO/WARNING lines off: autocompress prints one line per trial instead."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


class _TrialFailed(Exception):
    """Raised inside the objective so Optuna records the trial as FAIL; the study goes on."""


def make_sampler(name: str, *, seed: int, n_trials: int) -> optuna.samplers.BaseSampler:
    """A seeded Optuna sampler by its study-file name; all of them honour trial constraints."""
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
        with _optuna_quiet():
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


def open_study(
    storage: str, name: str, objectives: Mapping[str, str], *, sampler_name: str, seed: int,
    n_trials: int,
) -> optuna.Study:
    """Create the study, or load it to add trials when it exists (same name, same objectives)."""
    directions = ["maximize" if d == "max" else "minimize" for d in objectives.values()]
    try:
        existing = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        existing = None
    if existing is not None:
        stored = list(existing.user_attrs.get("objectives", {}))
        if stored and stored != list(objectives):
            raise ConfigError(
                storage, "objectives", list(objectives),
                f"the objectives stored with study {name!r}: {stored} (or use another --out)",
            )
    done = len(existing.trials) if existing is not None else 0
    # A resumed study gets a fresh stream of random numbers, so it does not repeat its trials.
    sampler = make_sampler(sampler_name, seed=seed + done, n_trials=n_trials)
    with _optuna_quiet():
        study = optuna.create_study(
            storage=storage, study_name=name, directions=directions, sampler=sampler,
            load_if_exists=True,
        )
    study.set_user_attr("objectives", dict(objectives))
    return study


Runner = Callable[..., TrialResult]


def optimize(
    study: optuna.Study,
    space: SearchSpace,
    run: Runner,
    *,
    n_trials: int,
    seed: int,
    objectives: Mapping[str, str],
    constraint_names: Sequence[str] = (),
    stand_in: Mapping[str, float] | None = None,
    early_stopping: EarlyStopping | None = None,
    on_result: Callable[[TrialResult], None] | None = None,
) -> None:
    """Run ``n_trials`` more trials: sample a Plan, ``run(plan, should_stop=, on_epoch=)`` it,
    record metrics, constraints and state in storage.

    Every trial sets the same constraints (``trial.set_constraint``, ``<= 0`` feasible), so
    NSGA-II and TPE learn where the budget lies. A trial stopped at the structure stage completes
    with its measured size (and latency, if timed), ``stand_in`` values for what it never
    measured (accuracy 0, the teacher's latency) and its positive constraint values.
    """
    stand_in = dict(stand_in or {})

    def objective(trial: optuna.Trial) -> tuple[float, ...]:
        plan = Plan(space.sample(trial), seed=seed + trial.number)
        trial.set_user_attr(PLAN_ATTR, plan.to_dict())
        curve: list[float] = []
        shadow = early_stopping.start() if early_stopping else None

        def should_stop(epoch: int, accuracy: float) -> bool:
            shadow.report(accuracy, epoch)
            return shadow.should_prune()

        result = run(plan, should_stop=should_stop if shadow else None,
                     on_epoch=lambda epoch, accuracy: curve.append(accuracy))
        result.number = trial.number
        if shadow is not None:
            early_stopping.finish(shadow, curve, pruned=result.state == PRUNED)
        trial.set_user_attr(DURATION_ATTR, result.duration_s)
        trial.set_user_attr(CURVE_ATTR, curve)
        trial.set_user_attr(STOPPED_ATTR, result.stopped_at)
        if on_result is not None:
            on_result(result)
        if result.state == FAILED:
            trial.set_user_attr(REASON_ATTR, result.reason)
            raise _TrialFailed(result.reason)
        trial.set_user_attr(METRICS_ATTR, result.metrics)
        trial.set_user_attr(MEASUREMENT_ATTR, result.measurement)
        trial.set_user_attr(CONSTRAINTS_ATTR, result.constraints)
        for name, value in result.metrics.items():
            trial.set_user_attr(name, value)
        for name in constraint_names:
            trial.set_constraint(name, result.constraints.get(name, 0.0))
        if result.state == PRUNED:
            raise optuna.TrialPruned(result.stopped_at)
        return tuple(result.metrics.get(name, stand_in.get(name, 0.0)) for name in objectives)

    with _optuna_quiet():
        study.optimize(objective, n_trials=n_trials, catch=(_TrialFailed,))


def load_results(study: optuna.Study) -> list[TrialResult]:
    """Every finished or failed trial of ``study`` as a TrialResult, from storage alone."""
    results = []
    for frozen in study.get_trials(deepcopy=False):
        attrs = frozen.user_attrs
        states = {"COMPLETE": COMPLETE, "FAIL": FAILED, "PRUNED": PRUNED}
        if frozen.state.name not in states:
            continue  # running or waiting
        state = states[frozen.state.name]
        plan = Plan.from_dict(attrs.get(PLAN_ATTR, {"choices": frozen.params}))
        results.append(
            TrialResult(
                plan=plan,
                state=state,
                metrics=dict(attrs.get(METRICS_ATTR, {})),
                measurement=dict(attrs.get(MEASUREMENT_ATTR, {})),
                reason=attrs.get(REASON_ATTR, ""),
                duration_s=float(attrs.get(DURATION_ATTR, 0.0)),
                number=frozen.number,
                constraints=dict(attrs.get(CONSTRAINTS_ATTR, {})),
                stopped_at=attrs.get(STOPPED_ATTR, ""),
            )
        )
    return results
