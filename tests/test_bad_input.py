"""Bad input, table-driven: every case is one line naming the file (or API call), the field and
what is allowed; the CLI exits 2 with no traceback; no output file is created or changed."""

from __future__ import annotations

import errno
import os
import shutil
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
    """A study (``study``: fields changed in BASE, or raw text or bytes), a space, a command."""

    id: str
    expect: list[str]
    study: dict | str | bytes | None = None
    space: dict | str | bytes | None = None
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

NAN, INF, SEARCH = float("nan"), float("inf"), ["search", "s.yaml"]
BILLION_LAUGHS = "name: bad\nlol0: &l0 [" + ", ".join(['"lol"'] * 8) + "]\n" + "".join(
    f"lol{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 8)}]\n" for i in range(1, 9))
HOSTILE_CASES = [  # issue 18, round two: encodings, YAML abuse, numbers, flags, paths
    # file encodings and YAML abuse (files.read_yaml)
    Case("study-binary", ["s.yaml", "binary data", "UTF-8"], study=bytes(range(256)) * 4),
    Case("study-utf16", ["s.yaml", "UTF-16 text", "UTF-8"], study="name: bad\n".encode("utf-16")),
    Case("study-utf16-no-bom", ["s.yaml", "UTF-16 text"], study="name: bad\n".encode("utf-16-le")),
    Case("study-latin1", ["s.yaml line 2", "byte 0xe9", "UTF-8"],
         study="trials: 2\nname: caf\xe9\n".encode("latin-1")),
    Case("space-binary", ["sp.yaml", "binary data"], space=b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"),
    Case("space-utf16", ["sp.yaml", "UTF-16 text"], space="prune: {ratio: 0}\n".encode("utf-16")),
    Case("study-over-1-mb", ["s.yaml", "a file of 1100012 bytes", "at most 1000000 bytes"],
         study="name: bad\n#" + "x" * 1_100_000 + "\n"),
    Case("study-nested-5000-deep", ["s.yaml line 2", "nested deeper than 32 levels"],
         study="name: bad\nx: " + "[" * 5000 + "]" * 5000 + "\n"),
    Case("space-nested-deep-blocks", ["sp.yaml", "nested deeper than 32 levels"],
         space="".join(" " * i + "k:\n" for i in range(1000))),
    Case("study-billion-laughs", ["s.yaml line", "more than 10000 values (aliases expanded)"],
         study=BILLION_LAUGHS),
    Case("space-too-many-aliases", ["sp.yaml", "more than 64 aliases"],
         space="x: &x 1\n" + "".join(f"y{i}: *x\n" for i in range(70))),
    Case("study-recursive-alias", ["s.yaml line 2", "alias *a inside its own anchor"],
         study="name: bad\nspace: &a [*a]\n"),
    Case("study-control-character", ["s.yaml line 1", "character U+0007"], study="name: b\x07"),
    Case("study-python-tag", ["s.yaml line 1", "could not determine a constructor"],
         study="name: !!python/object/apply:os.system ['touch pwned']\n"),
    Case("study-5000-digit-integer", ["s.yaml line 2", "integer written with 5000 characters"],
         study="name: bad\nseed: " + "9" * 5000 + "\n"),
    Case("study-past-64-bits", ["the integer 18446744073709551616"], study={"trials": 2**64}),
    Case("study-is-a-folder", ["empty: got 'a folder'"], argv=["search", "empty"], prepare="empty"),
    Case("study-is-a-device", ["/dev/zero", "not a regular file"], argv=["search", "/dev/zero"]),
    Case("study-100k-key-is-cut", ["s.yaml", "xxx...", "one of"], study={"x" * 100_000: 1}),
    Case("study-500k-name-is-cut", ["s.yaml", "name: got 'xxx", "...", "at most 128 characters"],
         study={"name": "x" * 500_000}),
    # numbers: finite and in range where they are read
    Case("budget-inf-latency", ["max_latency_ms: got inf", "a finite time"],
         study={"budget": {"max_latency_ms": INF}}),
    Case("budget-nan-memory", ["max_memory_bytes: got nan", "a finite size"],
         study={"budget": {"max_memory_bytes": NAN}}),
    Case("study-space-name-too-long", ["s.yaml: space: got 'sss", "existing search space"],
         study={"space": "s" * 300}),
    Case("study-checkpoint-name-too-long", ["task.checkpoint: got 'ccc", "an existing file"],
         study={"task": {**BASE["task"], "checkpoint": "c" * 300}}),
    Case("budget-1e400kB", ["budget.max_memory_bytes: got '1e400kB'", "a finite size"],
         study={"budget": {"max_memory_bytes": "1e400kB"}}),
    Case("budget-size-past-64-bits", ["budget.max_memory_bytes: got '1e30TB'", "below 2**63"],
         study={"budget": {"max_memory_bytes": "1e30TB"}}),
    Case("budget-nan-accuracy-drop", ["budget.max_accuracy_drop: got nan", "a finite number"],
         study={"budget": {"max_accuracy_drop": NAN}}),
    Case("budget-drop-over-100-points", ["budget.max_accuracy_drop: got 150", "[0, 100]"],
         study={"budget": {"max_accuracy_drop": 150}}),
    Case("study-seed-2-to-the-32", ["s.yaml: seed: got 4294967296", "<= 4294967295"],
         study={"seed": 2**32}),
    Case("cli-seed-2-to-the-32", ["command line: --seed: got 4294967296", "<= 4294967295"],
         argv=["search", "s.yaml", "--seed", str(2**32)]),
    Case("measure-batch-1e8", ["measure.batch_size: got 100000000", "[1, 65536]"],
         study={"measure": {"batch_size": 100_000_000}}),
    Case("finetune-batch-1e8", ["finetune.batch_size: got 100000000", "[1, 65536]"],
         study={"finetune": {"batch_size": 100_000_000}}),
    Case("budget-threads-5000", ["s.yaml: budget.threads: got 5000, expected an integer in "
                                 "[1, 1024]"],
         study={"budget": {"threads": 5000}}),
    Case("measure-repeats-1e9", ["measure.repeats: got 1000000000", "[1, 100000]"],
         study={"measure": {"repeats": 10**9}}),
    Case("ray-max-concurrent-1e6", ["ray.max_concurrent: got 1000000", "[1, 1024]"],
         study={"ray": {"max_concurrent": 10**6}}),
    Case("finetune-nan-lr", ["finetune.lr: got nan", "finite"], study={"finetune": {"lr": NAN}}),
    Case("study-nan-timeout", ["trial_timeout: got nan", "duration"], study={"trial_timeout": NAN}),
    Case("study-1e400s-timeout", ["trial_timeout: got '1e400s'", "positive duration"],
         study={"trial_timeout": "1e400s"}),
    Case("study-timeout-past-30-days", ["trial_timeout: got 1000000000000", "at most 30 days"],
         study={"trial_timeout": 10**12}),
    Case("cli-trials-1e9", ["command line: --trials: got 1000000000", "[1, 1000000]"],
         argv=["search", "s.yaml", "--trials", "1000000000"]),
    Case("space-nan-step", ["sp.yaml", "prune.ratio.step: got nan", "a finite step > 0"],
         space={"prune": {"ratio": {"low": 0.0, "high": 0.9, "step": NAN}}}),
    Case("space-inf-step", ["sp.yaml", "prune.ratio.step: got inf", "a finite step > 0"],
         space={"prune": {"ratio": {"low": 0.0, "high": 0.9, "step": INF}}}),
    Case("space-step-wider-than-range", ["prune.ratio.step: got 2", "at most high - low (0.5)"],
         space={"prune": {"ratio": {"low": 0.2, "high": 0.7, "step": 2}}}),
    Case("space-fractional-int-step", ["student.drop_layers.step: got 0.5", "integer step"],
         space={"student": {"drop_layers": {"low": 0, "high": 2, "step": 0.5}}}),
    Case("space-inf-high", ["sp.yaml", "prune.ratio: got", "within [0, 0.99]"],
         space={"prune": {"ratio": {"low": 0.0, "high": INF}}}),
    # argparse: one line and a pointer to --help, not the usage block
    Case("cli-no-command", ["autocompress: error", "required: COMMAND", "--help"], argv=[]),
    Case("cli-unknown-command", ["invalid choice: 'serach'", "autocompress --"], argv=["serach"]),
    Case("cli-unknown-flag", ["unrecognized arguments: --trails"], argv=[*SEARCH, "--trails"]),
    Case("cli-not-an-integer", ["argument --trials: invalid int value: 'many'", "search --help"],
         argv=["search", "s.yaml", "--trials", "many"]),
    Case("cli-5000-digit-seed-is-cut", ["argument --seed: invalid int value", "999...'"],
         argv=["search", "s.yaml", "--seed", "9" * 5000]),
    Case("cli-bad-choice", ["argument --backend: invalid choice: 'dask'", "--help"],
         argv=["search", "s.yaml", "--backend", "dask"]),
    Case("cli-study-argument-missing", ["required: STUDY.yaml", "search --help"], argv=["search"]),
    Case("cli-export-trial-missing", ["required: --trial", "autocompress export --help"],
         argv=["export", "s.yaml", "--out", "x"]),
    # flags that conflict, or that the backend would ignore
    Case("cli-address-with-optuna", ["command line: --address: got 'auto'", "--backend optuna"],
         argv=["search", "s.yaml", "--backend", "optuna", "--address", "auto"]),
    Case("cli-max-concurrent-on-optuna", ["--max-concurrent: got 4, expected --backend ray"],
         argv=[*SEARCH, "--max-concurrent", "4"]),
    Case("cli-scheduler-on-optuna", ["--scheduler: got 'fifo'"], argv=[*SEARCH, "--sched", "fifo"]),
    Case("cli-jobs-on-ray", ["--jobs: got 4", "ray backend"],
         argv=["search", "s.yaml", "--backend", "ray", "--jobs", "4"]),
    Case("cli-report-folder-and-out", ["--out: got 'elsewhere'", "STUDY is a folder"],
         argv=["report", "empty", "--out", "elsewhere"], prepare="empty"),
    # output folders that cannot be created or written, refused before the teacher trains
    Case("cli-out-under-proc", ["--out: got '/proc/autocompress-x'", "not under /proc or /sys"],
         argv=["search", "s.yaml", "--out", "/proc/autocompress-x"]),
    Case("cli-out-under-sys", ["--out: got '/sys/autocompress-x'", "not under /proc or /sys"],
         argv=["search", "s.yaml", "--out", "/sys/autocompress-x"]),
    Case("cli-out-below-a-file", ["--out: got 'sp.yaml/out'", "below the file"],
         argv=["search", "s.yaml", "--out", "sp.yaml/out"]),
    Case("cli-out-name-too-long", ["--out", "most 255 bytes"], argv=[*SEARCH, "--out", "n" * 256]),
    Case("cli-out-path-too-long", ["--out", "shorter than 4096 bytes"],
         argv=["search", "s.yaml", "--out", "/".join(["p" * 200] * 25)]),
    Case("cli-out-read-only", ["--out: got 'readonly/out'", "create and write"],
         argv=["search", "s.yaml", "--out", "readonly/out"], prepare="readonly"),
    Case("cli-default-out-below-a-file", ["--out (not given: studies/<name>)", "below the file"],
         prepare="studies-file"),
    Case("validate-out-under-proc", ["--out", "not under /proc or /sys"],
         argv=["validate", "s.yaml", "--out", "/proc/autocompress-x"]),
    Case("export-out-below-a-file", ["--out: got 'sp.yaml/x'", "below the file"],
         argv=["export", "existing", "--trial", "0", "--out", "sp.yaml/x"],
         needs_existing_study=True),
]


@pytest.fixture(scope="module")
def existing_study(tmp_path_factory) -> Path:
    """A finished two-trial study to copy into a case's folder."""
    out = tmp_path_factory.mktemp("existing")
    space = out.parent / "sp.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    config = study_from_dict({**BASE, "space": str(space)}, where=str(out.parent / "s.yaml"))
    autocompress.run_study(config, out_dir=out / "existing")
    return out / "existing"


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time (SQLite's transient
    -wal/-shm side files left out: they belong to the open connection, not to the outputs)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file() and not p.name.endswith(("-wal", "-shm"))}


