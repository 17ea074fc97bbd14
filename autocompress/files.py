"""Reading the user's YAML and writing our outputs, with errors a person can act on."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import yaml

from autocompress.errors import ConfigError


def read_yaml(path: str | Path, *, what: str) -> object:
    """``yaml.safe_load`` of a file; a missing file or bad YAML is one ConfigError line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), None, "missing file", f"an existing {what}")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}{at}", None, problem, f"a valid {what}") from None


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write to a temporary file beside ``path``, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            handle.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide outputs from other readers
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
