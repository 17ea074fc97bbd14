"""The caps of issue 18 refuse the hostile and keep the ordinary: what a real study or space
file does (anchors, a byte-order mark, a few levels) still loads; errors stay short."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from autocompress import cli
from autocompress.config import PROJECT_ROOT, load_study
from autocompress.errors import EXCERPT, ConfigError
from autocompress.files import MAX_ALIASES, MAX_DEPTH, check_output_folder, read_yaml
from autocompress.space import SearchSpace


@pytest.mark.parametrize("path", sorted([*PROJECT_ROOT.glob("studies/*.yaml"),
                                         *PROJECT_ROOT.glob("search_spaces/*.yaml")]),
                         ids=lambda p: p.name)
def test_every_shipped_file_is_well_inside_the_caps(path):
    assert read_yaml(path, what="file") is not None


def test_shipped_study_and_space_still_load():
    assert load_study(PROJECT_ROOT / "studies" / "quickstart.yaml").name == "quickstart"
    assert SearchSpace.from_yaml(PROJECT_ROOT / "search_spaces" / "default.yaml").searched


def test_anchors_a_bom_and_the_deepest_allowed_nesting_load(tmp_path):
    shared = tmp_path / "shared.yaml"
    shared.write_bytes(b"\xef\xbb\xbfbase: &b {epochs: 1}\n"
                       + b"".join(b"s%d: *b\n" % i for i in range(MAX_ALIASES)))
    data = read_yaml(shared, what="file")
    assert data["s0"] == {"epochs": 1} and len(data) == MAX_ALIASES + 1
    deep = tmp_path / "deep.yaml"
    deep.write_text("[" * (MAX_DEPTH - 1) + "1" + "]" * (MAX_DEPTH - 1) + "\n")
    assert read_yaml(deep, what="file") is not None
    deep.write_text("[" * MAX_DEPTH + "1" + "]" * MAX_DEPTH + "\n")
    with pytest.raises(ConfigError, match="nested deeper than"):
        read_yaml(deep, what="file")


def test_an_alias_reaching_past_the_depth_cap_is_refused(tmp_path):
    """Each half is shallow; the alias puts one inside the other."""
    half = MAX_DEPTH // 2 + 1
    path = tmp_path / "s.yaml"
    path.write_text(f"a: &a {'[' * half}1{']' * half}\nb: {'[' * half}*a{']' * half}\n")
    with pytest.raises(ConfigError, match="nested deeper than"):
        read_yaml(path, what="file")


@pytest.mark.parametrize("value", ["x" * 1_000_000, list(range(100_000)), 10**5000,
                                   {str(i): i for i in range(10_000)}],
                         ids=["string", "list", "5000-digit-int", "mapping"])
def test_a_config_error_shows_an_excerpt_of_any_value(value):
    message = str(ConfigError("s.yaml", "field", value, "something small"))
    assert "\n" not in message and len(message) < EXCERPT + 60


def test_a_self_containing_value_is_shown_without_recursing():
    loop: list = []
    loop.append(loop)
    assert "got [[[[...]]]]" in str(ConfigError("w", "f", loop, "x"))


def test_a_writable_output_folder_passes_and_nothing_is_left(tmp_path):
    target = tmp_path / "new" / "deeper"
    assert check_output_folder(target, where="w") == target
    assert list(tmp_path.iterdir()) == []  # the probe is gone; no folder made


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through file permissions")
def test_a_read_only_folder_is_refused(tmp_path):
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(ConfigError, match="create and write"):
            check_output_folder(tmp_path / "out", where="w")
    finally:
        tmp_path.chmod(0o755)


def test_help_and_version_are_not_errors(capsys):
    with pytest.raises(SystemExit) as raised:
        cli.main(["search", "--help"])
    assert raised.value.code == 0 and "--out" in capsys.readouterr().out


def test_address_alone_still_means_ray(tmp_path, monkeypatch, capsys):
    """--address implies --backend ray: accepted, and --max-concurrent with it too (the run is
    stopped at the output-folder check, before anything starts)."""
    monkeypatch.chdir(tmp_path)
    Path("s.yaml").write_text("name: s\n")
    Path("file").write_text("")
    status = cli.main(["search", "s.yaml", "--address", "auto", "--max-concurrent", "2",
                       "--out", "file"])
    assert status == 2 and "--out: got 'file'" in capsys.readouterr().err


def test_a_study_path_past_the_file_system_limits_is_one_short_line(capsys):
    status = cli.main(["search", "/" + "p" * 5000 + "/s.yaml"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and len(err[0]) < 300, err
    assert "File name too long" in err[0] and "/s.yaml" in err[0]
