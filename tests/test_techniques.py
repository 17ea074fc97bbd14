from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import ctx_for

from autocompress.plan import Plan
from autocompress.tasks import accuracy
from autocompress.techniques import prune, quantize, student
from autocompress.techniques.common import bake, weight_layers
from autocompress.techniques.training import kd_loss


@pytest.mark.parametrize("ratio", [0.1, 0.37, 0.9, 0.99])
def test_global_pruning_gives_exactly_the_asked_sparsity(mlp_teacher, digits, ratio):
    model = prune.apply(copy.deepcopy(mlp_teacher), Plan({"prune.ratio": ratio}),
                        ctx_for(mlp_teacher, digits))
    total = sum(m.weight.numel() for _, m in weight_layers(model))
    zeros = sum(int((m.weight == 0).sum()) for _, m in weight_layers(model))
    assert zeros == round(ratio * total)
    # the zeroed weights are the smallest ones: every kept |w| >= every pruned original |w|
    originals = torch.cat([m.weight.abs().flatten() for _, m in weight_layers(mlp_teacher)])
    kept = torch.cat([m.weight.abs().flatten() for _, m in weight_layers(model)])
    assert originals[kept == 0].max() <= kept[kept != 0].min()


def test_masks_survive_training_and_baking(mlp_teacher, digits):
    model = prune.apply(copy.deepcopy(mlp_teacher), Plan({"prune.ratio": 0.8}),
                        ctx_for(mlp_teacher, digits))
    before = [m.weight == 0 for _, m in weight_layers(model)]
    optimiser = torch.optim.SGD(model.parameters(), lr=0.5)
    F.cross_entropy(model(digits.train.x), digits.train.y).backward()
    optimiser.step()
    bake(model)
    after = [m.weight == 0 for _, m in weight_layers(model)]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert prune.sparsity(model) == pytest.approx(0.8, abs=1e-5)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_quantized_layers_hold_at_most_2_to_the_b_values_per_channel(cnn_teacher, digits, bits):
    model = quantize.apply(copy.deepcopy(cnn_teacher), Plan({"quantize.bits": bits}),
                           ctx_for(cnn_teacher, digits))
    bake(model)
    for _, layer in weight_layers(model):
        assert quantize.levels_per_channel(layer.weight) <= 2**bits
        assert layer.weight_bits == bits
    # coarse enough to matter: 2-bit channels use exactly the three levels -s, 0, s
    if bits == 2:
        assert max(quantize.levels_per_channel(m.weight) for _, m in weight_layers(model)) == 3


def test_fake_quantization_passes_gradients_straight_through():
    weight = torch.randn(4, 6, requires_grad=True)
    quantize.FakeQuantize(4)(weight).sum().backward()
    assert weight.grad is not None and torch.count_nonzero(weight.grad) > 0


@pytest.mark.parametrize("teacher_name", ["mlp_teacher", "cnn_teacher"])
def test_student_keeps_the_asked_width(request, digits, teacher_name):
    teacher = request.getfixturevalue(teacher_name)
    narrowed = student.narrow(teacher, width=0.5, example_input=digits.train.x[:1])
    for (_, t), (_, s) in zip(weight_layers(teacher)[:-1], weight_layers(narrowed)[:-1],
                              strict=True):
        assert s.weight.shape[0] == round(0.5 * t.weight.shape[0])
    assert narrowed(digits.val.x).shape == teacher(digits.val.x).shape


def test_migration_keeps_the_largest_norm_units_and_full_width_is_the_teacher(mlp_teacher,
                                                                             digits):
    narrowed = student.narrow(mlp_teacher, width=0.25, example_input=digits.train.x[:1])
    first_t, first_s = weight_layers(mlp_teacher)[0][1], weight_layers(narrowed)[0][1]
    norms = student.unit_norms(first_t)
    kept = student.unit_norms(first_s)
    assert kept.min() >= torch.topk(norms, len(kept)).values.min() - 1e-6
    full = student.narrow(mlp_teacher, width=1.0, example_input=digits.train.x[:1])
    assert torch.allclose(full(digits.val.x), mlp_teacher(digits.val.x))


def test_migrated_student_starts_far_above_chance_and_a_random_one_does_not(cnn_teacher,
                                                                           digits):
    migrated = student.narrow(cnn_teacher, width=0.6, example_input=digits.train.x[:1])
    scratch = student.narrow(cnn_teacher, width=0.6, example_input=digits.train.x[:1],
                             migrate=False)
    assert accuracy(migrated, digits.val) > 0.5
    assert accuracy(scratch, digits.val) < 0.3


def test_kd_loss_matches_a_hand_computation():
    s = torch.tensor([[1.0, 2.0, 0.5]])
    t = torch.tensor([[2.0, 0.0, 1.0]])
    y = torch.tensor([1])
    temp, alpha = 2.0, 0.25
    ps = [math.exp(v / temp) for v in s[0].tolist()]
    pt = [math.exp(v / temp) for v in t[0].tolist()]
    ps = [p / sum(ps) for p in ps]
    pt = [p / sum(pt) for p in pt]
    kl = sum(b * math.log(b / a) for a, b in zip(ps, pt, strict=True))
    ce = -math.log(math.exp(2.0) / sum(math.exp(v) for v in s[0].tolist()))
    expected = alpha * kl * temp**2 + (1 - alpha) * ce
    got = kd_loss(s, t, y, temperature=temp, alpha=alpha).item()
    assert got == pytest.approx(expected, rel=1e-6)
    assert kd_loss(s, None, y, temperature=temp, alpha=alpha).item() == pytest.approx(ce)
