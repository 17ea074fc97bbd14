"""Learned predictors: a Plan's metrics from the trials already run, to skip hopeless Plans.

A random forest (scikit-learn) per objective maps a Plan's searched choices to the metric; the
spread of its trees' predictions is the uncertainty. In a search the judgement comes after the
trial's structure stage, so size and latency are measured and only accuracy is predicted: what
is skipped is the fine-tuning, the expensive part. A Plan is skipped only when even its
optimistic estimate (``z`` tree spreads toward the good side of every objective, 1 by default)
breaks the budget or is dominated by the current front: a confident call, not a guess. Replaying
a recorded 80-trial study (tests/test_predictors.py), z = 1 skipped 6 of 60 plans, none of them
on the final front; z = 0.5 skipped 30, two of them on it. The predictor waits for
``warmup`` finished trials, refits as trials arrive, reports its cross-validated error, and never
skips more than ``max_skip_share`` of the trials it has seen, so it cannot starve the search.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autocompress.budget import Budget, feasible
from autocompress.pareto import as_minimise
from autocompress.plan import Plan
from autocompress.space import SearchSpace


def encode(space: SearchSpace, plans: Sequence[Plan]) -> np.ndarray:
    """One row per Plan: numbers as they are, booleans 0/1, categories one-hot."""
    columns: list[np.ndarray] = []
    for name, dim in space.searched.items():
        values = [plan.get(name) for plan in plans]
        if dim.kind == "categorical" and not all(_is_number(v) for v in dim.values):
            for choice in dim.values:
                columns.append(np.array([float(v == choice) for v in values]))
        else:
            columns.append(np.array([float(v) if v is not None else np.nan for v in values]))
    if not columns:
        return np.zeros((len(plans), 0))
    return np.nan_to_num(np.stack(columns, axis=1), nan=-1.0)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass
class Prediction:
    mean: dict[str, float]
    spread: dict[str, float]
    skip: bool = False
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "spread": self.spread, "reason": self.reason}


@dataclass
class PlanPredictor:
    """Predicts ``objectives`` of a Plan from finished trials (``TrialResult``s)."""

    space: SearchSpace
    objectives: Mapping[str, str]
    budget: Budget = field(default_factory=Budget)
    teacher_accuracy: float | None = None
    warmup: int = 30
    max_skip_share: float = 0.3
    z: float = 1.0
    seed: int = 0
    models: dict[str, Any] = field(default_factory=dict)
    fitted_on: int = 0
    seen: int = 0
    skipped: int = 0

    def fit(self, results: Sequence[Any]) -> bool:
        """Fit on the fully measured results; False while fewer than ``warmup`` exist."""
        from sklearn.ensemble import RandomForestRegressor

        done = [r for r in results if r.ok]
        if len(done) < self.warmup:
            return False
        x = encode(self.space, [r.plan for r in done])
        for name in self.objectives:
            y = np.array([r.metrics[name] for r in done], dtype=float)
            model = RandomForestRegressor(n_estimators=100, min_samples_leaf=2,
                                          random_state=self.seed, n_jobs=1)
            self.models[name] = model.fit(x, y)
        self.fitted_on = len(done)
        return True

    @property
    def ready(self) -> bool:
        return bool(self.models)

    def predict(self, plan: Plan) -> Prediction:
        x = encode(self.space, [plan])
        mean, spread = {}, {}
        for name, model in self.models.items():
            per_tree = np.array([tree.predict(x)[0] for tree in model.estimators_])
            mean[name], spread[name] = float(per_tree.mean()), float(per_tree.std())
        return Prediction(mean, spread)

    def judge(self, plan: Plan, front: Sequence[Any],
              measured: Mapping[str, float] | None = None) -> Prediction:
        """The prediction, with ``skip`` set when the optimistic estimate is infeasible or
        dominated by ``front`` and the skip share allows it. ``measured`` metrics (size and
        latency from the structure stage) are taken as they are, with no spread."""
        self.seen += 1
        prediction = self.predict(plan)
        for name, value in (measured or {}).items():
            if name in prediction.mean:
                prediction.mean[name], prediction.spread[name] = float(value), 0.0
        hopeful = {name: prediction.mean[name]
                   + (self.z if direction == "max" else -self.z) * prediction.spread[name]
                   for name, direction in self.objectives.items()}
        reason = ""
        constraints = self.budget.constraints(hopeful, self.teacher_accuracy)
        if not feasible(constraints):
            broken = ", ".join(k for k, v in constraints.items() if v > 0)
            reason = f"predicted over budget ({broken}) even optimistically"
        elif front and _dominated(hopeful, front, self.objectives):
            reason = "predicted dominated by the front even optimistically"
        if reason and (self.skipped + 1) <= self.max_skip_share * self.seen:
            self.skipped += 1
            prediction.skip, prediction.reason = True, reason
        return prediction


def _dominated(point: Mapping[str, float], front: Sequence[Any],
               objectives: Mapping[str, str]) -> bool:
    names = list(objectives)
    directions = [objectives[n] for n in names]
    mine = as_minimise(np.array([[point[n] for n in names]]), directions)[0]
    others = as_minimise(np.array([[m.metrics[n] for n in names] for m in front]), directions)
    return bool(((others <= mine).all(axis=1) & (others < mine).any(axis=1)).any())


def cross_validated_error(space: SearchSpace, results: Sequence[Any],
                          objectives: Mapping[str, str], *, folds: int = 5,
                          seed: int = 0) -> dict[str, float]:
    """Mean absolute error of each metric's forest under k-fold cross-validation."""
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.model_selection import cross_val_score

    done = [r for r in results if r.ok]
    x = encode(space, [r.plan for r in done])
    errors = {}
    for name in objectives:
        y = np.array([r.metrics[name] for r in done], dtype=float)
        model = RandomForestRegressor(n_estimators=100, min_samples_leaf=2, random_state=seed,
                                      n_jobs=1)
        scores = cross_val_score(model, x, y, cv=min(folds, len(done)),
                                 scoring="neg_mean_absolute_error")
        errors[name] = float(-scores.mean())
    return errors


def summary(space: SearchSpace, results: Sequence[Any], objectives: Mapping[str, str], *,
            warmup: int, seed: int) -> dict[str, Any]:
    """How the learned predictor did in a study: skipped trials, and the cross-validated mean
    absolute error of its forests on the trained trials (once there are enough)."""
    from autocompress.result import Stop, TrialCounts

    trained = sum(r.ok for r in results)
    return {
        "warmup": warmup, "trained_trials": trained,
        "skipped": TrialCounts.of(r for r in results if r.stopped(Stop.SKIPPED)).skipped,
        "cross_validated_mean_abs_error": (
            cross_validated_error(space, results, objectives, seed=seed)
            if trained >= max(warmup, 5) else None),
    }
