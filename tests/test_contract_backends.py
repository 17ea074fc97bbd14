"""Every backend under the same checks: a TrialResult it records reads back equal, whatever
way the trial ended; both follow the Backend protocol; the package keeps its layering."""

from __future__ import annotations

import ast
import inspect
import json
from pathlib import Path

import optuna
import pytest

from autocompress.backends import optuna_backend, record
from autocompress.backends.job import Backend, backend
from autocompress.backends.storage import open_storage
from autocompress.plan import Plan
from autocompress.result import (
    COMPLETE,
    FAILED,
    PRUNED,
    Stop,
    StopReason,
    TrialCounts,
    TrialResult,
)
from autocompress.space import SearchSpace

SPACE = SearchSpace.from_dict({"prune": {"ratio": {"low": 0.1, "high": 0.9}},
                               "quantize": {"bits": [4, 8]}})
OBJECTIVES = {"accuracy": "max", "memory_bytes": "min"}
CONSTRAINTS = ["memory_bytes"]
PACKAGE = Path(__file__).resolve().parents[1] / "autocompress"


def _endings(plan: Plan) -> dict[str, TrialResult]:
    """One result per way a trial can end, each with every field set that its kind keeps."""
    measured = {"memory_bytes": 1234.0, "latency_ms": 0.5, "parameters": 99.0}
    return {
        "complete": TrialResult(plan, COMPLETE, {**measured, "accuracy": 0.93},
                                {"latency": {"batch_size": 1, "threads": 1}}, duration_s=1.5,
                                constraints={"memory_bytes": -766.0}),
        "structure": TrialResult(plan, COMPLETE, measured, {"latency": "not timed"},
                                 duration_s=0.25, constraints={"memory_bytes": 234.0},
                                 stop=StopReason(Stop.STRUCTURE)),
        "skipped": TrialResult(plan, PRUNED, measured, {}, duration_s=0.125,
                               constraints={"memory_bytes": -1.0},
                               stop=StopReason(Stop.SKIPPED, why="predicted dominated")),
        "early": TrialResult(plan, PRUNED, {**measured, "accuracy": 0.4}, {}, duration_s=0.75,
                             constraints={"memory_bytes": -1.0},
                             stop=StopReason(Stop.EARLY, epoch=2)),
        "failed": TrialResult(plan, FAILED, reason="TrialError: loss is nan", duration_s=0.5),
    }


def _study(tmp_path: Path, name: str, *, heartbeat: bool = True) -> optuna.Study:
    """Heartbeats for trials run by ``Study.optimize`` (Optuna backend), none for ask-and-tell
    (Ray's searcher), as in a search."""
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}", heartbeat=heartbeat)
    return optuna_backend.open_study(storage, name, OBJECTIVES, sampler_name="random", seed=0,
                                     n_trials=5)


def _read_back(study: optuna.Study) -> list[TrialResult]:
    return sorted(record.load_results(study), key=lambda r: r.number)


@pytest.mark.parametrize("ending", ["complete", "structure", "skipped", "early", "failed"])
def test_a_result_recorded_by_the_optuna_backend_reads_back_equal(tmp_path, ending):
    study = _study(tmp_path, "optuna-" + ending)
    sent: list[TrialResult] = []

    def run(plan: Plan, **_hooks) -> TrialResult:
        result = _endings(plan)[ending]
        sent.append(result)
        return result

    optuna_backend.optimize(study, SPACE, run, n_trials=1, seed=7, objectives=OBJECTIVES,
                            constraint_names=CONSTRAINTS, stand_in={"accuracy": 0.0})
    (back,) = _read_back(study)
    assert back == sent[0] and back.number == 0 and back.plan.seed == 7


@pytest.mark.parametrize("ending", ["complete", "structure", "skipped", "early", "failed"])
def test_a_result_recorded_by_the_ray_backend_reads_back_equal(tmp_path, ending):
    pytest.importorskip("ray")
    from autocompress.backends.ray_backend import _searcher_class

    study = _study(tmp_path, "ray-" + ending, heartbeat=False)
    told: list[TrialResult] = []
    searcher = _searcher_class()(study, SPACE, seed=7, objectives=list(OBJECTIVES),
                                 constraint_names=CONSTRAINTS, stand_in={"accuracy": 0.0},
                                 on_result=told.append)
    suggestion = searcher.suggest("t0")
    sent = _endings(Plan.from_json(suggestion["plan"]))[ending]
    sent.number = 0
    message = {"final": True, "result": json.dumps(record.to_message(sent)),
               "node": json.dumps({"host": "here"})}
    searcher.on_trial_complete("t0", message)
    (back,) = _read_back(study)
    assert back == sent and told == [sent]
    assert study.trials[0].user_attrs["node"] == {"host": "here"}


