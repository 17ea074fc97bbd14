"""The command line as a user meets it: real processes, real exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "autocompress.cli", *args],
        capture_output=True, text=True, cwd=cwd, timeout=120,
    )


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "missing file"),
        ("name: x\ntrials: [1, 2\n", "line"),
        ("name: x\ntrails: 3\n", "did you mean 'trials'"),
        ("name: x\nspace: nowhere.yaml\n", "space: got 'nowhere.yaml'"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(tmp_path, content, expected):
    study = tmp_path / "study.yaml"
    if content is not None:
        study.write_text(content)
    result = run_cli("search", str(study), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and str(study) in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_bad_flag_value_is_refused():
    result = run_cli("search", "studies/quickstart.yaml", "--trials", "0")
    assert result.returncode == 2 and "--trials: got 0" in result.stderr


def test_help_explains_every_option():
    top = run_cli("--help")
    assert top.returncode == 0 and "search" in top.stdout
    sub = run_cli("search", "--help")
    for option in ("--trials", "--seed", "--out", "STUDY.yaml"):
        assert option in sub.stdout


def test_every_commands_help_prints_as_written(capsys):
    """Each command's --help, in-process: exit 0, and no format escapes left showing (argparse
    formats help strings but not descriptions, so a literal "%%" in a description shows)."""
    from autocompress import cli

    commands = cli._parser()._subparsers._group_actions[0].choices
    assert {"search", "validate", "report", "export", "spaces"} <= set(commands)
    for command in commands:
        with pytest.raises(SystemExit) as done:
            cli.main([command, "--help"])
        out = capsys.readouterr().out
        assert done.value.code == 0 and f"usage: autocompress {command}" in out
        assert "%%" not in out and "%(" not in out, (command, out)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--seed", "-1"], "command line: --seed: got -1, expected an integer >= 0"),
        (["--jobs", "65"], "command line: --jobs: got 65, expected an integer in [1, 64]"),
        (["--max-concurrent", "0"], "command line: --max-concurrent: got 0, expected an integer"),
        (["--storage", "study.db"], "command line: --storage: got 'study.db', expected a "
                                    "SQLAlchemy URL"),
    ],
)
def test_each_override_flag_is_checked_by_the_study_validator(flags, expected, tmp_path, capsys):
    """The flags go through StudyConfig.with_overrides (the study file's checks); the error
    names the flag, on one line, before anything is written."""
    from autocompress import cli
    from autocompress.config import PROJECT_ROOT

    status = cli.main(["search", str(PROJECT_ROOT / "studies" / "quickstart.yaml"), *flags,
                       "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "out").exists()
