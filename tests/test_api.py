"""The Python API has everything a study file has: budget, fine-tuning, measurement, backend
options, checked by the same code; its studies export from Python; a folder keeps one teacher;
kept weights stay bounded."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import autocompress
from autocompress.errors import ConfigError

SPACE = {"student": {"width": {"low": 0.4, "high": 0.9}}, "quantize": {"bits": [8]}}


def _search(teacher, digits, tmp_path, **kwargs):
    options = {"trials": 3, "seed": 0, "sampler": "random", "space": SPACE,
               "out_dir": tmp_path, "finetune": {"epochs": 1}, "progress": lambda _: None,
               "predictor": False}
    options.update(kwargs)
    return autocompress.search(teacher, train=(digits.train.x, digits.train.y),
                               val=(digits.val.x, digits.val.y),
                               test=(digits.test.x, digits.test.y), **options)


@pytest.fixture(scope="module")
def api_study(mlp_teacher, digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("api")
    outcome = _search(
        mlp_teacher, digits, out,
        budget={"max_memory_bytes": "200kB", "max_accuracy_drop": 5},
        finetune={"epochs": 1, "lr": 5e-4, "batch_size": 32},
        measure={"runtime": "torch", "threads": 1, "repeats": 5, "warmup": 1},
        pruner="median", keep_models="all")
    return out, outcome


def test_search_takes_budget_finetune_and_measure_as_a_study_file_does(api_study):
    out, outcome = api_study
    record = json.loads((out / "study.json").read_text())
    assert record["budget"]["max_memory_bytes"] == 200_000
    assert record["budget"]["max_accuracy_drop"] == 5
    assert record["finetune"]["lr"] == 5e-4 and record["finetune"]["batch_size"] == 32
    assert record["measure"]["runtime"] == "torch" and record["pruner"] == "median"
    assert all(r.metrics["memory_bytes"] <= 200_000 for r in outcome.front.members)
    assert outcome.front.members, "an 8-bit student of this MLP fits 200 kB"


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"budget": {"max_latency_ms": -1}}, "budget.max_latency_ms"),
    ({"finetune": {"lr": "fast"}}, "finetune.lr"),
    ({"measure": {"threads": 1}, "threads": 2}, "measure.threads"),
    ({"sampler": "grid"}, "sampler"),
    ({"keep_models": "some"}, "keep_models"),
    ({"colour": "red"}, "colour"),
    ({"task": {"dataset": "digits"}}, "task"),
])
def test_bad_api_settings_are_one_error_naming_search_and_the_field(
        mlp_teacher, digits, tmp_path, kwargs, field):
    with pytest.raises(ConfigError) as caught:
        _search(mlp_teacher, digits, tmp_path / "out", **kwargs)
    assert caught.value.where == "search()" and caught.value.field == field
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_an_api_study_exports_from_python_and_reloads_in_a_fresh_process(
        api_study, digits, tmp_path, fmt):
    out, outcome = api_study
    best = max(outcome.front.members, key=lambda m: m.metrics["accuracy"]).number
    card = outcome.export(best, format=fmt, path=tmp_path / fmt)
    assert card["trial"] == best and card["format"] == fmt
    x = digits.val.x[:16]
    np.save(tmp_path / "x.npy", x.numpy())
    load = ("import torch; m = torch.jit.load(p)\nprint(m(torch.from_numpy(x)).argmax(1).tolist())"
            if fmt == "torchscript" else
            "import onnxruntime as ort; s = ort.InferenceSession(p)\n"
            "print(s.run(None, {'input': x})[0].argmax(1).tolist())")
    path = tmp_path / fmt / ("model.pt" if fmt == "torchscript" else "model.onnx")
    script = f"import numpy as np\nx = np.load({str(tmp_path / 'x.npy')!r})\np = {str(path)!r}\n"
    fresh = subprocess.run([sys.executable, "-c", script + load], capture_output=True,
                           text=True, check=True)
    model, *_ = autocompress.export.rebuild(out, best, outcome.task)
    with torch.no_grad():
        expected = model(x).argmax(1).tolist()
    assert json.loads(fresh.stdout) == expected


def test_a_study_folder_exports_with_the_users_task_and_refuses_another_teacher(
        api_study, mlp_teacher, digits, tmp_path):
    out, outcome = api_study
    trial = outcome.front.members[0].number
    with pytest.raises(autocompress.AutocompressError, match="came through the Python API"):
        autocompress.export_trial(out, trial, out=tmp_path / "a")
    card = autocompress.export_trial(out, trial, out=tmp_path / "b", task=outcome.task)
    assert (tmp_path / "b" / "model.pt").is_file() and card["trial"] == trial
    other = copy.deepcopy(mlp_teacher)
    with torch.no_grad():
        next(other.parameters()).add_(0.01)
    task = autocompress.Task("custom", other, outcome.task.train, outcome.task.val)
    with pytest.raises(ConfigError, match="teacher"):
        autocompress.export_trial(out, trial, out=tmp_path / "c", task=task)
    assert not (tmp_path / "c").exists()


def test_resuming_a_folder_with_another_teacher_is_refused_and_changes_nothing(
        api_study, mlp_teacher, digits):
    out, _ = api_study
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    other = copy.deepcopy(mlp_teacher)
    with torch.no_grad():
        next(other.parameters()).mul_(1.5)
    with pytest.raises(ConfigError) as caught:
        _search(other, digits, out, trials=4,
                budget={"max_memory_bytes": "200kB", "max_accuracy_drop": 5},
                finetune={"epochs": 1, "lr": 5e-4, "batch_size": 32},
                measure={"runtime": "torch", "threads": 1, "repeats": 5, "warmup": 1},
                pruner="median", keep_models="all")
    assert caught.value.field == "teacher" and "another name, --out or --storage" in str(
        caught.value)
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after.keys() == before.keys()
    assert all(after[name] == before[name] for name in before)


@pytest.mark.parametrize("policy", ["front", "none"])
def test_kept_weights_follow_keep_models(mlp_teacher, digits, tmp_path, policy):
    outcome = _search(mlp_teacher, digits, tmp_path, trials=16, keep_models=policy,
                      space={"student": {"width": {"low": 0.1, "high": 0.9}},
                             "quantize": {"bits": [8]}})
    kept = {int(p.stem.removeprefix("trial_")) for p in (tmp_path / "models").glob("*.acpk")}
    if policy == "none":
        assert kept == set()
        return
    trained = {r.number for r in outcome.results if r.ok}
    last = sorted(r.number for r in outcome.results)[-10:]
    expected = ({m.number for m in outcome.front.members} | set(last)) & trained
    assert kept == expected and len(kept) < len(trained)


UNGUARDED = '''
import torch
import autocompress
print("top level ran")
x, y = torch.randn(64, 8), torch.randint(0, 2, (64,))
def go():
    autocompress.search(torch.nn.Linear(8, 2), train=(x, y), val=(x, y), trials=2, jobs=2,
                        out_dir="out", progress=lambda _: None)
go()
'''


def test_jobs_from_a_script_without_a_main_guard_is_refused_before_any_work(tmp_path):
    """Each spawned worker re-imports the script: unguarded, it would search again and wait
    forever on the study's lock, held by its parent (it used to hang)."""
    (tmp_path / "run.py").write_text(UNGUARDED)
    done = subprocess.run([sys.executable, "run.py"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1 and done.stdout.count("top level ran") == 1  # no worker ran
    assert ("search(): jobs: got 'a call on line 9 of" in done.stderr
            and 'if __name__ == "__main__":' in done.stderr), done.stderr[-2000:]
    assert not (tmp_path / "out").exists()  # nothing written


def test_a_worker_re_importing_an_unguarded_script_leaves_at_once_saying_why(tmp_path):
    """The fallback where the script cannot be read before the workers start: the worker exits
    with its own code and one line, instead of starting the search again."""
    (tmp_path / "run.py").write_text(
        "import multiprocessing\n"
        "from autocompress.backends.parallel import leave_if_reimporting_main\n"
        "leave_if_reimporting_main()\n"
        "print('reached', flush=True)\n"
        "def nothing():\n    pass\n"
        "if __name__ == '__main__':\n"
        "    p = multiprocessing.get_context('spawn').Process(target=nothing)\n"
        "    p.start(); p.join(); print('worker exit code', p.exitcode)\n")
    done = subprocess.run([sys.executable, "run.py"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.stdout.splitlines() == ["reached", "worker exit code 3"], done.stdout
    assert "put it under `if __name__ == \"__main__\":`" in done.stderr
