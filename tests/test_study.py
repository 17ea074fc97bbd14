"""End to end on real data, real Optuna SQLite storage, real training: small but whole."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from helpers import folder_storage
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import autocompress
from autocompress.config import study_from_dict
from autocompress.pareto import as_minimise, non_dominated

SMALL_STUDY = {
    "name": "tiny",
    "task": {"dataset": "digits", "teacher": "lenet300", "teacher_epochs": 8},
    "space": "default",
    "measure": {"batch_size": 1, "threads": 1, "warmup": 2, "repeats": 5},
    "finetune": {"epochs": 1},
    "trials": 3,
    "sampler": "random",
}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    config = study_from_dict(SMALL_STUDY)
    first = autocompress.run_study(config, out_dir=out)
    second = autocompress.run_study(config.with_overrides(trials=5), out_dir=out)
    return out, first, second


def test_outputs_are_written(two_runs):
    out, _, _second = two_runs
    for name in ("study.journal", "teacher.pt", "teacher.json", "trials.csv", "pareto.csv"):
        assert (out / name).is_file(), name
    teacher = json.loads((out / "teacher.json").read_text())
    assert {"accuracy", "latency_ms", "memory_bytes"} <= set(teacher)
    assert teacher["accuracy"] > 0.8  # a real teacher, really trained
    state = torch.load(out / "teacher.pt", weights_only=True)
    assert state["1.weight"].shape == (300, 64)
    trials = pd.read_csv(out / "trials.csv")
    assert list(trials.columns[:5]) == ["trial", "state", "accuracy", "latency_ms", "memory_bytes"]
    assert {"plan.prune.ratio", "plan.quantize.bits", "plan.student.width"} <= set(trials.columns)
    front = pd.read_csv(out / "pareto.csv")
    assert list(front.columns) == list(trials.columns) and 1 <= len(front) <= len(trials)


def test_second_run_completes_the_study_to_its_trial_count(two_runs):
    out, first, second = two_runs
    assert len(first.results) == 3 and len(second.results) == 5
    assert [r.number for r in second.results] == [0, 1, 2, 3, 4]
    stored = optuna.load_study(study_name="tiny", storage=folder_storage(out))
    assert len(stored.trials) == 5
    # the teacher was trained once and reloaded: same weights, same accuracy
    assert first.teacher["accuracy"] == second.teacher["accuracy"]


def test_metrics_and_choices_are_visible_to_any_optuna_client(two_runs):
    out, _, _ = two_runs
    stored = optuna.load_study(study_name="tiny", storage=folder_storage(out))
    trial = next(t for t in stored.trials if t.state == optuna.trial.TrialState.COMPLETE)
    for key in ("accuracy", "latency_ms", "memory_bytes", "plan", "measurement"):
        assert key in trial.user_attrs
    assert trial.user_attrs["plan"]["choices"]["quantize.bits"] in (2, 3, 4, 8, 32)
    assert trial.user_attrs["measurement"]["latency"]["threads"] == 1


def test_front_members_are_non_dominated(two_runs):
    _, _, second = two_runs
    objectives = second.config.objectives
    complete = [r for r in second.results if r.ok and r.feasible]
    values = as_minimise(np.array([[r.metrics[k] for k in objectives] for r in complete]),
                         list(objectives.values()))
    # latencies within their measured noise count as equal
    noise = np.array([[r.metrics["latency_noise_ms"] if k == "latency_ms" else 0.0
                       for k in objectives] for r in complete])
    keep = non_dominated(values, noise)
    expected = {r.number for r, k in zip(complete, keep, strict=True) if k}
    assert {m.number for m in second.front} == expected


def test_python_api_with_a_users_model_and_loaders(digits, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))
    autocompress.techniques.training.fit(model, digits.train.x, digits.train.y, epochs=5)
    train = DataLoader(TensorDataset(digits.train.x, digits.train.y), batch_size=100)
    outcome = autocompress.search(
        model, train=train, val=(digits.val.x, digits.val.y), trials=2, seed=3,
        space={"student": {"width": {"low": 0.3, "high": 0.9}}, "quantize": {"bits": [4, 8]}},
        out_dir=tmp_path, finetune_epochs=1, progress=lambda _: None,
    )
    assert len(outcome.results) == 2 and all(r.ok for r in outcome.results)
    assert len(outcome.front) >= 1
    assert all(r.metrics["memory_bytes"] < outcome.teacher["memory_bytes"] for r in outcome.results)
    assert (tmp_path / "pareto.csv").is_file()


class _FlakyAccuracy:
    """A user's metric that raises on its second call (the first trial's): a failure inside a
    trial, which pre-flight cannot see."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, model, split) -> float:
        self.calls += 1
        if self.calls == 2:
            raise ValueError("this metric refuses narrow students")
        return float((model(split.x).argmax(1) == split.y).float().mean())


def test_a_failing_trial_is_recorded_and_the_study_goes_on(mlp_teacher, digits, tmp_path):
    outcome = autocompress.search(
        mlp_teacher, train=(digits.train.x, digits.train.y), val=(digits.val.x, digits.val.y),
        trials=4, space={"student": {"width": [0.05, 1.0]}}, out_dir=tmp_path,
        metric=_FlakyAccuracy(), finetune_epochs=1, sampler="random", seed=1,
        progress=lambda _: None, predictor=False,
    )
    failed = [r for r in outcome.results if not r.ok]
    assert failed and all("refuses narrow students" in r.reason for r in failed)
    assert any(r.ok for r in outcome.results)
    trials = pd.read_csv(tmp_path / "trials.csv")
    assert "refuses narrow students" in " ".join(trials["reason"].fillna(""))
