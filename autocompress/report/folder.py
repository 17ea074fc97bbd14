"""Reading a study's output folder: ``study.json`` and ``teacher.json`` checked, one line each.

``autocompress report`` and ``export`` read folders people copy, move, edit and truncate: a
damaged file is reported (where, what, what was expected) and never modified.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from autocompress.errors import ConfigError

FOLDER = "the output folder of a search (studies/<name>/)"


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(str(path.parent), None, f"no {path.name}", FOLDER)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        reason = type(exc).__name__ if not str(exc) else str(exc).splitlines()[0][:40]
        raise ConfigError(str(path), None, f"a damaged file ({reason})",
                          f"{what}, as a search writes it") from None
    if not isinstance(data, dict):
        raise ConfigError(str(path), None, type(data).__name__, f"{what}: a JSON object")
    return data


def read_study_record(folder: str | Path) -> dict[str, Any]:
    """``study.json`` of ``folder``, with the fields report and export read checked."""
    path = Path(folder) / "study.json"
    record = _read_json(path, "the study's record")
    if not isinstance(record.get("name"), str) or not record["name"]:
        raise ConfigError(str(path), "name", record.get("name"), "the study's name")
    objectives = record.get("objectives")
    if not isinstance(objectives, dict) or not objectives or \
            not all(v in ("min", "max") for v in objectives.values()):
        raise ConfigError(str(path), "objectives", objectives,
                          "a mapping of metric to min or max")
    for key in ("budget", "task"):
        if record.get(key) is not None and not isinstance(record[key], dict):
            raise ConfigError(str(path), key, record[key], "a mapping or null")
    return record


def read_teacher_card(folder: str | Path) -> dict[str, float]:
    """The teacher's measured figures (numbers only) from ``teacher.json``."""
    card = _read_json(Path(folder) / "teacher.json", "the teacher's figures")
    return {k: v for k, v in card.items() if isinstance(v, int | float)
            and not isinstance(v, bool)}
