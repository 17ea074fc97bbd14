from __future__ import annotations

import numpy as np
import pytest

from autocompress.pareto import as_minimise, non_dominated, pareto_front
from autocompress.plan import Plan
from autocompress.trial import TrialResult


def brute_force(points: np.ndarray) -> np.ndarray:
    keep = []
    for i, p in enumerate(points):
        dominated = any(
            np.all(q <= p) and np.any(q < p) for j, q in enumerate(points) if j != i
        )
        keep.append(not dominated)
    return np.array(keep)


@pytest.mark.parametrize("seed", range(5))
def test_non_dominated_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    points = rng.integers(0, 6, size=(60, 3)).astype(float)  # many ties on purpose
    assert np.array_equal(non_dominated(points), brute_force(points))


def test_front_has_no_dominated_member_and_respects_directions():
    rng = np.random.default_rng(1)
    results = []
    for i in range(40):
        acc, lat, mem = rng.uniform(0.5, 1.0), rng.uniform(0.1, 2.0), rng.uniform(1e3, 1e6)
        r = TrialResult(Plan({"x": i}), metrics={"accuracy": acc, "latency_ms": lat,
                                                 "memory_bytes": mem}, number=i)
        results.append(r)
    results.append(TrialResult(Plan(), state="failed", reason="boom", number=99))
    objectives = {"accuracy": "max", "latency_ms": "min", "memory_bytes": "min"}
    front = pareto_front(results, objectives)
    assert 0 < len(front) < 40 and all(m.ok for m in front)
    values = as_minimise(
        np.array([[r.metrics[k] for k in objectives] for r in results if r.ok]),
        list(objectives.values()),
    )
    members = {m.number for m in front}
    for i, member in enumerate(r for r in results if r.ok):
        dominated = any(np.all(q <= values[i]) and np.any(q < values[i]) for q in values)
        assert (member.number in members) == (not dominated)
    frame = front.to_dataframe()
    assert list(frame.columns[:5]) == ["trial", "state", "accuracy", "latency_ms", "memory_bytes"]


def test_maximised_objective_is_negated():
    assert as_minimise(np.array([[0.9, 2.0]]), ["max", "min"]).tolist() == [[-0.9, 2.0]]
