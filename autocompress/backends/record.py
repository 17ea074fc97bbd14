"""The trial record: how a :class:`TrialResult` is kept in Optuna storage, and read back.

Both backends write through :func:`write` and the study is read through :func:`read`, so a trial
run on Optuna and one run on Ray are stored, counted and judged alike. Every metric, the plan and
the measurement conditions are user attributes of the Optuna trial, so any Optuna client
(optuna-dashboard included) sees them, and a study can be rebuilt from storage alone.

What optuna-dashboard (0.21) shows, and why it is stored so (docs/robustness.md):

* constraints: one list in the trial's system attribute ``constraints`` (Optuna's list form, in
  ``constraint_names`` order, ``<= 0`` feasible), not ``trial.set_constraint``. Optuna 5 reads
  both forms for its samplers alike, but the dashboard reads only the list, and writing both
  would make Optuna count every constraint twice. The names stay in the ``constraints`` user
  attribute (a dict). So the dashboard greys out infeasible trials, trials stopped at structure
  (accuracy 0 stand-ins) included, and keeps them off its Pareto-front plot.
* choices: an ordered numeric choice is sampled as an integer index (``quantize.bits.index``,
  see :mod:`autocompress.space`) so model-based samplers keep its order; its real value is also
  a user attribute ``choice.<name>`` (``choice.quantize.bits`` = 8), a number the dashboard can
  sort, filter and plot. Other parameters are readable as they are.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autocompress.plan import Plan
from autocompress.result import (
    COMPLETE,
    FAILED,
    INTERRUPTED,
    PRUNED,
    StopReason,
    TrialResult,
)
from autocompress.space import SearchSpace

PLAN_ATTR, METRICS_ATTR, MEASUREMENT_ATTR = "plan", "metrics", "measurement"
DURATION_ATTR, CONSTRAINTS_ATTR = "duration_s", "constraints"
STOPPED_ATTR, CURVE_ATTR = "stopped_at", "epoch_accuracy"
SETTINGS_ATTR, PREDICTION_ATTR, NODE_ATTR = "settings", "prediction", "node"
REASON_ATTR = "fail_reason"  # set on every trial that failed for a reason of its own
RETRY_ATTR = "retry_of"      # set on a trial that re-runs an abandoned trial's choices
ORIGIN_ATTR = "retry_origin"  # and the first trial of that chain, whose seed every retry keeps
CHOICE_PREFIX = "choice."      # + a parameter sampled as an index: its real value
CONSTRAINTS_KEY = "constraints"  # the trial system attribute Optuna and optuna-dashboard read

STATE_OF = {COMPLETE: TrialState.COMPLETE, FAILED: TrialState.FAIL, PRUNED: TrialState.PRUNED}
RESULT_STATE_OF = {state.name: name for name, state in STATE_OF.items()}


def sample_plan(trial: optuna.Trial, space: SearchSpace, *, seed: int) -> Plan:
    """The trial's Plan, recorded on it. A retry (``retry_of``), and a retry of a retry, keeps
    the seed of the first trial of its chain (``retry_origin``)."""
    first = trial.user_attrs.get(ORIGIN_ATTR, trial.user_attrs.get(RETRY_ATTR, trial.number))
    plan = Plan(space.sample(trial), seed=seed + first)
    trial.set_user_attr(PLAN_ATTR, plan.to_dict())
    for name, dimension in space.dimensions.items():
        if dimension.kind == "ordinal":  # sampled as ``<name>.index``: show the value too
            trial.set_user_attr(CHOICE_PREFIX + name, plan.choices[name])
    return plan


def write(trial: optuna.Trial, result: TrialResult, *,
          constraint_names: Sequence[str] = (), curve: Sequence[float] | None = None) -> None:
    """Record ``result`` on ``trial`` (state aside: the backend tells Optuna).

    Constraints are set on every judged trial in the same order (``<= 0`` feasible), so the
    samplers learn where the budget lies, and optuna-dashboard shows which trials are feasible.
    """
    trial.set_user_attr(DURATION_ATTR, result.duration_s)
    trial.set_user_attr(STOPPED_ATTR, result.stopped_at)
    if curve is not None:
        trial.set_user_attr(CURVE_ATTR, list(curve))
    if result.state == FAILED:
        trial.set_user_attr(REASON_ATTR, result.reason)
        return
    trial.set_user_attr(METRICS_ATTR, result.metrics)
    trial.set_user_attr(MEASUREMENT_ATTR, result.measurement)
    trial.set_user_attr(CONSTRAINTS_ATTR, result.constraints)
    for name, value in result.metrics.items():
        trial.set_user_attr(name, value)
    if constraint_names:
        set_constraints(trial, [result.constraints.get(name, 0.0) for name in constraint_names])


def set_constraints(trial: optuna.Trial, values: Sequence[float]) -> None:
    """Store ``values`` as the Optuna list of constraints of a running ``trial``: the one form
    both Optuna 5's samplers and optuna-dashboard 0.21 read (see the module docstring)."""
    values = [float(v) for v in values]
    if any(math.isnan(v) for v in values):
        raise ValueError(f"a constraint value is NaN: {values}")
    trial.storage.set_trial_system_attr(trial._trial_id, CONSTRAINTS_KEY, values)


