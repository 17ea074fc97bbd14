"""``autocompress export``: a front member as a file people can ship, re-verified first.

The compressed structure of trial N is rebuilt from its recorded plan and seed (student,
structured pruning, quantization formats are deterministic given the teacher), the weights the
trial finished with are loaded from ``models/trial_N.acpk`` (its packed stored form, kept by the
search), and accuracy, latency and stored size are measured again. If the validation accuracy
differs from the recorded one by more than :data:`TOLERANCE`, nothing is written.

Formats: ``torchscript`` (``model.pt``, loads with torch alone), ``onnx`` (``model.onnx``, int8
where the trial ran int8; loads with onnxruntime), ``state_dict`` (``model.acpk``: the packed
stored form, weights at their bit width, with ``acpk.py`` to unpack it and ``load_model.py`` to
rebuild the network; needs torch and numpy). Each comes with ``model.json``: choices, metrics,
versions, input shape, and the loading code.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autocompress import fingerprint, packing
from autocompress.backends.record import load_results
from autocompress.backends.storage import load_recorded_study
from autocompress.config import FinetuneConfig, MeasureConfig, study_from_dict
from autocompress.errors import ConfigError, ExportError
from autocompress.files import write_atomic
from autocompress.measure import pack_model
from autocompress.measure.runtime import export_onnx, int8_ready, quantize_int8
from autocompress.plan import Plan
from autocompress.report.folder import read_study_record
from autocompress.tasks import Task
from autocompress.tasks.teacher import builtin_task
from autocompress.techniques.common import bake
from autocompress.trial import build_compressed, final_form, make_context, measure_model

FORMATS = ("torchscript", "onnx", "state_dict")
TOLERANCE = 0.005  # validation accuracy, as a share: half a point
API_TEACHER = ("this study's teacher came through the Python API: export it there "
               "(outcome.export(...), or autocompress.export_trial(folder, trial, "
               "task=...) with the same teacher and data)")

_LOADER = '''"""Rebuild the exported network and load its packed weights (needs torch and numpy)."""
import json
from pathlib import Path

import torch
from torch import nn

from acpk import unpack_state_dict

HERE = Path(__file__).resolve().parent


def build(layers):
    made = []
    for spec in layers:
        kind, args = spec["type"], spec.get("args", {})
        made.append(getattr(nn, kind)(**args))
    return nn.Sequential(*made)


def load_model():
    card = json.loads((HERE / "model.json").read_text())
    model = build(card["architecture"])
    model.load_state_dict(unpack_state_dict((HERE / "model.acpk").read_bytes()))
    return model.eval()
'''


def describe_layers(model: nn.Module) -> list[dict[str, Any]]:
    """A flat nn.Sequential as a list of constructor calls (for the state_dict loader)."""
    if not isinstance(model, nn.Sequential):
        raise ExportError("state_dict export needs a flat nn.Sequential; use torchscript or onnx")
    layers = []
    for module in model:
        if isinstance(module, nn.Linear):
            args = {"in_features": module.in_features, "out_features": module.out_features,
                    "bias": module.bias is not None}
        elif isinstance(module, nn.Conv2d):
            args = {"in_channels": module.in_channels, "out_channels": module.out_channels,
                    "kernel_size": list(module.kernel_size), "stride": list(module.stride),
                    "padding": list(module.padding), "bias": module.bias is not None}
        elif isinstance(module, nn.MaxPool2d | nn.AvgPool2d):
            args = {"kernel_size": module.kernel_size, "stride": module.stride}
        elif isinstance(module, nn.ReLU | nn.Flatten | nn.Identity | nn.Tanh | nn.Sigmoid):
            args = {}
        else:
            raise ExportError(f"state_dict export cannot describe {type(module).__name__}; "
                              "use torchscript or onnx")
        layers.append({"type": type(module).__name__, "args": args})
    return layers


def rebuild(folder: Path, trial_number: int, task: Task | None = None
            ) -> tuple[nn.Module, Task, dict, dict]:
    """(model with the trial's weights, task, recorded metrics, study record). A study run
    through the Python API needs its ``task`` (same teacher and data: checked)."""
    record = read_study_record(folder)
    if not record.get("task") and task is None:
        raise ExportError(API_TEACHER)
    study, result, weights = _kept_trial(folder, record, trial_number)
    if task is None:
        config = study_from_dict({"name": record["name"], "task": record["task"],
                                  "finetune": record.get("finetune"),
                                  "measure": record.get("measure")}, where=str(folder))
        task = builtin_task(config, folder)
    else:
        _check_same_task(study, task)
    plan = result.plan
    ctx = make_context(task, None, FinetuneConfig(**record.get("finetune", {})))
    model = final_form(build_compressed(plan, ctx), ctx)
    model = bake(model) if any(hasattr(m, "parametrizations") for m in model.modules()) else model
    try:
        model.load_state_dict(packing.unpack_state_dict(weights.read_bytes()))
    except Exception as exc:  # a truncated or edited file: said, never a traceback
        detail = str(exc).strip().splitlines()[0][:80] if str(exc).strip() else ""
        raise ConfigError(str(weights), None, f"a damaged file ({type(exc).__name__}: "
                                              f"{detail})",
                          "the packed weights the search kept for this trial") from None
    return model.eval(), task, dict(result.metrics), record


def _kept_trial(folder: Path, record: dict, trial_number: int) -> tuple[Any, Any, Path]:
    """(study, the trial's result, its kept weights file), or one line saying why not."""
    study = load_recorded_study(folder, record)
    results = {r.number: r for r in load_results(study)}
    if trial_number not in results:
        raise ConfigError(str(folder), "--trial", trial_number,
                          f"a trial number of this study (0..{len(study.trials) - 1})")
    result = results[trial_number]
    weights = folder / "models" / f"trial_{trial_number}.acpk"
    if not result.ok:
        raise ConfigError(str(folder), "--trial", trial_number,
                          "a trial that finished training (see trials.csv: state complete, "
                          "not stopped)")
    if not weights.is_file():
        raise ConfigError(str(folder), "--trial", trial_number,
                          "a trial whose weights were kept (keep_models: front keeps the "
                          "front's and the last trials'; all keeps every trial's)")
    return study, result, weights


def _export_lm(folder: Path, record: dict, trial: int, fmt: str, out: Path,
               task: Any) -> dict[str, Any]:
    """A causal-LM study's trial: :mod:`autocompress.llm.export`."""
    from autocompress.llm.export import export_lm_trial
    from autocompress.llm.task import builtin_lm_task

    study, result, weights = _kept_trial(folder, record, trial)
    if task is None:
        config = study_from_dict({"name": record["name"], "task": record["task"],
                                  "measure": record.get("measure")}, where=str(folder))
        task = builtin_lm_task(config, lambda _: None)
    else:
        _check_same_task(study, task)
    return export_lm_trial(result, weights, task, record, trial=trial, fmt=fmt, out=out)


def export_trial(folder: str | Path, trial: int, *, fmt: str = "torchscript",
                 out: str | Path, task: Task | None = None) -> dict[str, Any]:
    """Rebuild, re-verify and write trial ``trial`` of the study in ``folder``; the side-card.

    ``task``: for a study run through the Python API, the same teacher and data as then."""
    folder, out = Path(folder), Path(out)
    record = read_study_record(folder)
    recorded_task = record.get("task")
    if not recorded_task and task is None:  # before the format: hf is fine for an API LM study
        raise ExportError(API_TEACHER)
    if getattr(task, "kind", None) == "causal_lm" or (
            isinstance(recorded_task, dict) and recorded_task.get("kind") == "causal_lm"):
        return _export_lm(folder, record, trial, fmt, out, task)
    if fmt not in FORMATS:
        raise ConfigError("command line", "--format", fmt, "one of " + ", ".join(FORMATS)
                          + " (hf: language models)")
    model, task, recorded, record = rebuild(folder, trial, task)
    measure = MeasureConfig(**record.get("measure", {}))
    metrics, measurement = measure_model(model, task, measure)
    for name in ("accuracy", "test_accuracy"):
        if name not in recorded and name != "accuracy":
            continue
        drift = abs(metrics.get(name, float("nan")) - recorded.get(name, float("nan")))
        if not drift <= TOLERANCE:
            raise ExportError(
                f"trial {trial}: rebuilt model's {name} {metrics.get(name, float('nan')):.4f} "
                f"differs from the recorded {recorded.get(name, float('nan')):.4f} by more than "
                f"{TOLERANCE} (nothing written)")
    example = task.example_input  # files are written only once every check passed
    card: dict[str, Any] = {
        "study": record["name"], "trial": trial, "format": fmt,
        "choices": dict(Plan.from_dict(_plan_of(folder, record, trial)).choices),
        "input_shape": [None, *example.shape[1:]],
        "preprocessing": task.preprocessing,
        "recorded": recorded, "remeasured": metrics, "measurement": measurement,
        "versions": {"torch": torch.__version__, "autocompress": __import__("autocompress")
                     .__version__},
    }
    if fmt == "torchscript":
        buffer = io.BytesIO()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.jit.save(torch.jit.trace(model, example[:1]), buffer)
        write_atomic(out / "model.pt", buffer.getvalue())
        card["load"] = "import torch; model = torch.jit.load('model.pt')"
    elif fmt == "onnx":
        onnx_model = export_onnx(model, example)
        card["onnx_int8"] = False
        if int8_ready(model):  # int8 kernels where they agree with the model, else float
            int8_model = quantize_int8(onnx_model, model, task.train.x[:256])
            try:
                _check_onnx(int8_model, model, task.val.x[:256], True)
                onnx_model, card["onnx_int8"] = int8_model, True
            except ExportError as exc:
                card["onnx_int8_refused"] = str(exc).split(";")[0] + " in int8: written float"
        card["load"] = ("import onnxruntime as ort; session = ort.InferenceSession('model.onnx'); "
                        "logits = session.run(None, {'input': x})[0]  "
                        + ("# x: int64 numpy, " + ", ".join(task.input_keys)
                           + " stacked on axis 1" if task.input_keys
                           else "# x: float32 numpy"))
        _check_onnx(onnx_model, model, task.val.x[:256], card["onnx_int8"])  # before writing
        write_atomic(out / "model.onnx", onnx_model)
    else:
        card["architecture"] = describe_layers(model)
        write_atomic(out / "model.acpk", pack_model(model))
        write_atomic(out / "acpk.py", Path(packing.__file__).read_text())
        write_atomic(out / "load_model.py", _LOADER)
        card["load"] = "from load_model import load_model; model = load_model()"
    write_atomic(out / "model.json", json.dumps(card, indent=2, default=str))
    return card


def _check_same_task(study: Any, task: Task) -> None:
    """The task given for an API study must be the one its trials ran with."""
    stored = study.user_attrs.get("settings", {})
    given = {"teacher": fingerprint.of_model(task.teacher)}
    for key, value in given.items():
        if key in stored and stored[key] != value:
            raise ConfigError("export", key, value,
                              f"the {key} the study ran with (fingerprint {stored[key]})")


def _plan_of(folder: Path, record: dict, trial: int) -> dict:
    study = load_recorded_study(folder, record)
    return study.trials[trial].user_attrs["plan"]


def _check_onnx(onnx_model: bytes, model: nn.Module, inputs: torch.Tensor, int8: bool) -> None:
    """The file to write must run in onnxruntime and match the model: to 1e-3 in float, on at
    least 97% of predictions in int8 (whose activations are quantized too)."""
    import onnxruntime as ort

    written = ort.InferenceSession(onnx_model, providers=["CPUExecutionProvider"])
    got = torch.from_numpy(written.run(None, {"input": inputs.numpy()})[0])
    with torch.no_grad():
        want = model(inputs)
    if int8:
        ok = float((got.argmax(1) == want.argmax(1)).float().mean()) >= 0.97
    else:
        ok = torch.allclose(got, want, atol=1e-3)
    if not ok:
        raise ExportError("the ONNX file's outputs do not match the model in onnxruntime; "
                          "use --format torchscript, which runs the same kernels as torch")
