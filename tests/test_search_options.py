"""Samplers, early stopping, peak memory, shipped spaces and the validate / spaces commands."""

from __future__ import annotations

import subprocess
import sys

import optuna
import pytest

import autocompress
from autocompress.backends.optuna_backend import EarlyStopping, make_sampler
from autocompress.config import PROJECT_ROOT, MeasureConfig, study_from_dict
from autocompress.errors import ConfigError
from autocompress.measure.runtime import deploy
from autocompress.plan import Plan
from autocompress.result import Stop
from autocompress.space import SearchSpace
from autocompress.tasks import Task
from autocompress.trial import TeacherOutputs, measure_structure, run_trial


@pytest.mark.parametrize("name", ["nsga2", "tpe", "random", "qmc"])
def test_samplers_are_seeded(name):
    def params(seed):
        study = optuna.create_study(directions=["maximize", "minimize"],
                                    sampler=make_sampler(name, seed=seed, n_trials=12))
        for _ in range(6):
            trial = study.ask()
            study.tell(trial, (trial.suggest_float("x", 0, 1), trial.suggest_int("k", 0, 9)))
        return [t.params for t in study.trials]

    assert params(3) == params(3)
    assert params(3) != params(4)


def test_auto_sampler_says_what_to_install():
    pytest.importorskip("optuna")
    try:
        import optunahub  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="optunahub"):
            make_sampler("auto", seed=0, n_trials=10)


@pytest.mark.parametrize("kind", ["median", "hyperband"])
def test_early_stopping_prunes_a_trial_far_behind_the_others(kind):
    study = optuna.create_study(directions=["maximize", "minimize"])
    stopper = EarlyStopping(kind, study, epochs=9)

    def run(curve: list[float]) -> bool:
        """Report a curve epoch by epoch as a trial would; True if it was stopped."""
        shadow = stopper.start()
        for epoch, accuracy in enumerate(curve, start=1):
            shadow.report(accuracy, epoch)
            if shadow.should_prune():
                stopper.finish(shadow, curve[:epoch], pruned=True)
                return True
        stopper.finish(shadow, curve, pruned=False)
        return False

    for i in range(12):
        run([0.8 + 0.01 * i + 0.01 * e for e in range(9)])
    assert any(run([0.1] * 9) for _ in range(4))  # far behind: stopped early
    assert not run([0.99] * 9)                     # ahead of everyone: runs to the end


def test_a_study_with_early_stopping_records_pruned_trials(tmp_path):
    config = study_from_dict({
        "name": "early", "task": {"dataset": "digits", "teacher": "lenet300",
                                  "teacher_epochs": 6},
        "space": "default",
        "measure": {"warmup": 1, "repeats": 3}, "finetune": {"epochs": 3},
        "trials": 10, "sampler": "random", "pruner": "median", "seed": 5,
    })
    outcome = autocompress.run_study(config, out_dir=tmp_path)
    pruned = [r for r in outcome.results if r.state == "pruned"]
    assert pruned  # with these seeds, weak trials fall below the median after epoch 1
    for r in pruned:
        assert r.stopped(Stop.EARLY) and r not in outcome.front.members
    assert all(r.state in ("complete", "pruned", "failed") for r in outcome.results)


def test_peak_memory_is_measured_when_asked(mlp_teacher, digits):
    task = Task("digits", mlp_teacher, digits.train, digits.val)
    metrics, measurement = measure_structure(mlp_teacher, task, MeasureConfig(repeats=3),
                                             autocompress.Budget(), need_peak=True)
    assert 1e5 < metrics["peak_memory_bytes"] < 5e8
    assert "VmHWM" in measurement["peak_memory"]
    with_batch = measure_structure(mlp_teacher, task, MeasureConfig(repeats=3, batch_size=512),
                                   autocompress.Budget(), need_peak=True)[0]
    assert with_batch["peak_memory_bytes"] >= metrics["peak_memory_bytes"] * 0.9
    assert deploy(mlp_teacher, "onnxruntime", example_input=digits.train.x[:1], threads=1)


SPACES = sorted(p.stem for p in (PROJECT_ROOT / "search_spaces").glob("*.yaml"))
TRANSFORMER_SPACES = {"vit"}  # for transformer teachers only
CASES = [(space, teacher) for space in SPACES if space not in TRANSFORMER_SPACES
         for teacher in ("mlp_teacher", "cnn_teacher")]
CASES += [(space, "vit_teacher") for space in sorted(TRANSFORMER_SPACES)]


@pytest.mark.parametrize("space_name, teacher_name", CASES)
def test_every_shipped_space_runs_a_trial_on_its_teachers(request, digits, space_name,
                                                          teacher_name):
    teacher = request.getfixturevalue(teacher_name)
    task = Task("digits", teacher, digits.train, digits.val)
    space = SearchSpace.from_yaml(PROJECT_ROOT / "search_spaces" / f"{space_name}.yaml")
    from autocompress.techniques.common import weight_layers

    space = space.for_layers([n for n, _ in weight_layers(teacher)])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=7))
    plan = Plan(space.sample(study.ask()), seed=1)
    result = run_trial(plan, task, teacher_outputs=TeacherOutputs.of(teacher, digits.train.x),
                       finetune=autocompress.config.FinetuneConfig(epochs=1),
                       measure=MeasureConfig(warmup=1, repeats=3))
    assert result.ok, result.reason
    assert result.metrics["accuracy"] > 0.1


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autocompress.cli", *args],
                          capture_output=True, text=True, timeout=300)


def test_spaces_lists_every_shipped_space():
    result = run_cli("spaces")
    assert result.returncode == 0
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert names == SPACES and {"default", "mlp", "cnn", "quantization_only", "pruning_only",
                                "distillation_only"} <= set(names)


def test_validate_prints_space_budget_and_verdicts(tmp_path):
    study = tmp_path / "s.yaml"
    study.write_text(
        "name: v\ntask: {dataset: digits, teacher: lenet300, teacher_epochs: 3}\n"
        "budget: {max_memory_bytes: 100kB, max_latency_ms: 0.5ms, max_accuracy_drop: 1}\n")
    result = run_cli("validate", str(study), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "discrete combinations" in text and "prune.ratio" in text
    assert "stored size <= 100 kB (100000 bytes)" in text and "latency <= 0.5 ms" in text
    assert "teacher:" in text and "over budget: memory_bytes +" in text
    assert "most compressed model of the space" in text


def test_cuda_budget_on_a_cpu_machine_is_refused_up_front(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    config = study_from_dict({"name": "g", "task": {"dataset": "digits"},
                              "budget": {"device": "cuda"}})
    with pytest.raises(ConfigError, match=r"budget\.device: got 'cuda'"):
        autocompress.run_study(config, out_dir=tmp_path)
    assert not any(tmp_path.iterdir())