def test_both_backends_record_the_same_attributes_and_constraints(tmp_path):
    """What optuna-dashboard and the samplers see must not depend on the backend."""
    pytest.importorskip("ray")
    from autocompress.backends.ray_backend import _searcher_class

    optuna_study, ray_study = _study(tmp_path, "a"), _study(tmp_path, "b", heartbeat=False)
    optuna_backend.optimize(optuna_study, SPACE, lambda plan, **_: _endings(plan)["complete"],
                            n_trials=1, seed=0, objectives=OBJECTIVES,
                            constraint_names=CONSTRAINTS)
    searcher = _searcher_class()(ray_study, SPACE, seed=0, objectives=list(OBJECTIVES),
                                 constraint_names=CONSTRAINTS, stand_in={}, on_result=None)
    plan = Plan.from_json(searcher.suggest("t")["plan"])
    searcher.on_trial_complete("t", {"final": True, "result": json.dumps(
        record.to_message(_endings(plan)["complete"]))})
    a, b = optuna_study.trials[0], ray_study.trials[0]
    assert set(a.user_attrs) == set(b.user_attrs)
    # stored in Optuna's list form, the one optuna-dashboard reads (names: the user attribute)
    assert list(a.constraints.values()) == list(b.constraints.values()) == [-766.0]
    assert a.user_attrs["constraints"] == b.user_attrs["constraints"] == {"memory_bytes": -766.0}
    assert a.values == b.values == [0.93, 1234.0]


def test_stop_reasons_survive_their_stored_text_form():
    for stop in (StopReason(Stop.STRUCTURE), StopReason(Stop.EARLY, epoch=3),
                 StopReason(Stop.SKIPPED, why="over budget: latency")):
        assert StopReason.parse(str(stop)) == stop
    assert StopReason.parse("") is None


def test_counts_put_each_trial_in_one_kind():
    results = list(_endings(Plan({})).values())
    results.append(TrialResult(Plan({}), FAILED, reason="interrupted: killed"))
    counts = TrialCounts.of(results)
    assert (counts.feasible, counts.structure, counts.skipped, counts.early, counts.failed,
            counts.interrupted, counts.total) == (1, 1, 1, 1, 1, 1, 6)
    assert "1 stopped early" in counts.summary() and "1 not trained" in counts.summary()


@pytest.mark.parametrize("name", ["optuna", "ray"])
def test_each_backend_follows_the_protocol(name):
    if name == "ray":
        pytest.importorskip("ray")
    runner = backend(name)
    assert isinstance(runner, Backend)
    assert list(inspect.signature(runner.run).parameters) == ["job", "n_trials", "progress"]


def test_a_backend_refuses_options_it_does_not_take():
    with pytest.raises(TypeError, match="pid_dir"):
        backend("optuna", pid_dir="/tmp")


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The autocompress modules ``path`` imports at module level (not inside functions):
    ``from pkg import sub`` depends on ``pkg.sub`` when that is a module, else on ``pkg``."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("autocompress"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    found.add(sub if sub in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("autocompress"))
    return found


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_package_has_no_import_cycle():
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: {m for m in _imports(path, set(modules)) if m in modules and m != name}
             for name, path in modules.items()}
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for nxt in sorted(graph[name]):
            if state.get(nxt) == 1:
                cycle = [*trail[trail.index(nxt):], nxt] if nxt in trail else [name, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_optuna_and_ray_are_imported_only_in_backends():
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        inside = path.parent.name == "backends"
        for word in ("import optuna", "from optuna", "import ray", "from ray"):
            assert inside or word not in text, f"{path.relative_to(PACKAGE)}: {word}"


def test_no_module_is_over_400_lines_and_study_under_300():
    sizes = {p.relative_to(PACKAGE): len(p.read_text().splitlines())
             for p in PACKAGE.rglob("*.py")}
    assert {p: n for p, n in sizes.items() if n > 400} == {}
    assert sizes[Path("study.py")] < 300
