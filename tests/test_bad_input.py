"""Bad input, table-driven: every case is one line naming the file (or API call), the field and
what is allowed; the CLI exits 2 with no traceback; no output file is created or changed."""

from __future__ import annotations

import shutil
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import autocompress
from autocompress import cli
from autocompress.config import study_from_dict

BASE = {
    "name": "bad",
    "task": {"dataset": "digits", "teacher": "lenet300", "teacher_epochs": 4},
    "space": "sp.yaml",
    "measure": {"batch_size": 1, "threads": 1, "warmup": 1, "repeats": 3},
    "finetune": {"epochs": 1},
    "trials": 2,
    "sampler": "random",
}
SPACE = {"prune": {"ratio": {"low": 0.0, "high": 0.9}}, "quantize": {"bits": [4, 8]}}


@dataclass
class Case:
    """A study (``study``: fields changed in BASE, or raw text), a space, and the command."""

    id: str
    expect: list[str]
    study: dict | str | None = None
    space: dict | str | None = None
    argv: list[str] = field(default_factory=lambda: ["search", "s.yaml"])
    needs_existing_study: bool = False
    prepare: str = ""


CLI_CASES = [
    # the study file
    Case("study-yaml-syntax", ["s.yaml line 3", "valid study YAML file"],
         study="name: x\ntrials: [1, 2\n"),
    Case("study-missing", ["nowhere.yaml", "missing file"], argv=["search", "nowhere.yaml"]),
    Case("study-unknown-key", ["s.yaml", "trails", "did you mean 'trials'"],
         study={"trails": 3}),
    Case("study-wrong-type", ["s.yaml", "trials: got 'many'", "integer >= 1"],
         study={"trials": "many"}),
    Case("study-unknown-sampler", ["s.yaml", "sampler: got 'nsga3'", "did you mean 'nsga2'"],
         study={"sampler": "nsga3"}),
    Case("study-unknown-backend", ["s.yaml", "backend: got 'dask'", "optuna or ray"],
         study={"backend": "dask"}),
    Case("study-unknown-dataset", ["s.yaml", "task.dataset: got 'cifar'", "mnist5k"],
         study={"task": {"dataset": "cifar"}}),
    Case("study-unknown-teacher", ["s.yaml", "task.teacher: got 'resnet'", "lenet300"],
         study={"task": {"dataset": "digits", "teacher": "resnet"}}),
    Case("study-unknown-objective", ["s.yaml", "objectives.speed", "objectives.latency_ms"],
         study={"objectives": {"accuracy": "max", "speed": "max"}}),
    Case("study-negative-timeout", ["s.yaml", "trial_timeout: got -5", "positive duration"],
         study={"trial_timeout": -5}),
    Case("study-threads-zero", ["s.yaml", "measure.threads: got 0", "integer >= 1"],
         study={"measure": {"threads": 0}}),
    Case("study-missing-checkpoint", ["s.yaml", "task.checkpoint: got 'gone.pt'",
                                      "existing file"],
         study={"task": {"dataset": "digits", "teacher": "lenet300", "checkpoint": "gone.pt"}}),
    Case("study-storage-not-url", ["s.yaml", "storage: got 'study.db'", "SQLAlchemy URL"],
         study={"storage": "study.db"}),
    # the search space file
    Case("space-missing", ["s.yaml", "space: got 'nowhere.yaml'", "existing search space"],
         study={"space": "nowhere.yaml"}),
    Case("space-yaml-syntax", ["sp.yaml line", "valid search space YAML file"],
         space="prune: {ratio: [0.1,\n"),
    Case("space-unknown-key", ["sp.yaml", "prune.ration", "did you mean 'prune.ratio'"],
         space={"prune": {"ration": 0.5}}),
    Case("space-ratio-out-of-range", ["sp.yaml", "prune.ratio", "within [0, 0.99]"],
         space={"prune": {"ratio": {"low": 0.2, "high": 1.5}}}),
    Case("space-bits-not-allowed", ["sp.yaml", "quantize.bits", "{2, 3, 4, 5, 6, 8, 16, 32}"],
         space={"quantize": {"bits": [4, 7]}}),
    Case("space-empty", ["sp.yaml", "empty search space", "at least one technique section"],
         space={}),
    Case("space-contradictory-range", ["sp.yaml", "prune.ratio", "{low, high}"],
         space={"prune": {"ratio": {"low": 0.8, "high": 0.2}}}),
    Case("space-empty-choice", ["sp.yaml", "student.width: got []", "{low, high} within"],
         space={"student": {"width": []}}),
    # the budget
    Case("budget-negative-latency", ["s.yaml", "budget.max_latency_ms", "positive limit"],
         study={"budget": {"max_latency_ms": "-2ms"}}),
    Case("budget-bad-unit", ["s.yaml", "budget.max_memory_bytes: got '100 parsecs'",
                             "100kB"],
         study={"budget": {"max_memory_bytes": "100 parsecs"}}),
    Case("budget-unknown-key", ["s.yaml", "budget.max_latncy_ms",
                                "did you mean 'budget.max_latency_ms'"],
         study={"budget": {"max_latncy_ms": "2ms"}}),
    Case("budget-accuracy-above-one", ["s.yaml", "budget.min_accuracy: got 1.5", "(0, 1]"],
         study={"budget": {"min_accuracy": 1.5}}),
    Case("budget-above-machine-memory", ["s.yaml", "budget.max_peak_memory_bytes",
                                         "available memory"],
         study={"budget": {"max_peak_memory_bytes": "900TB"}}),
    # the command line
    Case("cli-trials-zero", ["command line", "--trials: got 0", "integer >= 1"],
         argv=["search", "s.yaml", "--trials", "0"]),
    Case("cli-jobs-zero", ["command line", "--jobs: got 0", "[1, 64]"],
         argv=["search", "s.yaml", "--jobs", "0"]),
    Case("cli-storage-folder-missing", ["command line: --storage", "/nowhere/at/all/x.db",
                                        "folder exists"],
         argv=["search", "s.yaml", "--storage", "sqlite:////nowhere/at/all/x.db"]),
    Case("cli-storage-unreachable", ["command line: --storage",
                                     "postgresql://nobody@127.0.0.1:9/db",
                                     "opening it failed"],
         argv=["search", "s.yaml", "--storage", "postgresql://nobody@127.0.0.1:9/db"]),
    Case("cli-report-not-a-study", ["empty", "no study.json", "output folder of a search"],
         argv=["report", "empty"], prepare="empty"),
    Case("cli-export-unknown-trial", ["--trial: got 99", "a trial number of this study"],
         argv=["export", "existing", "--trial", "99", "--out", "exported"],
         needs_existing_study=True),
    # what the run meets on disk
    Case("corrupt-teacher-checkpoint", ["teacher.pt: cached teacher", "UnpicklingError",
                                        "delete it and the teacher is trained again"],
         argv=["search", "s.yaml", "--out", "existing"], needs_existing_study=True,
         prepare="corrupt"),
    Case("study-name-clash", ["s.yaml", "budget", "stored with study 'bad'",
                              "another name, --out or --storage"],
         study={"budget": {"max_latency_ms": "5ms"}},
         argv=["search", "s.yaml", "--out", "existing"], needs_existing_study=True),
    Case("study-name-clash-on-the-task", ["s.yaml", "task", "stored with study 'bad'"],
         study={"task": {"dataset": "digits", "teacher": "lenet300", "teacher_epochs": 5}},
         argv=["search", "s.yaml", "--out", "existing"], needs_existing_study=True),
    Case("cli-out-is-a-file", ["--out", "a folder (this is a file)"],
         argv=["search", "s.yaml", "--out", "sp.yaml"]),
]


