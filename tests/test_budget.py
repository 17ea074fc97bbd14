"""Budgets: parsing with units, constraint values, constraint-first trials, the front they leave."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
from helpers import folder_storage

import autocompress
from autocompress.budget import Budget, format_violations
from autocompress.config import FinetuneConfig, MeasureConfig, study_from_dict
from autocompress.errors import ConfigError
from autocompress.plan import Plan
from autocompress.result import Stop
from autocompress.tasks import Task
from autocompress.techniques import distill
from autocompress.techniques.common import bake
from autocompress.trial import TeacherOutputs, run_trial

FAST = MeasureConfig(warmup=2, repeats=5)


def test_budget_units_are_parsed():
    config = study_from_dict({"budget": {"max_latency_ms": "2ms", "max_memory_bytes": "100kB",
                                         "max_peak_memory_bytes": "1.5MB", "min_accuracy": 0.9,
                                         "max_accuracy_drop": 1, "batch_size": 8, "threads": 2}})
    b = config.budget
    assert (b.max_latency_ms, b.max_memory_bytes, b.max_peak_memory_bytes) == (2.0, 100_000,
                                                                               1_500_000)
    assert (config.measure.batch_size, config.measure.threads) == (8, 2)
    assert study_from_dict({"budget": {"max_latency_ms": "0.5s"}}).budget.max_latency_ms == 500
    assert study_from_dict({"budget": {"max_memory_bytes": "2KiB"}}).budget.max_memory_bytes == 2048


@pytest.mark.parametrize(("budget", "message"), [
    ({"max_latency_ms": "fast"}, r"budget\.max_latency_ms: got 'fast', expected a time"),
    ({"max_memory_bytes": "100 parsecs"}, r"budget\.max_memory_bytes: got '100 parsecs'"),
    ({"max_memory_bytes": 0}, r"budget\.max_memory_bytes: got 0, expected a positive limit"),
    ({"min_accuracy": 95}, r"budget\.min_accuracy: got 95, expected a share in \(0, 1\]"),
    ({"max_accuracy_drop": -1}, r"budget\.max_accuracy_drop: got -1"),
    ({"max_latncy_ms": 2}, r"did you mean 'budget\.max_latency_ms'"),
    ({"device": "tpu"}, r"budget\.device: got 'tpu', expected cpu or cuda"),
    ({"threads": 0}, r"budget\.threads: got 0"),
])
def test_bad_budgets_name_the_field(budget, message):
    with pytest.raises(ConfigError, match=message):
        study_from_dict({"budget": budget})


def test_budget_and_measure_must_agree():
    with pytest.raises(ConfigError, match=r"budget\.batch_size"):
        study_from_dict({"budget": {"batch_size": 8}, "measure": {"batch_size": 4}})


def test_constraint_values_follow_optunas_rule():
    budget = Budget(max_latency_ms=2.0, max_memory_bytes=1000, max_accuracy_drop=1.0)
    values = budget.constraints({"latency_ms": 2.42, "memory_bytes": 800, "accuracy": 0.95},
                                teacher_accuracy=0.97)
    assert values == pytest.approx({"latency_ms": 0.42, "memory_bytes": -200,
                                    "accuracy": 0.01})
    assert format_violations(values) == "latency_ms +0.42; accuracy +0.01"
    assert budget.accuracy_floor(0.97) == pytest.approx(0.96)
    assert Budget(min_accuracy=0.97, max_accuracy_drop=5).accuracy_floor(0.97) == 0.97


@pytest.fixture
def task(mlp_teacher, digits):
    return Task("digits", mlp_teacher, digits.train, digits.val, digits.test)


def test_an_infeasible_structure_never_trains(task):
    calls = []

    def spy(model, plan, ctx):
        calls.append(plan)
        return distill.apply(model, plan, ctx)

    outputs = TeacherOutputs.of(task.teacher, task.train.x)
    common = dict(teacher_outputs=outputs, finetune=FinetuneConfig(epochs=1), measure=FAST,
                  train=spy)
    tiny = Budget(max_memory_bytes=1000)  # the teacher is ~200 kB; width 0.5 cannot fit
    stopped = run_trial(Plan({"student.width": 0.5}), task, budget=tiny, **common)
    assert calls == [] and stopped.stopped(Stop.STRUCTURE) and not stopped.feasible
    assert stopped.constraints["memory_bytes"] > 0 and "latency_ms" not in stopped.metrics
    slow = Budget(max_latency_ms=1e-6)
    stopped = run_trial(Plan({"student.width": 0.5}), task, budget=slow, **common)
    assert calls == [] and stopped.constraints["latency_ms"] > 0  # timed, then stopped
    full = run_trial(Plan({"student.width": 0.5}), task, budget=Budget(max_memory_bytes=10**7),
                     **common)
    assert len(calls) == 1 and full.feasible and not full.stopped_at
    assert "accuracy" in full.metrics


def test_the_structure_stage_measures_the_finished_form(task):
    """Gradual pruning and PTQ are applied to the probe, so its size matches the final model's."""
    outputs = TeacherOutputs.of(task.teacher, task.train.x)
    plan = Plan({"prune.ratio": 0.8, "prune.schedule": "cubic", "quantize.bits": 4,
                 "quantize.mode": "ptq"})
    full = run_trial(plan, task, teacher_outputs=outputs, finetune=FinetuneConfig(epochs=2),
                     measure=FAST)
    structure_only = run_trial(plan, task, teacher_outputs=outputs,
                               finetune=FinetuneConfig(epochs=2), measure=FAST,
                               budget=Budget(max_memory_bytes=1))
    assert structure_only.metrics["memory_bytes"] == pytest.approx(full.metrics["memory_bytes"],
                                                                   rel=0.05)