ALL_CASES = CLI_CASES + HOSTILE_CASES


@pytest.mark.parametrize("case", ALL_CASES, ids=[c.id for c in ALL_CASES])
def test_bad_input_on_the_command_line(case, tmp_path, monkeypatch, capsys, request):
    monkeypatch.chdir(tmp_path)
    _write("s.yaml", case.study if isinstance(case.study, str | bytes)
           else yaml.safe_dump(_merge(BASE, case.study or {})))
    space = SPACE if case.space is None else case.space
    _write("sp.yaml", space if isinstance(space, str | bytes) else yaml.safe_dump(space))
    if case.needs_existing_study:
        shutil.copytree(request.getfixturevalue("existing_study"), "existing")
    if case.prepare == "empty":
        Path("empty").mkdir()
    if case.prepare == "corrupt":
        Path("existing/teacher.pt").write_bytes(b"not a checkpoint")
    if case.prepare == "studies-file":
        Path("studies").write_text("a file where the default output folder would go\n")
    if case.prepare == "readonly":
        Path("readonly").mkdir()
        Path("readonly").chmod(0o555)
        if os.geteuid() == 0:  # root writes through permissions: make the probe meet EROFS
            monkeypatch.setattr("autocompress.files.tempfile.mkdtemp", _read_only_file_system)
    had_studies = Path("studies").exists()
    before = snapshot(tmp_path)

    status = cli.main(case.argv)

    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert status == 2, captured.err + captured.out
    assert len(lines) == 1, captured.err
    assert len(lines[0]) < 600, lines[0][:600]  # a hostile value is cut, never echoed whole
    for part in case.expect:
        assert part in lines[0], f"{part!r} not in {lines[0]!r}"
    assert "Traceback" not in captured.err + captured.out
    assert snapshot(tmp_path) == before  # nothing created, nothing changed
    assert Path("studies").exists() == had_studies
    assert not Path("pwned").exists()


def _write(name: str, content: str | bytes) -> None:
    Path(name).write_bytes(content if isinstance(content, bytes) else content.encode())


def _read_only_file_system(*args: object, **kwargs: object) -> str:
    raise OSError(errno.EROFS, os.strerror(errno.EROFS))


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
    ("seed-2-to-the-32", dict(seed=2**32), ["search()", "seed: got 4294967296", "4294967295"]),
    ("nan-timeout", dict(trial_timeout=float("nan")), ["search()", "trial_timeout: got nan"]),
    ("batch-1e8", dict(batch_size=10**8), ["search()", "measure.batch_size", "[1, 65536]"]),
    ("space-nan-step", dict(space={"prune": {"ratio": {"low": 0.0, "high": 0.5,
                                                       "step": float("nan")}}}),
     ["search(space=...)", "prune.ratio.step: got nan"]),
    ("huge-value-is-cut", dict(sampler="s" * 1_000_000), ["search()", "sampler: got 'sss",
                                                          "..."]),
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
    assert len(HOSTILE_CASES) >= 30  # issue 18, round two
