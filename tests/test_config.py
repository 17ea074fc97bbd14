from __future__ import annotations

import pytest

from autocompress.config import PROJECT_ROOT, load_study, resolve_space, study_from_dict
from autocompress.errors import ConfigError


def test_quickstart_study_names_everything_the_issue_asks_for():
    config = load_study(PROJECT_ROOT / "studies" / "quickstart.yaml")
    assert (config.name, config.task.dataset, config.task.teacher) == (
        "quickstart", "mnist5k", "lenet300")
    assert config.objectives == {"accuracy": "max", "latency_ms": "min", "memory_bytes": "min"}
    assert (config.measure.batch_size, config.measure.threads) == (1, 1)
    assert config.sampler == "nsga2" and config.trials >= 10
    assert resolve_space(config.space, study_source=config.source).name == "default.yaml"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"trails": 3}, "trails: got 'trails'.*did you mean 'trials'"),
        ({"trials": 0}, "trials: got 0, expected an integer >= 1"),
        ({"trials": "many"}, "trials: got 'many'"),
        ({"sampler": "nsga3"}, "sampler: got 'nsga3'.*did you mean 'nsga2'"),
        ({"task": {"dataset": "cifar"}}, "task.dataset: got 'cifar'"),
        ({"task": {"teacher": "resnet"}}, "task.teacher: got 'resnet'"),
        ({"task": {"datset": "digits"}}, "task.datset.*did you mean 'task.dataset'"),
        ({"objectives": {"accuracy": "min", "latency_ms": "min"}}, "objectives.accuracy"),
        ({"objectives": {"accuracy": "max"}}, "two or three objectives"),
        ({"measure": {"threads": -1}}, "measure.threads: got -1"),
        ({"finetune": {"lr": 0}}, "finetune.lr: got 0"),
        ({"name": "a/b"}, "name: got 'a/b'"),
        ({"seed": 1.5}, "seed: got 1.5"),
        ([1, 2], "expected a YAML mapping"),
    ],
)
def test_bad_study_fields_are_named(data, message):
    with pytest.raises(ConfigError, match=message):
        study_from_dict(data, where="s.yaml")


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="missing file"):
        load_study(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrials: [1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml line \d+"):
        load_study(bad)


def test_unknown_space_is_an_error():
    with pytest.raises(ConfigError, match=r"space: got 'nowhere\.yaml'"):
        resolve_space("nowhere.yaml", study_source="s.yaml")
