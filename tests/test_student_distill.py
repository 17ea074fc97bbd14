"""Student depth and criteria, feature distillation, a user's student factory."""

from __future__ import annotations

import pytest
import torch
from helpers import ctx_for
from torch import nn

from autocompress.errors import TrialError
from autocompress.plan import Plan
from autocompress.tasks import accuracy
from autocompress.techniques import student
from autocompress.techniques.common import penultimate_features, weight_layers
from autocompress.techniques.training import fit


def test_dropping_a_layer_bridges_it_linearly_and_keeps_layer_names(mlp_teacher):
    assert student.droppable(mlp_teacher) == [1, 3]
    shallow = student.drop_layers(mlp_teacher, 1)
    assert isinstance(shallow[3], nn.Identity) and isinstance(shallow[4], nn.Identity)
    assert [name for name, _ in weight_layers(shallow)] == ["1", "5"]
    expected = mlp_teacher[5].weight @ mlp_teacher[3].weight
    assert torch.allclose(shallow[5].weight, expected, atol=1e-6)
    assert torch.allclose(
        shallow[5].bias, mlp_teacher[5].weight @ mlp_teacher[3].bias + mlp_teacher[5].bias,
        atol=1e-6)
    with pytest.raises(TrialError, match="2 droppable"):
        student.drop_layers(mlp_teacher, 3)


def test_depth_and_per_layer_width_through_apply(mlp_teacher, digits):
    plan = Plan({"student.drop_layers": 1, "student.width.1": 0.25})
    small = student.apply(mlp_teacher, plan, ctx_for(mlp_teacher, digits))
    shapes = [tuple(m.weight.shape) for _, m in weight_layers(small)]
    assert shapes == [(75, 64), (10, 75)]
    assert accuracy(small, digits.val) > 0.5  # migrated and bridged: far above chance (0.1)


@pytest.mark.parametrize("name", ["l1", "gradient", "taylor"])
def test_migration_with_any_criterion_starts_above_chance(cnn_teacher, digits, name):
    plan = Plan({"student.width": 0.6, "student.criterion": name})
    small = student.apply(cnn_teacher, plan, ctx_for(cnn_teacher, digits))
    assert accuracy(small, digits.val) > 0.4


def test_feature_distillation_pulls_student_features_towards_the_teachers(mlp_teacher, digits):
    target = penultimate_features(mlp_teacher, digits.train.x)
    assert target.shape == (len(digits.train), 100)

    def gap(model):
        feats = penultimate_features(model, digits.train.x)
        return float(((feats - target) ** 2).mean())

    runs = {}
    for weight in (0.0, 5.0):
        torch.manual_seed(0)
        fresh = student.narrow(mlp_teacher, width=1.0, example_input=digits.train.x[:1],
                               migrate=False)
        fit(fresh, digits.train.x, digits.train.y, teacher_features=target,
            feature_weight=weight, epochs=3)
        runs[weight] = gap(fresh)
    assert runs[5.0] < runs[0.0]
    narrow = student.narrow(mlp_teacher, width=0.5, example_input=digits.train.x[:1])
    losses = fit(narrow, digits.train.x, digits.train.y, teacher_features=target,
                 feature_weight=1.0, epochs=1)  # a projection bridges 50 -> 100
    assert len(losses) == 1 and losses[0] > 0


def test_a_users_student_factory_is_used(mlp_teacher, digits):
    built = []

    def factory(plan, teacher):
        built.append(plan.get("student.width"))
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    ctx = ctx_for(mlp_teacher, digits, student_factory=factory)
    model = student.apply(mlp_teacher, Plan({"student.width": 0.3}), ctx)
    assert built == [0.3] and model[1].out_features == 10
