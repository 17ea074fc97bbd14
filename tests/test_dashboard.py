"""optuna-dashboard on a real study: what its HTTP API shows must be the study's truth.

A tiny search with a memory budget some trials break (three stop at structure, never trained),
then the real dashboard server on its SQLite file, asked what its pages are built from: the
objective names, each trial's readable choices and constraints, and its Pareto front (the one
its web page draws: complete, feasible, non-dominated trials), which must be ours.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import optuna
import pytest
from helpers import folder_storage

import autocompress

pytest.importorskip("optuna_dashboard", reason="optuna-dashboard is not installed "
                    "(pip install optuna-dashboard, or the dev extra)")

SERVE = ("import sys, optuna_dashboard; "
         "optuna_dashboard.run_server(sys.argv[1], host='127.0.0.1', port=int(sys.argv[2]))")


@pytest.fixture(scope="module")
def outcome(tmp_path_factory) -> autocompress.StudyOutcome:
    # Seed 0 draws three trials over 5.5 kB (stopped at structure) and three under it whose
    # accuracy and size alone keep each on the front, so latency noise cannot change it.
    return autocompress.run_study(autocompress.study_from_dict({
        "name": "dashboard", "task": {"dataset": "digits", "teacher": "lenet300",
                                      "teacher_epochs": 2},
        "finetune": {"epochs": 1}, "measure": {"warmup": 1, "repeats": 3},
        "budget": {"max_memory_bytes": "5.5kB"}, "trials": 6, "sampler": "random", "seed": 0,
    }), out_dir=tmp_path_factory.mktemp("dashboard"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        body = response.read().decode()
    return body if url.split("/")[3] == "csv" else json.loads(body)


@pytest.fixture(scope="module")
def dashboard(outcome, tmp_path_factory) -> Iterator[str]:
    """The real server (its public ``run_server``) in its own process; its base URL."""
    port = _free_port()
    log = tmp_path_factory.mktemp("dashboard-log") / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-c", SERVE, str(outcome.out_dir / "study.journal"), str(port)],
            stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                _get(f"{base}/api/studies")
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"optuna-dashboard did not answer:\n{log.read_text()[-2000:]}")
                time.sleep(0.1)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture(scope="module")
def detail(dashboard) -> dict[str, Any]:
    (summary,) = _get(f"{dashboard}/api/studies")["study_summaries"]
    assert summary["study_name"] == "dashboard"
    return {**_get(f"{dashboard}/api/studies/{summary['study_id']}"), "id": summary["study_id"]}


def _attrs(trial: dict[str, Any]) -> dict[str, str]:
    return {a["key"]: a["value"] for a in trial["user_attrs"]}


def test_the_objectives_have_their_names(outcome, detail, dashboard):
    names = list(outcome.config.objectives)
    assert names == ["accuracy", "latency_ms", "memory_bytes"]
    assert detail["objective_names"] == names
    assert detail["directions"] == ["maximize", "minimize", "minimize"]
    header = _get(f"{dashboard}/csv/{detail['id']}").splitlines()[0].split(",")
    assert header[2:5] == names


def test_every_choice_sampled_as_an_index_is_shown_with_its_value(outcome, detail):
    dimensions = outcome.space.dimensions
    shown = 0
    for trial in detail["trials"]:
        attrs = _attrs(trial)
        plan = json.loads(attrs["plan"])["choices"]
        for param in trial["params"]:
            if not param["name"].endswith(".index"):
                continue
            name = param["name"].removesuffix(".index")
            value = dimensions[name].values[int(param["param_external_value"])]
            assert attrs[f"choice.{name}"] == str(value) == str(plan[name]), (trial["number"], name)
            shown += 1
    assert shown >= len(detail["trials"])  # quantize.bits at least, in every trial
    sortable = {a["key"] for a in detail["union_user_attrs"] if a["sortable"]}
    assert "choice.quantize.bits" in sortable  # a number: the dashboard can sort and plot it


def test_every_trial_shows_its_constraints(outcome, detail):
    names = outcome.config.budget.constraint_names()
    assert names == ["memory_bytes"]
    results = {r.number: r for r in outcome.results}
    shown = {t["number"]: t["constraints"] for t in detail["trials"]}
    assert shown == {n: [r.constraints[name] for name in names] for n, r in results.items()}
    # Optuna's samplers read the same values from the same place.
    study = optuna.load_study(study_name="dashboard",
                              storage=folder_storage(outcome.out_dir))
    assert {t.number: list(t.constraints.values()) for t in study.trials} == shown


def test_trials_stopped_at_structure_are_shown_infeasible_and_stopped(outcome, detail):
    stopped = {r.number for r in outcome.results if r.stopped_at == "structure"}
    assert len(stopped) == 3 and len(outcome.results) - len(stopped) == 3
    for trial in detail["trials"]:
        if trial["number"] in stopped:
            assert any(c > 0 for c in trial["constraints"]), trial["number"]
            assert _attrs(trial)["stopped_at"] == "structure"
            assert "accuracy" not in _attrs(trial)  # never measured: 0 is a stand-in
        else:
            assert all(c <= 0 for c in trial["constraints"]), trial["number"]


def _dashboard_front(detail: dict[str, Any]) -> set[int]:
    """The front optuna-dashboard's page draws (its Pareto-front plot and the parallel
    coordinates without dominated trials): complete feasible trials none dominates."""
    signs = [1.0 if d == "minimize" else -1.0 for d in detail["directions"]]
    feasible = [(t["number"], [s * v for s, v in zip(signs, t["values"], strict=True)])
                for t in detail["trials"]
                if t["state"] == "Complete" and all(c <= 0 for c in t["constraints"])]

    def dominated(point: list[float]) -> bool:
        return any(other != point and all(o <= p for o, p in zip(other, point, strict=True))
                   for _, other in feasible)

    return {number for number, point in feasible if not dominated(point)}


def test_the_dashboard_front_is_ours(outcome, detail):
    ours = {m.number for m in outcome.front.members}
    assert len(ours) == 3
    assert _dashboard_front(detail) == ours
    # Its "Best Trials" card is computed by the server without constraints (0.21), so it may
    # also list an infeasible trial; the feasible ones it lists are on our front.
    feasible = {t["number"] for t in detail["trials"] if all(c <= 0 for c in t["constraints"])}
    assert {t["number"] for t in detail["best_trials"]} & feasible <= ours
