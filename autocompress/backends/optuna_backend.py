"""Optuna backend: the embedded default. Samples Plans, runs trials, keeps everything in storage.

Every metric, the plan and the measurement conditions are stored as user attributes of the
Optuna trial, so any Optuna client (optuna-dashboard included) sees them, and the study can be
read back into :class:`TrialResult`\\ s from storage alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping

import optuna

from autocompress.errors import ConfigError
from autocompress.plan import Plan
from autocompress.space import SearchSpace
from autocompress.trial import COMPLETE, FAILED, TrialResult

PLAN_ATTR, METRICS_ATTR, MEASUREMENT_ATTR = "plan", "metrics", "measurement"
REASON_ATTR, DURATION_ATTR = "fail_reason", "duration_s"


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
    """A seeded Optuna sampler by its study-file name."""
    if name == "nsga2":
        population = max(4, min(50, n_trials // 3))
        return optuna.samplers.NSGAIISampler(population_size=population, seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


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


def optimize(
    study: optuna.Study,
    space: SearchSpace,
    run: Callable[[Plan], TrialResult],
    *,
    n_trials: int,
    seed: int,
    objectives: Mapping[str, str],
    on_result: Callable[[TrialResult], None] | None = None,
) -> None:
    """Run ``n_trials`` more trials of ``study``: sample a Plan, ``run`` it, record it."""

    def objective(trial: optuna.Trial) -> tuple[float, ...]:
        plan = Plan(space.sample(trial), seed=seed + trial.number)
        trial.set_user_attr(PLAN_ATTR, plan.to_dict())
        result = run(plan)
        result.number = trial.number
        trial.set_user_attr(DURATION_ATTR, result.duration_s)
        if on_result is not None:
            on_result(result)
        if not result.ok:
            trial.set_user_attr(REASON_ATTR, result.reason)
            raise _TrialFailed(result.reason)
        trial.set_user_attr(METRICS_ATTR, result.metrics)
        trial.set_user_attr(MEASUREMENT_ATTR, result.measurement)
        for name, value in result.metrics.items():
            trial.set_user_attr(name, value)
        return tuple(result.metrics[name] for name in objectives)

    with _optuna_quiet():
        study.optimize(objective, n_trials=n_trials, catch=(_TrialFailed,))


def load_results(study: optuna.Study) -> list[TrialResult]:
    """Every finished or failed trial of ``study`` as a TrialResult, from storage alone."""
    results = []
    for frozen in study.get_trials(deepcopy=False):
        attrs = frozen.user_attrs
        if frozen.state == optuna.trial.TrialState.COMPLETE:
            state = COMPLETE
        elif frozen.state == optuna.trial.TrialState.FAIL:
            state = FAILED
        else:
            continue
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
            )
        )
    return results
