from __future__ import annotations

import numpy as np
import pytest

from autocompress.pareto import as_minimise, non_dominated, pareto_front
from autocompress.plan import Plan
from autocompress.result import TrialResult


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


def test_hypervolume_against_hand_computed_cases():
    from autocompress.pareto import hypervolume

    # 2-D staircase to (4, 4): slices x in [1,2) of height 1, [2,3) of 2, [3,4) of 3: 6
    points = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])
    assert hypervolume(points, np.array([4.0, 4.0])) == pytest.approx(6.0)
    # a dominated point and a point beyond the reference add nothing
    extra = np.vstack([points, [[3.0, 3.0], [5.0, 0.5]]])
    assert hypervolume(extra, np.array([4.0, 4.0])) == pytest.approx(6.0)
    # 3-D to (2, 2, 2): (0,1,1) covers [0,2]x[1,2]x[1,2] (volume 2), (1,0,1) covers
    # [1,2]x[0,2]x[1,2] (volume 2); they share [1,2]x[1,2]x[1,2] (volume 1): 2 + 2 - 1 = 3
    cubes = np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0]])
    assert hypervolume(cubes, np.array([2.0, 2.0, 2.0])) == pytest.approx(3.0)


def test_noise_makes_close_latencies_equal():
    from autocompress.pareto import pareto_front

    def result(number, acc, lat, noise, mem):
        return TrialResult(Plan({"n": number}), number=number, metrics={
            "accuracy": acc, "latency_ms": lat, "latency_noise_ms": noise, "memory_bytes": mem})

    objectives = {"accuracy": "max", "latency_ms": "min", "memory_bytes": "min"}
    # b is 0.01 ms faster than a, within noise; a is more accurate at equal size: a dominates b
    a, b = result(0, 0.95, 1.00, 0.05, 1000), result(1, 0.94, 0.99, 0.05, 1000)
    assert [m.number for m in pareto_front([a, b], objectives)] == [0]
    # without noise, b's faster latency keeps it on the front
    a.metrics["latency_noise_ms"] = b.metrics["latency_noise_ms"] = 0.0
    assert sorted(m.number for m in pareto_front([a, b], objectives)) == [0, 1]


def test_infeasible_results_never_reach_the_front():
    from autocompress.pareto import pareto_front

    good = TrialResult(Plan(), number=0, metrics={"accuracy": 0.5, "latency_ms": 9.0,
                                                  "memory_bytes": 9e6})
    over = TrialResult(Plan(), number=1, metrics={"accuracy": 0.99, "latency_ms": 0.1,
                                                  "memory_bytes": 10.0},
                       constraints={"memory_bytes": 5.0})
    front = pareto_front([good, over], {"accuracy": "max", "latency_ms": "min",
                                        "memory_bytes": "min"})
    assert [m.number for m in front] == [0]
