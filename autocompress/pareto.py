"""The Pareto front: pure functions over objective vectors, kept apart from storage and plotting.

Only ``pareto.py`` decides feasibility and the front, so every backend is judged by one rule.
Objectives are turned into "minimise" here and nowhere else: a maximised objective is negated.

Latency is noisy, so dominance takes a tolerance per point and objective: where two latencies
differ by no more than the larger of their measured noises, neither is better on latency.

Hypervolume is computed on normalised objectives, each scaled so the reference point is 1:
``latency_ms / ref``, ``memory_bytes / ref`` (and peak memory), and for accuracy
``(1 - accuracy) / (1 - ref_accuracy)``. The reference comes from the budget's limits; without a
budget it is the teacher's latency and sizes and an accuracy of 0. A language model's perplexity
is ``perplexity / ref`` (the budget's ceiling, else twice the teacher's), and a rate to maximise
(``tokens_per_s``) enters as ``ref / rate`` (the teacher's rate), a time per token. A point beyond
the reference on any objective adds nothing. So 1.0 would be a perfect model (zero error, no
time, no bytes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

NOISY = {"latency_ms": "latency_noise_ms", "tokens_per_s": "tokens_per_s_noise"}


def as_minimise(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Negate the columns whose direction is ``max``."""
    signs = np.array([-1.0 if d == "max" else 1.0 for d in directions])
    return np.asarray(values, dtype=float) * signs


