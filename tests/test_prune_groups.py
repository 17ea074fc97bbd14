"""Structured pruning by dependency group: exact counts on a residual CNN, the masked-model
equivalence, per-layer ratios, and accuracy against torch-pruning's own pruner."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import ctx_for
from torch import nn

from autocompress.plan import Plan
from autocompress.tasks import accuracy
from autocompress.techniques import prune
from autocompress.techniques.training import fit

RATIOS = [0.1, 0.25, 0.3, 0.35, 0.454, 0.489, 0.75]


class Block(nn.Module):
    """conv-bn-relu-conv-bn plus the identity, on the trunk's channels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x + self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))


class ResidualCNN(nn.Module):
    """A user's own residual net: stem, two residual blocks on a 32-channel trunk, pool, linear."""

    def __init__(self, in_channels: int = 1, channels: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(channels), nn.ReLU())
        self.block1 = Block(channels)
        self.block2 = Block(channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.block2(self.block1(self.stem(x)))), 1))


TRUNK = ["stem.0", "stem.1", "block1.conv2", "block1.bn2", "block2.conv2", "block2.bn2"]


def widths(model: ResidualCNN) -> dict[str, int]:
    """Every channel count the trunk and the blocks' inner groups have."""
    found = {"trunk": model.stem[0].out_channels}
    for name in ("block1", "block2"):
        block = getattr(model, name)
        found[name] = block.conv1.out_channels
        assert block.bn1.num_features == block.conv2.in_channels == found[name]
        assert block.conv1.in_channels == block.conv2.out_channels == found["trunk"]
        assert block.bn2.num_features == found["trunk"]
    assert model.stem[1].num_features == model.fc.in_features == found["trunk"]
    assert model.fc.out_features == 10  # the output layer is never cut
    return found


@pytest.mark.parametrize("ratio", RATIOS)
def test_each_group_loses_exactly_round_ratio_times_its_units(digits, ratio):
    torch.manual_seed(0)
    model = ResidualCNN().eval()
    ctx = ctx_for(model, digits)
    prune.apply(model, Plan({"prune.ratio": ratio, "prune.kind": "structured"}), ctx)
    kept = 32 - round(ratio * 32)
    assert widths(model) == {"trunk": kept, "block1": kept, "block2": kept}
    assert model(digits.val.x[:3]).shape == (3, 10)
    notes = ctx.registered.notes
    assert notes["params_after"] < notes["params_before"]
    assert notes["macs_after"] < notes["macs_before"]


def test_removing_a_groups_units_equals_zeroing_them(digits):
    torch.manual_seed(0)
    teacher = ResidualCNN().eval()
    with torch.no_grad():  # non-trivial norms, so the scales and shifts matter
        for module in teacher.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.running_mean.uniform_(-0.1, 0.1)
    pruned = copy.deepcopy(teacher)
    plan = Plan({"prune.ratio": 0.4, "prune.kind": "structured"})
    removed = prune.remove_units(pruned, plan, digits.train.x[:1])
    # the trunk (rooted at the stem) and each block's inner group, once each
    assert sorted(removed.units) == ["block1.conv1", "block2.conv1", "stem.0"]
    assert all(len(idxs) == round(0.4 * 32) for idxs in removed.units.values())
    masked = copy.deepcopy(teacher)
    modules = dict(masked.named_modules())
    with torch.no_grad():
        for root, idxs in removed.units.items():
            members = TRUNK if root in TRUNK else [root, root.replace("conv1", "bn1")]
            for name in members:
                modules[name].weight[idxs] = 0
                if getattr(modules[name], "bias", None) is not None:
                    modules[name].bias[idxs] = 0
        torch.testing.assert_close(pruned(digits.val.x), masked(digits.val.x),
                                   atol=1e-5, rtol=1e-5)


def test_per_layer_ratio_is_the_groups_root_layers_and_protection_spares_the_trunk(digits):
    model = ResidualCNN().eval()
    plan = Plan({"prune.ratio": 0.25, "prune.kind": "structured", "prune.ratio.stem.0": 0.5,
                 "prune.ratio.block1.conv1": 0.75})
    prune.apply(model, plan, ctx_for(model, digits))
    assert widths(model) == {"trunk": 16, "block1": 8, "block2": 24}
    spared = ResidualCNN().eval()
    plan = Plan({"prune.ratio": 0.5, "prune.kind": "structured", "prune.protect_first": True})
    prune.apply(spared, plan, ctx_for(spared, digits))
    assert widths(spared) == {"trunk": 32, "block1": 16, "block2": 16}


def _prune_and_finetune(digits, seed: int, ratio: float, epochs: int,
                        teacher_epochs: int) -> tuple[float, float]:
    """Accuracy (val + test) after pruning and fine-tuning: ours, torch-pruning's."""
    import torch_pruning as tp

    torch.manual_seed(seed)
    teacher = ResidualCNN()
    fit(teacher, digits.train.x, digits.train.y, epochs=teacher_epochs, batch_size=64, seed=seed)
    teacher.eval()
    ours = copy.deepcopy(teacher)
    prune.apply(ours, Plan({"prune.ratio": ratio, "prune.kind": "structured"}),
                ctx_for(teacher, digits))
    theirs = copy.deepcopy(teacher)
    tp.pruner.MetaPruner(theirs, digits.train.x[:1],
                         importance=tp.importance.GroupMagnitudeImportance(p=2),
                         pruning_ratio=ratio, ignored_layers=[theirs.fc]).step()
    scores = []
    for model in (ours, theirs):
        fit(model, digits.train.x, digits.train.y, epochs=epochs, batch_size=64, seed=seed)
        scores.append((accuracy(model, digits.val) + accuracy(model, digits.test)) / 2)
    return scores[0], scores[1]


@pytest.mark.usefixtures("one_thread")
def test_accuracy_after_fine_tuning_matches_torch_pruning(digits):
    """Same model, ratio 0.45 and 3 epochs; the mean over three seeds (one run's fine-tuning
    noise is about a point) within 1 point of torch-pruning's MetaPruner. Was 37-43% vs 97%."""
    runs = [_prune_and_finetune(digits, seed, 0.45, epochs=3, teacher_epochs=6)
            for seed in range(3)]
    ours = sum(r[0] for r in runs) / len(runs)
    theirs = sum(r[1] for r in runs) / len(runs)
    assert theirs > 0.9
    assert ours >= theirs - 0.01, runs
