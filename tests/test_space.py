from __future__ import annotations

import optuna
import pytest

from autocompress.config import PROJECT_ROOT
from autocompress.errors import ConfigError
from autocompress.space import SearchSpace


def test_default_space_searches_all_three_techniques():
    space = SearchSpace.from_yaml(PROJECT_ROOT / "search_spaces" / "default.yaml")
    assert {"student.width", "prune.ratio", "quantize.bits"} <= set(space.searched)
    assert {2, 4, 8, 32} <= set(space.dimensions["quantize.bits"].values)
    assert {"prune.kind", "prune.criterion", "student.drop_layers", "quantize.scheme",
            "quantize.mode", "distill.feature_weight"} <= set(space.searched)


def test_sampling_with_a_real_optuna_trial_keeps_bits_ordered_and_values_real():
    space = SearchSpace.from_dict({"quantize": {"bits": [8, 2, 4]}, "prune": {"ratio": 0.5}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        choices = space.sample(trial)
        assert choices["prune.ratio"] == 0.5 and choices["student.width"] == 1.0
        seen.add(choices["quantize.bits"])
        # the sampler sees an ordered integer index, not an unordered category
        assert trial.params["quantize.bits.index"] == [2, 4, 8].index(choices["quantize.bits"])
        study.tell(trial, 0.0)
    assert seen == {2, 4, 8}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"quantize": {"bits": [3, 7]}}, "quantize.bits: got [3, 7], expected"),
        ({"quantize": {"bitz": [4]}}, "did you mean 'quantize.bits'"),
        ({"prunning": {"ratio": 0.5}}, "did you mean 'prune'"),
        ({"prune": {"ratio": 1.5}}, "prune.ratio: got 1.5"),
        ({"prune": {"ratio": {"low": 0.8, "high": 0.2}}}, "prune.ratio"),
        ({"prune": {"ratio": {"low": 0.0, "hi": 0.2}}}, "prune.ratio.hi"),
        ({"student": {"migrate": "yes"}}, "student.migrate: got 'yes'"),
        ({"prune": [0.5]}, "prune: got [0.5], expected a mapping"),
    ],
)
def test_bad_spaces_name_the_field(data, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        SearchSpace.from_dict(data, where="space.yaml")


def test_missing_space_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="missing file"):
        SearchSpace.from_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("prune: {ratio: [0.1,\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml line"):
        SearchSpace.from_yaml(bad)


def test_per_layer_dimensions_expand_over_the_teachers_layers():
    space = SearchSpace.from_dict({
        "prune": {"ratio": {"low": 0.0, "high": 0.9, "per_layer": True}},
        "quantize": {"bits": {"choices": [2, 4, 8], "per_layer": True}},
        "distill": {"alpha": {"low": 0.1, "high": 0.9}},
    }).for_layers(["1", "3", "5"])
    searched = set(space.searched)
    assert {"prune.ratio.1", "prune.ratio.3", "prune.ratio.5", "quantize.bits.5"} <= searched
    assert "prune.ratio" not in space.dimensions and "distill.alpha" in searched
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    choices = space.sample(study.ask())
    assert choices["quantize.bits.3"] in (2, 4, 8) and 0 <= choices["prune.ratio.1"] <= 0.9


def test_per_layer_is_refused_where_a_parameter_is_global_only():
    with pytest.raises(ConfigError, match=r"distill\.alpha\.per_layer"):
        SearchSpace.from_dict({"distill": {"alpha": {"low": 0, "high": 1, "per_layer": True}}})
