"""A language-model trial written as a Hugging Face model folder, rebuilt and re-verified.

The search keeps each trial's packed model (``models/trial_N.acpk``: bit-packed codes, scales,
masks). Export cuts the teacher again as the trial did (the same layers, heads and neurons,
chosen on the same calibration text), loads the packed weights into that structure (their
values on the trial's grid, as float32), measures validation and test perplexity again in the
study's runtime, and refuses, writing nothing, when either differs from the recorded value by
more than :data:`TOLERANCE`. Then ``save_pretrained`` (safetensors, the cut model's config) and
the tokenizer where the task has one: ``AutoModelForCausalLM.from_pretrained(folder)`` loads it.
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from autocompress.config import MeasureConfig
from autocompress.errors import ConfigError, ExportError
from autocompress.files import write_atomic
from autocompress.llm import store
from autocompress.llm.task import LMTask
from autocompress.llm.trial import cut, quality
from autocompress.result import TrialResult

LM_FORMATS = ("hf",)
TOLERANCE = 1e-3  # relative difference of perplexity allowed between the search and the export


def rebuild_lm(result: TrialResult, weights: Path, task: LMTask) -> torch.nn.Module:
    """The trial's model: the teacher cut as ``result.plan`` says, with the kept weights."""
    model = copy.deepcopy(task.teacher)
    torch.manual_seed(result.plan.seed)
    cut(model, result.plan, task.calibration)
    try:
        store.load(model, weights.read_bytes())
    except Exception as exc:  # a truncated or edited file: said, never a traceback
        detail = str(exc).strip().splitlines()[0][:80] if str(exc).strip() else ""
        raise ConfigError(str(weights), None, f"a damaged file ({type(exc).__name__}: {detail})",
                          "the packed model the search kept for this trial") from None
    return model.eval()


def export_lm_trial(result: TrialResult, weights: Path, task: LMTask, record: dict, *,
                    trial: int, fmt: str, out: Path) -> dict[str, Any]:
    """Rebuild, re-verify and write trial ``trial``; returns the side-card (``model.json``)."""
    if fmt not in LM_FORMATS:
        raise ConfigError("command line", "--format", fmt,
                          "hf for a language model (a Hugging Face folder: save_pretrained)")
    model = rebuild_lm(result, weights, task)
    measure = MeasureConfig(**record.get("measure", {}))
    metrics, measurement = quality(model, task, measure)
    recorded = dict(result.metrics)
    for name in ("perplexity", "test_perplexity"):
        if name not in recorded:
            continue
        again, then = metrics.get(name, float("nan")), recorded[name]
        if not abs(again - then) <= TOLERANCE * abs(then):
            raise ExportError(f"trial {trial}: rebuilt model's {name} {again:.4f} differs from "
                              f"the recorded {then:.4f} by more than {TOLERANCE:.1%} (nothing "
                              f"written)")
    card: dict[str, Any] = {
        "study": record["name"], "trial": trial, "format": fmt,
        "choices": dict(result.plan.choices), "recorded": recorded, "remeasured": metrics,
        "measurement": measurement,
        "weights": "float32 values of the trial's stored model (its quantization grid and "
                   "zeros); the packed form is the study's models/trial_N.acpk",
        "runtime": measure.runtime,
        "load": f"from transformers import AutoModelForCausalLM; model = "
                f"AutoModelForCausalLM.from_pretrained({str(out)!r})",
        "versions": {"torch": torch.__version__,
                     "autocompress": __import__("autocompress").__version__},
    }
    with tempfile.TemporaryDirectory() as tmp:  # files are written only once checks passed
        model.save_pretrained(tmp, safe_serialization=True)
        if task.tokenizer is not None and hasattr(task.tokenizer, "save_pretrained"):
            task.tokenizer.save_pretrained(tmp)
        for path in sorted(Path(tmp).rglob("*")):
            if path.is_file():
                write_atomic(out / path.relative_to(tmp), path.read_bytes())
    write_atomic(out / "model.json", json.dumps(card, indent=2, default=str))
    return card