@pytest.fixture(scope="module")
def existing_study(tmp_path_factory) -> Path:
    """A finished two-trial study to copy into a case's folder."""
    out = tmp_path_factory.mktemp("existing")
    space = out.parent / "sp.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    config = study_from_dict({**BASE, "space": str(space)}, where=str(out.parent / "s.yaml"))
    autocompress.run_study(config, out_dir=out / "existing")
    # fold SQLite's write-ahead log into study.db, so a copy is complete and opening it reads only
    with sqlite3.connect(out / "existing" / "study.db") as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return out / "existing"


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time (SQLite's transient
    -wal/-shm side files left out: they belong to the open connection, not to the outputs)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file() and not p.name.endswith(("-wal", "-shm"))}


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_bad_input_on_the_command_line(case, tmp_path, monkeypatch, capsys, request):
    monkeypatch.chdir(tmp_path)
    if isinstance(case.study, str):
        Path("s.yaml").write_text(case.study)
    else:
        Path("s.yaml").write_text(yaml.safe_dump(_merge(BASE, case.study or {})))
    space = SPACE if case.space is None else case.space
    Path("sp.yaml").write_text(space if isinstance(space, str) else yaml.safe_dump(space))
    if case.needs_existing_study:
        shutil.copytree(request.getfixturevalue("existing_study"), "existing")
    if case.prepare == "empty":
        Path("empty").mkdir()
    if case.prepare == "corrupt":
        Path("existing/teacher.pt").write_bytes(b"not a checkpoint")
    before = snapshot(tmp_path)

    status = cli.main(case.argv)

    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert status == 2, captured.err + captured.out
    assert len(lines) == 1, captured.err
    for part in case.expect:
        assert part in lines[0], f"{part!r} not in {lines[0]!r}"
    assert "Traceback" not in captured.err + captured.out
    assert snapshot(tmp_path) == before  # nothing created, nothing changed
    assert not Path("studies").exists()