def test_baking_a_copy_leaves_the_original_working(mlp_teacher, digits):
    from autocompress.techniques import prune
    from autocompress.techniques.common import Context

    ctx = Context(teacher=mlp_teacher, train_x=digits.train.x, train_y=digits.train.y,
                  example_input=digits.train.x[:1])
    model = prune.apply(copy.deepcopy(mlp_teacher), Plan({"prune.ratio": 0.5}), ctx)
    bake(copy.deepcopy(model))
    assert model[1].weight.shape == (300, 64)  # torch's own removal would break this


@pytest.fixture(scope="module")
def budget_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("budget")
    config = study_from_dict({
        "name": "budgeted",
        "task": {"dataset": "digits", "teacher": "lenet300", "teacher_epochs": 8},
        "space": "default",
        "measure": {"warmup": 2, "repeats": 5},
        "budget": {"max_memory_bytes": "20kB", "max_accuracy_drop": 3},
        "finetune": {"epochs": 1},
        "trials": 12, "sampler": "random", "seed": 2,
    })
    return out, autocompress.run_study(config, out_dir=out)


def test_a_budget_the_teacher_breaks_leaves_only_feasible_members(budget_study):
    out, outcome = budget_study
    assert outcome.teacher["memory_bytes"] > 20_000  # the teacher breaks it
    trials = pd.read_csv(out / "trials.csv")
    for column in ("feasible", "violations", "stopped_at", "duration_s"):
        assert column in trials.columns
    infeasible = trials[~trials["feasible"] & (trials["state"] == "complete")]
    assert len(infeasible) > 0
    assert infeasible["violations"].str.contains(r"(?:memory_bytes|accuracy) \+").all()
    front = pd.read_csv(out / "pareto.csv")
    assert front["feasible"].all() and (front["memory_bytes"] <= 20_000).all()
    floor = outcome.teacher["accuracy"] - 0.03
    assert (front["accuracy"] >= floor - 1e-9).all()
    assert "latency_noise_ms" in front.columns
    assert set(front["trial"]) <= set(trials["trial"][trials["feasible"]])


def test_stopped_trials_teach_the_sampler_through_optuna_constraints(budget_study):
    import optuna

    out, _ = budget_study
    study = optuna.load_study(study_name="budgeted", storage=folder_storage(out))
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    # Optuna's list form (the one optuna-dashboard reads), in the budget's order (memory_bytes,
    # accuracy); the names and measured values are the trial's "constraints" attribute
    assert all(len(t.constraints) == 2 for t in complete)
    assert all(next(iter(t.constraints.values())) == t.user_attrs["constraints"]["memory_bytes"]
               for t in complete)
    stopped = [t for t in complete if t.user_attrs["stopped_at"] == "structure"]
    assert stopped and all(next(iter(t.constraints.values())) > 0 for t in stopped)
    assert all(t.values[0] == 0.0 for t in stopped)  # worst-case accuracy for the sampler


def test_study_json_records_the_search(budget_study):
    import json

    out, outcome = budget_study
    record = json.loads((out / "study.json").read_text())
    assert record["budget"]["max_memory_bytes"] == 20_000 and record["sampler"] == "random"
    assert record["hypervolume"] == pytest.approx(outcome.front.hypervolume)
    assert len(record["hypervolume_history"]) == 12
    assert np.all(np.diff(record["hypervolume_history"]) >= -1e-12)  # never decreases


def test_best_under_a_tighter_budget(budget_study):
    _, outcome = budget_study
    front = outcome.front
    if not front.members:
        pytest.skip("no feasible member in this small random study")
    smallest = min(m.metrics["memory_bytes"] for m in front)
    pick = front.best(under={"max_memory_bytes": smallest})
    assert pick.metrics["memory_bytes"] == smallest
    assert front.best(under={"max_memory_bytes": 1}) is None
    most_accurate = front.best()
    assert most_accurate.metrics["accuracy"] == max(m.metrics["accuracy"] for m in front)
