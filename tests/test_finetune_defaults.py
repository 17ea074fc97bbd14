"""Fine-tuning defaults: our small teachers keep the old recipe exactly, pretrained-style models
get one that does not throw them out of their optimum, and every new field is checked."""

from __future__ import annotations

import copy
import itertools
import math
from pathlib import Path

import pytest
import torch

from autocompress.config import load_study, study_from_dict
from autocompress.config_sections import FinetuneConfig, finetune
from autocompress.errors import ConfigError
from autocompress.plan import Plan
from autocompress.tasks import Task, accuracy
from autocompress.tasks.data import Split
from autocompress.techniques import distill
from autocompress.techniques.training import Recipe, fit, lr_factor, make_optimizer, recipe_for
from autocompress.trial import TeacherOutputs, make_context

STUDIES = sorted((Path(__file__).resolve().parents[1] / "studies").glob("*.yaml"))
OLD = Recipe(lr=1e-3, optimizer="adam", schedule="constant", warmup=0.0, weight_decay=0.0)
OLD_FIELDS = {"lr": 1e-3, "optimizer": "adam", "schedule": "constant", "warmup": 0.0,
              "weight_decay": 0.0}


@pytest.mark.parametrize("teacher_name", ["mlp_teacher", "cnn_teacher"])
def test_small_teachers_keep_the_old_recipe_and_their_accuracy(request, digits, teacher_name):
    teacher = request.getfixturevalue(teacher_name)
    task = Task("digits", teacher, digits.train, digits.val)
    ctx = make_context(task, TeacherOutputs.of(teacher, digits.train.x), FinetuneConfig(epochs=1))
    assert recipe_for(teacher) == OLD
    assert (ctx.lr, ctx.optimizer, ctx.schedule, ctx.warmup, ctx.weight_decay) == (
        1e-3, "adam", "constant", 0.0, 0.0)
    assert ctx.registered.notes == {"finetune_lr": 1e-3, "finetune_warmup": 0.0,
                                    "finetune_weight_decay": 0.0}  # the values used, recorded
    plan = Plan({}, seed=0)
    torch.manual_seed(0)
    tuned = distill.apply(copy.deepcopy(teacher), plan, ctx)
    before = accuracy(teacher, digits.val)
    assert accuracy(tuned, digits.val) >= before - 0.01  # drops at most 1 point
    old = copy.deepcopy(teacher)  # the fixed loop as it was: Adam at 1e-3, nothing else
    torch.manual_seed(0)
    loss = distill.loss_weights(plan)
    fit(old, digits.train.x, digits.train.y, teacher_logits=ctx.teacher_logits,
        temperature=loss.temperature, alpha=loss.alpha, teacher_features=ctx.teacher_features,
        feature_weight=loss.feature_weight, epochs=1, lr=1e-3, batch_size=128, seed=plan.seed)
    assert all(torch.equal(a, b) for a, b in zip(tuned.state_dict().values(),
                                                 old.state_dict().values(), strict=True))


def pretrained_encoder():
    """A tiny BERT (412k parameters) "pretrained" by a short training on a task it learns (the
    first token's half of the vocabulary), then a sentence encoder (the first token's state)."""
    transformers = pytest.importorskip("transformers")
    from autocompress.tasks.hf import EncoderClassifier, EncoderEmbedder

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=1000, hidden_size=128, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=256,
                                     max_position_embeddings=16)
    classifier = EncoderClassifier(transformers.BertModel(config), num_classes=2)
    ids = torch.randint(1, 1000, (1120, 8), generator=torch.Generator().manual_seed(0))
    labels = (ids[:, 0] < 500).long()
    fit(classifier, ids[:1000], labels[:1000], epochs=2, batch_size=16)
    assert accuracy(classifier, Split(ids[1000:], labels[1000:])) > 0.75  # it learnt something
    return EncoderEmbedder(classifier.encoder, pooling="cls").eval(), ids


def test_a_pretrained_transformer_distilled_from_itself_stays_itself(one_thread):
    """The sentence-encoder case: an exact copy fine-tuned for one epoch towards its own
    embeddings. The defaults keep it (cosine >= 0.98); the old fixed Adam at 1e-3 does not."""
    from autocompress.tasks.hf import embedding_similarity, teacher_embeddings

    teacher, ids = pretrained_encoder()
    targets = teacher_embeddings(teacher, ids)
    task = Task("encoder", teacher, Split(ids[:1000], targets[:1000]),
                Split(ids[1000:], targets[1000:]), metric=embedding_similarity)
    similarity = {}
    for name, config in (("defaults", FinetuneConfig(epochs=1, batch_size=8)),
                         ("old", FinetuneConfig(epochs=1, batch_size=8, **OLD_FIELDS))):
        ctx = make_context(task, None, config)
        torch.manual_seed(0)
        student = distill.apply(copy.deepcopy(teacher), Plan({}, seed=0), ctx)
        similarity[name] = embedding_similarity(student, task.val)
        if name == "defaults":  # AdamW, 10% warm-up, linear decay, at 1e-4 * sqrt(4M / size)
            size = sum(p.numel() for p in teacher.parameters())
            assert ctx.registered.notes == pytest.approx({
                "finetune_lr": 1e-4 * math.sqrt(4e6 / size), "finetune_warmup": 0.1,
                "finetune_weight_decay": 0.01})
            assert 3e-4 < ctx.lr < 3.2e-4  # 412k parameters
            assert (ctx.optimizer, ctx.schedule) == ("adamw", "linear")
    assert similarity["defaults"] >= 0.98, similarity
    assert similarity["old"] < 0.98 and similarity["old"] < similarity["defaults"] - 0.02, \
        similarity


