"""Export: rebuilt from the plan and the kept weights, re-verified, loadable without us."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import autocompress
from autocompress.config import study_from_dict
from autocompress.export import ExportError, export_trial
from autocompress.packing import pack_state_dict, unpack_state_dict


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("exported-study")
    config = study_from_dict({
        "name": "exp", "task": {"dataset": "digits", "teacher": "lenet300", "teacher_epochs": 5},
        "measure": {"warmup": 1, "repeats": 3}, "finetune": {"epochs": 1},
        "trials": 3, "sampler": "random", "seed": 1})
    space = autocompress.SearchSpace.from_dict({
        "student": {"width": {"low": 0.3, "high": 0.9}}, "prune": {"ratio": 0.6},
        "quantize": {"bits": [4, 8], "mode": ["qat", "ptq"]}})
    outcome = autocompress.run_study(config, out_dir=out, space=space)
    data = autocompress.tasks.load_dataset("digits")
    torch.save({"x": data.test.x, "y": data.test.y}, out / "test_split.pt")
    return out, outcome


CHILD = {
    "torchscript": "model = torch.jit.load('model.pt'); logits = model(x)",
    "onnx": ("import onnxruntime as ort; s = ort.InferenceSession('model.onnx'); "
             "logits = torch.from_numpy(s.run(None, {'input': x.numpy()})[0])"),
    # -I leaves the folder off sys.path; a script saved beside the files would have it there
    "state_dict": ("sys.path.insert(0, '.'); from load_model import load_model; "
                   "logits = load_model()(x)"),
}


@pytest.mark.parametrize("fmt", ["torchscript", "onnx", "state_dict"])
def test_exported_model_loads_in_a_fresh_process_and_reproduces_test_accuracy(finished, fmt,
                                                                              tmp_path):
    folder, outcome = finished
    trial = next(r.number for r in outcome.results if r.ok)
    card = export_trial(folder, trial, fmt=fmt, out=tmp_path)
    assert json.loads((tmp_path / "model.json").read_text())["trial"] == trial
    script = (
        "import sys, torch\n"
        f"data = torch.load({str(folder / 'test_split.pt')!r}, weights_only=True)\n"
        "x, y = data['x'], data['y']\n"
        f"{CHILD[fmt]}\n"
        "assert 'autocompress' not in sys.modules\n"
        "print((logits.argmax(1) == y).float().mean().item())\n")
    done = subprocess.run([sys.executable, "-I", "-c", script], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    accuracy = float(done.stdout.strip().splitlines()[-1])
    assert accuracy == pytest.approx(card["recorded"]["test_accuracy"], abs=0.01)


def test_state_dict_export_keeps_weights_at_their_bit_width(finished, tmp_path):
    folder, outcome = finished
    trial = next(r for r in outcome.results if r.ok)
    export_trial(folder, trial.number, fmt="state_dict", out=tmp_path)
    assert (tmp_path / "model.acpk").stat().st_size == pytest.approx(
        trial.metrics["memory_bytes"], rel=0.01)


def test_an_export_that_does_not_reproduce_the_trial_is_refused(finished, tmp_path):
    folder, outcome = finished
    trial = next(r.number for r in outcome.results if r.ok)
    weights = folder / "models" / f"trial_{trial}.acpk"
    original = weights.read_bytes()
    state = unpack_state_dict(original)
    tampered = {k: (torch.zeros_like(v) if k.endswith("weight") else v) for k, v in state.items()}
    weights.write_bytes(pack_state_dict(tampered))
    try:
        with pytest.raises(ExportError, match="differs from the recorded"):
            export_trial(folder, trial, fmt="torchscript", out=tmp_path / "refused")
        assert not (tmp_path / "refused").exists()
        done = subprocess.run([sys.executable, "-m", "autocompress.cli", "export", str(folder),
                               "--trial", str(trial), "--out", str(tmp_path / "cli")],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    finally:
        weights.write_bytes(original)


def test_export_names_a_bad_trial(finished, tmp_path):
    folder, _ = finished
    with pytest.raises(autocompress.ConfigError, match="--trial: got 99"):
        export_trial(folder, 99, out=tmp_path)
