"""The causal-LM task end to end: study files, budgets, the search through the API, the outputs."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from llm_tiny import tiny_llama, token_batch

from autocompress.budget import Budget
from autocompress.config import study_from_dict
from autocompress.errors import ConfigError
from autocompress.pareto import normalise, reference_point
from autocompress.space import SearchSpace

pytest.importorskip("transformers")


def test_task_causal_lm_reads_as_the_language_model_task():
    config = study_from_dict({"name": "s", "task": "causal_lm",
                              "budget": {"max_perplexity_increase": "10%"}})
    assert (config.task.kind, config.task.dataset, config.task.teacher) == \
        ("causal_lm", "gutenberg", "smollm2")
    assert config.measure.runtime == "torch"  # generation runs in torch, not ONNX
    assert config.space.endswith("llm.yaml")
    assert dict(config.objectives) == {"perplexity": "min", "tokens_per_s": "max",
                                       "memory_bytes": "min"}
    assert config.budget.max_perplexity_increase == pytest.approx(0.10)
    assert study_from_dict(config.to_dict()) == config


@pytest.mark.parametrize(("study", "field"), [
    ({"task": "causal_lm", "runtime": "onnxruntime"}, "runtime"),
    ({"runtime": "torch-int8"}, "runtime"),
    ({"objectives": {"perplexity": "min", "memory_bytes": "min"}}, "objectives.perplexity"),
    ({"task": {"kind": "causal_lm", "teacher": "lenet300"}}, "task.teacher"),
    ({"task": {"kind": "translation"}}, "task.kind"),
    ({"task": "causal_lm", "budget": {"max_perplexity_increase": "ten%"}},
     "budget.max_perplexity_increase"),
    ({"task": "causal_lm", "budget": {"max_perplexity": 0}}, "budget.max_perplexity"),
])
def test_language_model_settings_that_make_no_sense_are_one_line(study, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")) as error:
        study_from_dict({"name": "s", **study})
    assert "\n" not in str(error.value)


def test_the_perplexity_limit_is_the_tighter_of_the_two():
    budget = Budget(max_perplexity=60.0, max_perplexity_increase=0.1)
    assert budget.perplexity_ceiling(50.0) == pytest.approx(55.0)
    assert budget.perplexity_ceiling(60.0) == pytest.approx(60.0)
    assert budget.constraints({"perplexity": 57.0}, teacher_perplexity=50.0) == \
        {"perplexity": pytest.approx(2.0)}
    assert budget.constraint_names() == ["perplexity"]


def test_a_rate_to_maximise_enters_the_hypervolume_as_a_time():
    objectives = {"perplexity": "min", "tokens_per_s": "max"}
    teacher = {"perplexity": 50.0, "tokens_per_s": 20.0}
    reference = reference_point(objectives, teacher, Budget(max_perplexity_increase=0.2))
    assert reference == {"perplexity": pytest.approx(60.0), "tokens_per_s": 20.0}
    points = normalise([{"perplexity": 30.0, "tokens_per_s": 40.0}], objectives, reference)
    assert points.tolist() == [[pytest.approx(0.5), pytest.approx(0.5)]]  # twice as fast: 0.5


def test_spaces_of_the_two_kinds_do_not_mix():
    with pytest.raises(ConfigError, match="one kind of task"):
        SearchSpace.from_dict({"lm_prune": {"ratio": 0.5}, "prune": {"ratio": 0.5}})
    lm = SearchSpace.from_yaml("search_spaces/llm.yaml")
    assert lm.for_language_models
    assert all(name.startswith("lm_") for name in lm.dimensions)
    assert not any(n.startswith("lm_") for n in SearchSpace.from_yaml(
        "search_spaces/default.yaml").dimensions)


def _task_tokens():
    return dict(train=token_batch(16, 24, seed=1), calibration=token_batch(4, 24, seed=2),
                val=token_batch(4, 24, seed=3), test=token_batch(4, 24, seed=4))


def test_a_three_trial_search_writes_the_usual_outputs(tmp_path):
    import autocompress

    teacher = tiny_llama(layers=3, hidden=32, heads=4, kv_heads=2, intermediate=64)
    space = {"lm_student": {"drop_layers": [0, 1], "ffn": [0.5, 1.0]},
             "lm_distill": {"steps": [2]},
             "lm_prune": {"method": ["wanda", "sparsegpt"], "ratio": {"low": 0.0, "high": 0.6}},
             "lm_quantize": {"method": ["rtn", "gptq"], "bits": [4, 32], "group_size": [32],
                             "embeddings": [8]}}
    outcome = autocompress.search_lm(
        teacher, **_task_tokens(), space=space, trials=3, sampler="random", seed=3,
        measure={"warmup": 1, "repeats": 3, "prompt_length": 8, "new_tokens": 4},
        budget={"max_perplexity_increase": "50%"}, out_dir=tmp_path, progress=None)
    assert len(outcome.results) == 3
    assert all(r.ok for r in outcome.results), [r.reason for r in outcome.results]
    teacher_card = json.loads((tmp_path / "teacher.json").read_text())
    assert {"perplexity", "test_perplexity", "latency_ms", "tokens_per_s",
            "memory_bytes"} <= set(teacher_card)
    for name in ("trials.csv", "pareto.csv"):
        with open(tmp_path / name) as handle:
            header = next(csv.reader(handle))
        assert {"perplexity", "latency_ms", "tokens_per_s", "memory_bytes"} <= set(header), name
    # every trial's stored model holds 8-bit embeddings: smaller than the float teacher
    assert all(r.metrics["memory_bytes"] < teacher_card["memory_bytes"] for r in outcome.results)
    assert (tmp_path / "report.html").is_file()
    assert len(teacher.model.layers) == 3  # the user's model is left as it was
    with torch.no_grad():
        assert torch.isfinite(teacher(token_batch(1, 8)).logits).all()


def test_a_classification_space_on_a_language_model_is_refused_before_any_work(tmp_path):
    import autocompress

    with pytest.raises(ConfigError, match="lm_student"):
        autocompress.search_lm(tiny_llama(), **_task_tokens(), space="default", trials=1,
                               out_dir=tmp_path / "out", progress=None)
    assert not (tmp_path / "out").exists()


def test_dropping_as_many_layers_as_the_teacher_has_is_refused_before_any_work(tmp_path):
    import autocompress

    with pytest.raises(ConfigError, match=r"lm_student\.drop_layers: got 3, expected fewer"):
        autocompress.search_lm(tiny_llama(layers=3), **_task_tokens(),
                               space={"lm_student": {"drop_layers": [1, 3]}}, trials=1,
                               out_dir=tmp_path / "out", progress=None)
    assert not (tmp_path / "out").exists()


def test_a_language_models_line_shows_perplexity_and_decode_speed():
    from autocompress.report.tables import describe_metrics

    line = describe_metrics({"perplexity": 46.081, "accuracy": 0.32, "latency_ms": 412.34,
                             "tokens_per_s": 23.41, "memory_bytes": 538_100_326})
    assert line.startswith("ppl 46.08  412.3 ms prefill  23.4 tok/s  538")


EXPORT_CHECK = """
import json, sys, torch
from transformers import AutoModelForCausalLM
from autocompress.llm.measure import perplexity
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
tokens = torch.tensor(json.loads(sys.argv[2]))
print(json.dumps({"perplexity": perplexity(model, tokens),
                  "layers": model.config.num_hidden_layers}))