def test_the_rate_shrinks_with_the_size_of_a_pretrained_model():
    def of_size(n: int) -> float:
        return recipe_for(torch.nn.Linear(n, 1000, bias=False, device="meta")).lr

    assert recipe_for(torch.nn.Linear(999, 1000, bias=False, device="meta")) == OLD
    assert of_size(1000) == pytest.approx(2e-4)  # 1M parameters: taken to be pretrained
    assert of_size(4000) == pytest.approx(1e-4)
    assert of_size(110_000) == pytest.approx(1e-4 * math.sqrt(4 / 110))  # BERT-base: ~1.9e-5
    tiny_table = recipe_for(torch.nn.Embedding(100, 10))  # pretrained, at most the old rate
    assert (tiny_table.lr, tiny_table.optimizer, tiny_table.warmup) == (1e-3, "adamw", 0.1)
    chosen = recipe_for(torch.nn.Linear(4000, 1000, device="meta"), lr=3e-5, schedule="cosine",
                        warmup="auto", optimizer="auto")
    assert chosen == Recipe(3e-5, "adamw", "cosine", 0.1, 0.01)  # given values win
    assert recipe_for(torch.nn.Linear(4, 4), optimizer="sgd").optimizer == "sgd"


def test_the_schedules():
    total = 20
    assert [lr_factor(s, total, "constant", 0.0) for s in range(total)] == [1.0] * total
    warm = [lr_factor(s, total, "linear", 0.1) for s in range(total)]
    assert warm[:3] == [0.5, 1.0, 1.0]  # two warm-up steps, then decay from the full rate
    assert all(a >= b for a, b in itertools.pairwise(warm[1:])) and 0 < warm[-1] < 0.1
    cosine = [lr_factor(s, total, "cosine", 0.0) for s in range(total)]
    assert cosine[0] == 1.0 and cosine[10] == pytest.approx(0.5) and cosine[-1] < 0.01


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
@pytest.mark.parametrize("schedule", ["constant", "cosine", "linear"])
def test_every_optimizer_and_schedule_trains(digits, optimizer, schedule):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    losses = fit(model, digits.train.x, digits.train.y, epochs=3, lr=0.05 if optimizer == "sgd"
                 else 1e-2, optimizer=optimizer, schedule=schedule, warmup=0.1,
                 weight_decay=0.01, batch_size=64)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_weight_decay_shrinks_matrices_but_not_biases_or_norm_scales(optimizer):
    """With no gradient, a step moves only what decay moves: the linear layer's weight, never
    its bias or the LayerNorm's scale and shift (BERT's and Hugging Face's recipe)."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    step = make_optimizer(list(model.parameters()), optimizer, 0.1, 0.5)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    step.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved == {"0.weight"}
    assert torch.allclose(model[0].weight, before["0.weight"] * (1 - 0.1 * 0.5)) or \
        optimizer == "adam"  # Adam's L2 decay goes through its normalised step
    assert sum(len(g["params"]) for g in step.param_groups) == 4


def test_fields_are_checked_one_by_one():
    config = finetune("s.yaml", {"epochs": 2, "lr": 2e-5, "optimizer": "sgd",
                                 "schedule": "cosine", "warmup": 0.0, "weight_decay": 0})
    assert config == FinetuneConfig(epochs=2, lr=2e-5, optimizer="sgd", schedule="cosine",
                                    warmup=0.0, weight_decay=0.0)
    assert finetune("s.yaml", None) == FinetuneConfig() == finetune("s.yaml", {"lr": "auto"})


@pytest.mark.parametrize(("data", "message"), [
    ({"lr": 0}, "finetune.lr: got 0, expected auto or a positive finite rate"),
    ({"lr": float("nan")}, "finetune.lr: got nan"),
    ({"lr": float("inf")}, "finetune.lr: got inf"),
    ({"lr": -1e-3}, "finetune.lr: got -0.001"),
    ({"lr": "1e-4"}, "YAML reads 1e-4 as text: write it with a dot, 1.0e-4"),
    ({"lr": True}, "finetune.lr: got True"),
    ({"optimizer": "adamx"}, "finetune.optimizer: got 'adamx'.*adamw, sgd.*did you mean"),
    ({"schedule": "step"}, "finetune.schedule: got 'step', expected one of auto, constant"),
    ({"warmup": 1.0}, r"finetune.warmup: got 1.0, expected auto or a share of the steps"),
    ({"warmup": -0.1}, "finetune.warmup: got -0.1"),
    ({"weight_decay": float("inf")}, "finetune.weight_decay: got inf"),
    ({"epochs": 0}, "finetune.epochs: got 0"),
    ({"warm_up": 0.1}, "finetune.warm_up.*did you mean 'finetune.warmup'"),
    ([1], "finetune: got"),
])
def test_a_bad_field_is_one_line_naming_it(data, message):
    with pytest.raises(ConfigError, match=message) as caught:
        finetune("s.yaml", data)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_existing_study_files_stay_valid(path):
    assert load_study(path).finetune.epochs >= 1


def test_a_study_file_takes_the_new_fields_and_keeps_them():
    data = {"name": "s", "finetune": {"lr": 5e-5, "optimizer": "adamw", "schedule": "linear",
                                      "warmup": 0.06, "weight_decay": 0.01}}
    config = study_from_dict(data, where="s.yaml")
    assert config.finetune == FinetuneConfig(lr=5e-5, optimizer="adamw", schedule="linear",
                                             warmup=0.06, weight_decay=0.01)
    assert study_from_dict(config.to_dict()).finetune == config.finetune
    assert study_from_dict({"name": "s"}).finetune.lr == "auto"
    with pytest.raises(ConfigError, match=r"finetune\.schedule"):
        study_from_dict({"name": "s", "finetune": {"schedule": "steps"}}, where="s.yaml")