def non_dominated(points: np.ndarray, tolerance: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of the rows no other row dominates, minimising every column.

    Row i dominates row j when it is no worse on every column and better on one, where on
    column k "better" means lower by more than ``max(tolerance[i, k], tolerance[j, k])`` and
    "no worse" means not higher by more than that.

    >>> non_dominated(np.array([[1, 2], [2, 1], [2, 2]])).tolist()
    [True, True, False]
    >>> non_dominated(np.array([[1.0, 2], [1.1, 1]]), np.array([[0.2, 0], [0.2, 0]])).tolist()
    [False, True]
    """
    points = np.asarray(points, dtype=float)
    if points.size == 0:
        return np.zeros(len(points), dtype=bool)
    tol = np.zeros_like(points) if tolerance is None else np.asarray(tolerance, dtype=float)
    pair_tol = np.maximum(tol[:, None, :], tol[None, :, :])
    diff = points[:, None, :] - points[None, :, :]  # [i, j]: i minus j
    no_worse = (diff <= pair_tol).all(axis=2)
    better = (diff < -pair_tol).any(axis=2)
    dominates = no_worse & better
    np.fill_diagonal(dominates, False)
    return ~dominates.any(axis=0)


def hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    """Exact hypervolume dominated by ``points`` (minimised) up to ``reference``.

    Slices along the first objective and recurses (fine for the tens of members a front has).

    >>> hypervolume(np.array([[1.0, 2.0], [2.0, 1.0]]), np.array([3.0, 3.0]))
    3.0
    """
    points = np.asarray(points, dtype=float)
    reference = np.asarray(reference, dtype=float)
    if points.size == 0:
        return 0.0
    points = points[(points < reference).all(axis=1)]
    if len(points) == 0:
        return 0.0
    if points.shape[1] == 1:
        return float(reference[0] - points[:, 0].min())
    order = np.argsort(points[:, 0])
    points = points[order]
    volume = 0.0
    for i, point in enumerate(points):
        upper = points[i + 1, 0] if i + 1 < len(points) else reference[0]
        width = upper - point[0]
        if width > 0:
            volume += width * hypervolume(points[: i + 1, 1:], reference[1:])
    return float(volume)


def normalise(
    metrics: Sequence[Mapping[str, float]], objectives: Mapping[str, str],
    reference: Mapping[str, float],
) -> np.ndarray:
    """Objective vectors scaled so that ``reference`` maps to 1 on every objective (minimised)."""
    rows = []
    for m in metrics:
        row = []
        for name in objectives:
            if name == "accuracy":
                row.append((1.0 - m[name]) / max(1e-12, 1.0 - reference[name]))
            elif objectives[name] == "max":  # a rate (tokens per second): the time per unit
                row.append(reference[name] / max(1e-12, m[name]))
            else:
                row.append(m[name] / max(1e-12, reference[name]))
        rows.append(row)
    return np.array(rows, dtype=float).reshape(-1, len(objectives))


def reference_point(objectives: Mapping[str, str], teacher: Mapping[str, float],
                    budget: Any = None) -> dict[str, float]:
    """The hypervolume reference: the budget's limits, else the teacher's figures (accuracy 0)."""
    ref = {}
    for name in objectives:
        if name == "accuracy":
            floor = budget.accuracy_floor(teacher.get("accuracy")) if budget else None
            ref[name] = floor if floor is not None else 0.0
        elif name == "perplexity":  # the budget's ceiling, else twice the teacher's
            ceiling = budget.perplexity_ceiling(teacher.get("perplexity")) if budget else None
            ref[name] = ceiling if ceiling is not None else 2.0 * teacher.get("perplexity", 1.0)
        else:
            limit = getattr(budget, f"max_{name}", None) if budget else None
            ref[name] = float(limit) if limit is not None else float(teacher.get(name, 1.0))
    return ref


@dataclass
class ParetoFront:
    """The feasible, non-dominated trials of a study, with the hypervolume they cover."""

    members: list[Any]
    objectives: Mapping[str, str]
    teacher: Mapping[str, float] = field(default_factory=dict)
    reference: Mapping[str, float] = field(default_factory=dict)
    hypervolume: float = 0.0

    def __len__(self) -> int:
        return len(self.members)

    def __iter__(self):
        return iter(self.members)

    def to_dataframe(self):
        """The members as a pandas DataFrame (the columns of ``pareto.csv``)."""
        import pandas as pd

        return pd.DataFrame([m.to_row() for m in self.members])

    def best(self, under: Any = None, *, by: str = "accuracy") -> Any | None:
        """The member that best fits a tighter budget: among members meeting ``under`` (a Budget
        or a mapping of its fields), the one best on ``by``; None when none fits."""
        from autocompress.budget import Budget, feasible

        if isinstance(under, Mapping):
            under = Budget(**under)
        fits = [m for m in self.members
                if under is None or feasible(under.constraints(
                    m.metrics, self.teacher.get("accuracy"),
                    teacher_perplexity=self.teacher.get("perplexity")))]
        if not fits:
            return None
        sign = -1.0 if self.objectives.get(by, "max" if by == "accuracy" else "min") == "max" \
            else 1.0
        return min(fits, key=lambda m: sign * m.metrics[by])


def _tolerances(results: Sequence[Any], objectives: Mapping[str, str]) -> np.ndarray:
    return np.array([[r.metrics.get(NOISY[n], 0.0) if n in NOISY else 0.0 for n in objectives]
                     for r in results]).reshape(-1, len(objectives))


def pareto_front(
    results: Sequence[Any], objectives: Mapping[str, str], teacher: Mapping[str, float] = (),
    budget: Any = None,
) -> ParetoFront:
    """The feasible completed results that no other feasible result dominates (noise-aware)."""
    teacher = dict(teacher)
    candidates = [r for r in results if r.ok and r.feasible]
    names = list(objectives)
    values = np.array([[r.metrics[n] for n in names] for r in candidates]).reshape(-1, len(names))
    directions = [objectives[n] for n in names]
    mask = non_dominated(as_minimise(values, directions), _tolerances(candidates, objectives))
    members = [r for r, keep in zip(candidates, mask, strict=True) if keep]
    members.sort(key=lambda r: (-r.metrics.get("accuracy", 0.0), r.number or 0))
    reference = reference_point(objectives, teacher, budget) if teacher else {}
    volume = 0.0
    if members and reference:
        volume = hypervolume(normalise([m.metrics for m in members], objectives, reference),
                             np.ones(len(names)))
    return ParetoFront(members, dict(objectives), teacher, reference, volume)


def hypervolume_history(
    results: Sequence[Any], objectives: Mapping[str, str], teacher: Mapping[str, float],
    budget: Any = None,
) -> list[float]:
    """Hypervolume of the front after each trial, in trial order."""
    ordered = sorted(results, key=lambda r: r.number or 0)
    reference = reference_point(objectives, teacher, budget)
    history, volume = [], 0.0
    pool: list[Any] = []
    for result in ordered:
        if result.ok and result.feasible:
            pool.append(result)
            points = normalise([r.metrics for r in pool], objectives, reference)
            keep = non_dominated(points)
            pool = [r for r, k in zip(pool, keep, strict=True) if k]
            volume = hypervolume(points[keep], np.ones(len(objectives)))
        history.append(volume)
    return history
