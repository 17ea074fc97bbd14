"""The Pareto front: pure functions over objective vectors, kept apart from storage and plotting.

Objectives are turned into "minimise" here and nowhere else: a maximised objective is negated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def as_minimise(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Negate the columns whose direction is ``max``."""
    signs = np.array([-1.0 if d == "max" else 1.0 for d in directions])
    return np.asarray(values, dtype=float) * signs


def non_dominated(points: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows no other row dominates (all <=, one <), minimising every column.

    >>> non_dominated(np.array([[1, 2], [2, 1], [2, 2]])).tolist()
    [True, True, False]
    """
    points = np.asarray(points, dtype=float)
    if points.size == 0:
        return np.zeros(len(points), dtype=bool)
    no_worse = (points[:, None, :] <= points[None, :, :]).all(axis=2)
    better = (points[:, None, :] < points[None, :, :]).any(axis=2)
    dominates = no_worse & better  # [i, j]: row i dominates row j
    return ~dominates.any(axis=0)


@dataclass
class ParetoFront:
    """The non-dominated members of a study, each a trial result with ``metrics`` and ``plan``."""

    members: list[Any]
    objectives: Mapping[str, str]
    teacher: Mapping[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.members)

    def __iter__(self):
        return iter(self.members)

    def to_dataframe(self):
        """The members as a pandas DataFrame (the columns of ``pareto.csv``)."""
        import pandas as pd

        return pd.DataFrame([m.to_row() for m in self.members])


def pareto_front(
    results: Sequence[Any], objectives: Mapping[str, str], teacher: Mapping[str, float] = ()
) -> ParetoFront:
    """Non-dominated completed results over ``objectives`` (name -> ``min``/``max``)."""
    complete = [r for r in results if r.ok]
    names = list(objectives)
    values = np.array([[r.metrics[n] for n in names] for r in complete]).reshape(-1, len(names))
    mask = non_dominated(as_minimise(values, [objectives[n] for n in names]))
    members = [r for r, keep in zip(complete, mask, strict=True) if keep]
    members.sort(key=lambda r: (-r.metrics.get("accuracy", 0.0), r.number or 0))
    return ParetoFront(members, dict(objectives), dict(teacher))
