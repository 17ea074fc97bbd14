"""Pre-flight: values that cannot apply to the teacher are refused (a user's space) or dropped
with a note (a shipped space) before the first trial, never found trial by trial."""

from __future__ import annotations

import pytest

import autocompress
from autocompress.config import FinetuneConfig
from autocompress.errors import ConfigError
from autocompress.preflight import check_space, extreme_plan, probes
from autocompress.space import SHIPPED, SearchSpace
from autocompress.tasks import Task


def _task(teacher, digits) -> Task:
    return Task("t", teacher, digits.train, digits.val)


def test_probes_cover_both_extremes_and_every_structural_choice():
    space = SearchSpace.from_dict({"student": {"width": {"low": 0.3, "high": 1.0},
                                               "drop_layers": [0, 1]},
                                   "quantize": {"bits": [2, 4, 8]},
                                   "distill": {"alpha": [0.2, 0.8]}})
    tested = [(name, plan.get(name) if name else None) for name, plan in probes(space)]
    assert tested == [(None, None), ("student.width", 0.3), ("student.drop_layers", 1),
                      ("quantize.bits", 2), ("quantize.bits", 4), (None, None)]
    most = extreme_plan(space, most=True)
    assert (most.get("student.width"), most.get("student.drop_layers"),
            most.get("quantize.bits")) == (0.3, 1, 2)


def test_a_users_space_with_a_value_that_cannot_apply_is_refused_in_one_line(
        mlp_teacher, digits):
    space = SearchSpace.from_dict({"student": {"drop_layers": [0, 1, 7]}}, where="mine.yaml")
    with pytest.raises(ConfigError) as caught:
        check_space(space, _task(mlp_teacher, digits), FinetuneConfig(), progress=print)
    error = caught.value
    assert (error.where, error.field, error.got) == ("mine.yaml", "student.drop_layers", 7)
    assert "applies to this teacher" in str(error) and "\n" not in str(error)


def test_a_transformer_section_on_an_mlp_is_refused(mlp_teacher, digits):
    space = SearchSpace.from_dict({"transformer": {"blocks": [1, 2]}}, where="vit-ish.yaml")
    with pytest.raises(ConfigError, match=r"transformer\.blocks"):
        check_space(space, _task(mlp_teacher, digits), FinetuneConfig(), progress=print)


def test_a_shipped_space_drops_what_cannot_apply_and_says_so(mlp_teacher, digits):
    data = {"student": {"drop_layers": [0, 1, 7]}, "quantize": {"bits": [4, 8]}}
    space = SearchSpace.from_dict(data, where=str(SHIPPED / "default.yaml"))
    notes: list[str] = []
    checked = check_space(space, _task(mlp_teacher, digits), FinetuneConfig(),
                          progress=notes.append)
    assert checked.dimensions["student.drop_layers"].values == (0, 1)
    assert checked.dimensions["quantize.bits"].values == (4, 8)
    assert len(notes) == 1 and "student.drop_layers 7 dropped" in notes[0]


def test_a_search_is_refused_before_anything_is_written(mlp_teacher, digits, tmp_path):
    with pytest.raises(ConfigError, match=r"student\.drop_layers"):
        autocompress.search(mlp_teacher, train=(digits.train.x, digits.train.y),
                            val=(digits.val.x, digits.val.y), out_dir=tmp_path / "out",
                            space={"student": {"drop_layers": [0, 9]}}, trials=2,
                            progress=lambda _: None)
    assert not (tmp_path / "out").exists()