"""


def test_a_trial_exports_as_a_hugging_face_folder_that_reloads_to_its_perplexity(tmp_path,
                                                                                 capsys):
    import subprocess
    import sys

    import autocompress
    from autocompress.errors import ConfigError

    teacher = tiny_llama(layers=3, hidden=32, heads=4, kv_heads=2, intermediate=64)
    space = {"lm_student": {"drop_layers": [1], "ffn": [0.5], "heads": [0.5]},
             "lm_distill": {"steps": [2]},
             "lm_prune": {"method": ["wanda"], "ratio": [0.3]},
             "lm_quantize": {"method": ["gptq"], "bits": [4], "group_size": [32],
                             "embeddings": [8]}}
    tokens = _task_tokens()
    outcome = autocompress.search_lm(
        teacher, **tokens, space=space, trials=1, sampler="random",
        measure={"warmup": 1, "repeats": 3, "prompt_length": 8, "new_tokens": 4},
        out_dir=tmp_path / "study", progress=None)
    recorded = outcome.results[0].metrics
    card = outcome.export(0, format="hf", path=tmp_path / "hf")
    assert card["remeasured"]["perplexity"] == pytest.approx(recorded["perplexity"], rel=1e-6)
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    done = subprocess.run([sys.executable, "-c", EXPORT_CHECK, str(tmp_path / "hf"),
                           json.dumps(tokens["val"].tolist())],
                          capture_output=True, text=True, check=True)
    reloaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert reloaded["layers"] == 2  # one of three dropped
    assert reloaded["perplexity"] == pytest.approx(recorded["perplexity"], rel=1e-5)
    with pytest.raises(ConfigError, match="--format: got 'onnx', expected hf"):
        outcome.export(0, format="onnx", path=tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()
    # the command line has no teacher for an API study: it says where to export it, one line
    from autocompress import cli

    capsys.readouterr()  # what the export above printed (transformers' progress bar)
    assert cli.main(["export", str(tmp_path / "study"), "--trial", "0", "--format", "hf",
                     "--out", str(tmp_path / "cli")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "came through the Python API" in err[0], err
    assert not (tmp_path / "cli").exists()
