"""Pruning beyond global magnitude: criteria, per-layer, protection, schedules, channels."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import ctx_for
from torch import nn

from autocompress.plan import Plan
from autocompress.techniques import prune
from autocompress.techniques.common import bake, count_parameters, weight_layers
from autocompress.techniques.importance import accumulate_gradients, criterion
from autocompress.techniques.training import fit


def zeros_per_layer(model) -> dict[str, int]:
    return {name: int((m.weight == 0).sum()) for name, m in weight_layers(model)}


@pytest.mark.parametrize("name", ["gradient", "taylor"])
def test_gradient_criteria_need_gradients_and_differ_from_magnitude(mlp_teacher, digits, name):
    crit = criterion(name)
    assert crit.needs_gradients
    layer = weight_layers(mlp_teacher)[0][1]
    with pytest.raises(ValueError, match="needs accumulated gradients"):
        crit.weight_scores(layer.weight)
    grads = accumulate_gradients(mlp_teacher, digits.train.x, digits.train.y, batches=2)
    scores = crit.weight_scores(layer.weight, grads["1"])
    assert scores.shape == layer.weight.shape and float(scores.sum()) > 0
    plan = Plan({"prune.ratio": 0.5, "prune.criterion": name})
    by_grad = prune.apply(copy.deepcopy(mlp_teacher), plan, ctx_for(mlp_teacher, digits))
    by_mag = prune.apply(copy.deepcopy(mlp_teacher), Plan({"prune.ratio": 0.5}),
                         ctx_for(mlp_teacher, digits))
    assert prune.sparsity(by_grad) == pytest.approx(0.5, abs=1e-4)
    first = next(m.weight == 0 for _, m in weight_layers(by_grad))
    assert not torch.equal(first, next(m.weight == 0 for _, m in weight_layers(by_mag)))


def test_per_layer_ratios_and_protection_are_exact(mlp_teacher, digits):
    plan = Plan({"prune.ratio.1": 0.3, "prune.ratio.3": 0.6, "prune.ratio.5": 0.9,
                 "prune.protect_first": True})
    model = prune.apply(copy.deepcopy(mlp_teacher), plan, ctx_for(mlp_teacher, digits))
    zeros = zeros_per_layer(model)
    sizes = {name: m.weight.numel() for name, m in weight_layers(model)}
    assert zeros["1"] == 0  # protected
    assert zeros["3"] == round(0.6 * sizes["3"]) and zeros["5"] == round(0.9 * sizes["5"])
    last = prune.apply(copy.deepcopy(mlp_teacher),
                       Plan({"prune.ratio": 0.5, "prune.protect_last": True}),
                       ctx_for(mlp_teacher, digits))
    zeros = zeros_per_layer(last)
    assert zeros["5"] == 0 and zeros["1"] + zeros["3"] == round(0.5 * (sizes["1"] + sizes["3"]))


@pytest.mark.parametrize(("schedule", "expected"), [
    ("linear", [0.25, 0.5, 0.75, 1.0]), ("cubic", [0.578125, 0.875, 0.984375, 1.0]),
    ("oneshot", [1.0, 1.0, 1.0, 1.0]),
])
def test_schedules(schedule, expected):
    got = [prune.schedule_fraction(schedule, e, 4) for e in range(4)]
    assert got == pytest.approx(expected)


def test_gradual_pruning_grows_sparsity_each_epoch_to_the_exact_target(mlp_teacher, digits):
    seen = []
    ctx = ctx_for(mlp_teacher, digits, epochs=4)
    model = prune.apply(copy.deepcopy(mlp_teacher),
                        Plan({"prune.ratio": 0.8, "prune.schedule": "linear"}), ctx)
    fit(model, digits.train.x, digits.train.y, epochs=4, before_epoch=ctx.registered.before_epoch,
        on_epoch=lambda e, m: seen.append(prune.sparsity(m)))
    assert seen == pytest.approx([0.2, 0.4, 0.6, 0.8], abs=1e-4)
    assert prune.sparsity(bake(model)) == pytest.approx(0.8, abs=1e-4)


@pytest.mark.parametrize("teacher_name", ["mlp_teacher", "cnn_teacher"])
def test_structured_pruning_removes_units_and_matches_the_masked_model(request, digits,
                                                                       teacher_name):
    teacher = request.getfixturevalue(teacher_name)
    plan = Plan({"prune.ratio": 0.5, "prune.kind": "structured", "prune.criterion": "l1"})
    ctx = ctx_for(teacher, digits)
    pruned = prune.apply(copy.deepcopy(teacher), plan, ctx)
    assert count_parameters(pruned) < 0.7 * count_parameters(teacher)
    notes = ctx.registered.notes
    assert notes["params_after"] < notes["params_before"]
    assert notes["macs_after"] < notes["macs_before"]
    again = copy.deepcopy(teacher)
    removed = prune.remove_units(again, plan, digits.train.x[:1])
    hidden = weight_layers(teacher)[:-1]
    assert sorted(removed.units) == sorted(name for name, _ in hidden)
    for (name, layer), (_, small) in zip(hidden, weight_layers(pruned)[:-1], strict=True):
        units = layer.weight.shape[0]
        assert len(removed.units[name]) == round(0.5 * units) == units - small.weight.shape[0]
    # the same units zeroed in place (weights and biases) give identical outputs
    masked = copy.deepcopy(teacher)
    modules = dict(masked.named_modules())
    with torch.no_grad():
        for name, idxs in removed.units.items():
            modules[name].weight[idxs] = 0
            modules[name].bias[idxs] = 0
        assert torch.allclose(pruned(digits.val.x), masked(digits.val.x), atol=1e-5)
        assert torch.allclose(again(digits.val.x), pruned(digits.val.x), atol=0)


def test_structured_pruning_respects_residual_adds(digits):
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(1, 8, 3, padding=1)
            self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 64, 10))

        def forward(self, x):
            h = self.stem(x)
            return self.head(h + self.body(h))

    model = Residual().eval()
    ctx = ctx_for(model, digits)
    prune.apply(model, Plan({"prune.ratio": 0.5, "prune.kind": "structured"}), ctx)
    assert model.stem.out_channels == model.body[0].out_channels == 4  # the add stays consistent
    assert model(digits.val.x[:3]).shape == (3, 10)