def objective_values(result: TrialResult, objectives: Sequence[str],
                     stand_in: Mapping[str, float]) -> tuple[float, ...] | None:
    """Optuna's values for a complete trial (``stand_in`` for what it never measured, e.g. the
    accuracy of a trial stopped at structure); None for a failed or stopped one."""
    if result.state != COMPLETE:
        return None
    return tuple(result.metrics.get(name, stand_in.get(name, 0.0)) for name in objectives)


def read(frozen: FrozenTrial, retries: Mapping[int, int]) -> TrialResult | None:
    """The TrialResult stored in ``frozen``; None while it runs or waits."""
    state = RESULT_STATE_OF.get(frozen.state.name)
    if state is None:
        return None
    attrs = frozen.user_attrs
    return TrialResult(
        plan=Plan.from_dict(attrs.get(PLAN_ATTR, {"choices": frozen.params})),
        state=state,
        metrics=dict(attrs.get(METRICS_ATTR, {})),
        measurement=dict(attrs.get(MEASUREMENT_ATTR, {})),
        reason=attrs.get(REASON_ATTR, "") or _abandoned_reason(frozen, retries),
        duration_s=float(attrs.get(DURATION_ATTR, 0.0)),
        number=frozen.number,
        constraints=dict(attrs.get(CONSTRAINTS_ATTR, {})),
        stop=StopReason.parse(attrs.get(STOPPED_ATTR, "")),
    )


def load_results(study: optuna.Study) -> list[TrialResult]:
    """Every finished or failed trial of ``study`` as a TrialResult, from storage alone."""
    retries = retried(study)
    results = (read(frozen, retries) for frozen in study.get_trials(deepcopy=False))
    return [r for r in results if r is not None]


def _abandoned_reason(frozen: FrozenTrial, retries: Mapping[int, int]) -> str:
    if frozen.state != TrialState.FAIL:
        return ""
    if frozen.number in retries:
        again = f"its choices were retried as trial {retries[frozen.number]}"
    elif not choices_of(frozen):  # killed before the sampler drew anything: nothing to replay
        again = "it was killed before its choices were drawn, so a new trial takes its place"
    else:
        again = "its choices are retried when the study resumes"
    return f"{INTERRUPTED}: the search was stopped or killed while it ran; {again}"


def to_message(result: TrialResult) -> dict[str, Any]:
    """``result`` as plain JSON-safe values: what a Ray worker sends its driver."""
    return {"plan": result.plan.to_dict(), "state": result.state, "metrics": result.metrics,
            "measurement": result.measurement, "reason": result.reason,
            "duration_s": result.duration_s, "constraints": result.constraints,
            "stopped_at": result.stopped_at, "number": result.number,
            "packed": base64.b64encode(result.packed).decode() if result.packed else None}


def from_message(message: Mapping[str, Any]) -> TrialResult:
    """The inverse of :func:`to_message`."""
    packed = message.get("packed")
    return TrialResult(Plan.from_dict(message["plan"]), message["state"],
                       dict(message["metrics"]), dict(message["measurement"]),
                       reason=message["reason"], duration_s=message["duration_s"],
                       number=message.get("number"), constraints=dict(message["constraints"]),
                       stop=StopReason.parse(message["stopped_at"]),
                       packed=base64.b64decode(packed) if packed else None)


def is_counted(trial: FrozenTrial) -> bool:
    """Finished for good: complete, stopped early, or failed for a reason the trial recorded."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and REASON_ATTR in trial.user_attrs


def count_finished(study: optuna.Study) -> int:
    return sum(is_counted(t) for t in study.get_trials(deepcopy=False))


def retried(study: optuna.Study) -> dict[int, int]:
    """Abandoned trial number -> the number of the trial that retries its choices."""
    return {t.user_attrs[RETRY_ATTR]: t.number for t in study.get_trials(deepcopy=False)
            if RETRY_ATTR in t.user_attrs}


def choices_of(trial: FrozenTrial) -> dict[str, Any]:
    """The choices a trial drew, or, for a retry killed before drawing them, those it was
    queued to replay (Optuna keeps them as ``fixed_params``)."""
    return dict(trial.params) or dict(trial.system_attrs.get("fixed_params") or {})


def abandoned(study: optuna.Study) -> list[FrozenTrial]:
    """Failed trials without a recorded reason: killed or interrupted, never judged."""
    return [t for t in study.get_trials(deepcopy=False)
            if t.state == TrialState.FAIL and REASON_ATTR not in t.user_attrs]
