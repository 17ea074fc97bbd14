"""The teacher of a built-in task: trained once per study folder and cached beside the study
(``teacher.pt``, with its recipe in ``teacher.json``), or loaded from ``task.checkpoint``."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from autocompress.config import StudyConfig
from autocompress.errors import ConfigError
from autocompress.files import write_atomic
from autocompress.tasks import TEACHERS, Task, load_dataset

TEACHER_SEED = 0  # one teacher per task, whatever the study's seed


def _quiet(_: str) -> None:
    pass


def builtin_task(config: StudyConfig, out_dir: Path,
                 progress: Callable[[str], None] = _quiet) -> Task:
    """The task a study file names, its teacher loaded from ``teacher.pt`` or trained and cached."""
    from autocompress.techniques.training import fit

    spec = config.task
    data = load_dataset(spec.dataset)
    torch.manual_seed(TEACHER_SEED)
    teacher = TEACHERS[spec.teacher](data.input_shape, data.num_classes)
    weights, card = out_dir / "teacher.pt", out_dir / "teacher.json"
    recipe = {
        "dataset": spec.dataset, "teacher": spec.teacher, "teacher_epochs": spec.teacher_epochs
    }
    cached = weights.is_file() and card.is_file()
    if spec.checkpoint:
        load_weights(teacher, Path(spec.checkpoint), where=config.source, field="task.checkpoint")
        progress(f"teacher {spec.teacher}: weights from {spec.checkpoint}")
    elif cached and json.loads(card.read_text()).get("recipe") == recipe:
        load_weights(teacher, weights, where=str(weights), field="cached teacher")
        progress(f"teacher {spec.teacher}: loaded from {weights}")
    else:
        progress(f"teacher {spec.teacher}: training on {spec.dataset} "
                 f"({len(data.train)} images, {spec.teacher_epochs} epochs) ...")
        started = time.perf_counter()
        fit(teacher, data.train.x, data.train.y, epochs=spec.teacher_epochs,
            lr=1e-3, batch_size=64, seed=TEACHER_SEED)
        buffer = io.BytesIO()
        torch.save(teacher.state_dict(), buffer)
        write_atomic(weights, buffer.getvalue())
        write_atomic(card, json.dumps({"recipe": recipe}))  # metrics follow once measured
        progress(f"teacher {spec.teacher}: trained in {time.perf_counter() - started:.1f} s")
    teacher.eval()
    return Task(f"{spec.dataset}/{spec.teacher}", teacher, data.train, data.val, data.test,
                preprocessing=data.preprocessing)


def load_weights(model: nn.Module, path: Path, *, where: str, field: str) -> None:
    """``torch.load(weights_only=True)`` into ``model``; a corrupt or mismatched file is one
    ConfigError line (a cached teacher.pt is retrained once deleted)."""
    try:
        model.load_state_dict(torch.load(path, weights_only=True, map_location="cpu"))
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        fix = "; delete it and the teacher is trained again" if field == "cached teacher" else ""
        raise ConfigError(where, field, f"{path}: {type(exc).__name__}: {detail}",
                          f"a state_dict of the teacher's architecture saved with "
                          f"torch.save{fix}") from None