def _merge(base: dict, changes: dict) -> dict:
    merged = dict(base)
    for key, value in changes.items():
        merged[key] = {**base[key], **value} if isinstance(base.get(key), dict) and \
            isinstance(value, dict) and key != "task" else value
    return merged


class Broken(nn.Module):
    """Expects 3-channel images: the digits' flat 64-vectors do not fit."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).flatten(1)


API_CASES = [
    ("forward-fails", dict(teacher=Broken()), ["search()", "teacher", "RuntimeError",
                                               "forward accepts the example input"]),
    ("space-mapping", dict(space={"prune": {"ratio": 2}}), ["search(space=...)", "prune.ratio",
                                                            "within [0, 0.99]"]),
    ("unknown-sampler", dict(sampler="bayes"), ["search()", "sampler: got 'bayes'", "nsga2"]),
    ("one-objective", dict(objectives={"accuracy": "max"}), ["search()", "objectives",
                                                             "two or three objectives"]),
    ("unknown-space-name", dict(space="tiny"), ["search()", "space: got 'tiny'",
                                                "existing search space"]),
    ("unknown-runtime", dict(runtime="tensorrt"), ["search()", "runtime: got 'tensorrt'",
                                                   "onnxruntime"]),
]


@pytest.mark.parametrize(("changes", "expect"), [c[1:] for c in API_CASES],
                         ids=[c[0] for c in API_CASES])
def test_bad_input_through_the_python_api(changes, expect, digits, mlp_teacher, tmp_path):
    kwargs = dict(teacher=mlp_teacher, train=(digits.train.x, digits.train.y),
                  val=(digits.val.x, digits.val.y), trials=2, out_dir=tmp_path / "out",
                  progress=lambda _: None)
    kwargs.update(changes)
    with pytest.raises(autocompress.ConfigError) as raised:
        autocompress.search(kwargs.pop("teacher"), **kwargs)
    message = str(raised.value)
    assert "\n" not in message
    for part in expect:
        assert part in message, f"{part!r} not in {message!r}"
    assert not (tmp_path / "out").exists()


def test_the_table_is_as_large_as_promised():
    assert len(CLI_CASES) + len(API_CASES) >= 25
