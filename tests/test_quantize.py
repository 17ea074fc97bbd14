from __future__ import annotations

import copy

import pytest
import torch
from helpers import ctx_for

from autocompress.measure import pack_model, stored_bytes
from autocompress.packing import pack_state_dict, unpack_state_dict
from autocompress.plan import Plan
from autocompress.techniques import distill, prune, quantize
from autocompress.techniques.common import Context, bake, weight_layers


@pytest.mark.parametrize("bits", [2, 3, 5, 6, 8])
def test_asymmetric_grid_levels_zero_and_packing_round_trip(mlp_teacher, digits, bits):
    plan = Plan({"prune.ratio": 0.6, "quantize.bits": bits, "quantize.scheme": "asymmetric"})
    ctx = ctx_for(mlp_teacher, digits)
    model = bake(quantize.apply(prune.apply(copy.deepcopy(mlp_teacher), plan, ctx), plan, ctx))
    for _, layer in weight_layers(model):
        assert quantize.levels_per_channel(layer.weight) <= 2**bits
    assert prune.sparsity(model) >= 0.6 - 1e-6  # pruned zeros stay exactly zero
    state = model.state_dict()
    names = [f"{n}.weight" for n, _ in weight_layers(model)]
    blob = pack_state_dict(state, dict.fromkeys(names, bits), asymmetric=names)
    out = unpack_state_dict(blob)
    for name in names:
        assert torch.allclose(out[name], state[name], rtol=1e-5, atol=1e-6)
        assert torch.equal(out[name] == 0, state[name] == 0)
    assert len(blob) == stored_bytes(model)


def test_ptq_trains_in_float_then_quantizes_with_calibrated_clipping(mlp_teacher, digits):
    plan = Plan({"quantize.bits": 3, "quantize.mode": "ptq"})
    ctx = ctx_for(mlp_teacher, digits, epochs=1)
    model = quantize.apply(copy.deepcopy(mlp_teacher), plan, ctx)
    before = model[1].weight.detach().clone()
    assert quantize.levels_per_channel(before) > 2**3  # still float while fine-tuning
    distill.apply(model, plan, ctx)
    bake(model)
    assert quantize.levels_per_channel(model[1].weight) <= 2**3


def test_ptq_calibration_never_does_worse_than_no_clipping():
    torch.manual_seed(0)
    weight = torch.randn(16, 64)
    weight[:, 0] = 8.0  # an outlier per channel: clipping should pay off
    fq = quantize.FakeQuantize(3)
    plain = ((fq(weight) - weight) ** 2).sum()
    fq.calibrate(weight)
    tuned = ((fq(weight) - weight) ** 2).sum()
    assert tuned <= plain and float(fq.clip.min()) < 1.0


def test_mixed_precision_per_layer_and_last_layer_8bit(mlp_teacher, digits):
    plan = Plan({"quantize.bits.1": 2, "quantize.bits.3": 4, "quantize.bits.5": 2,
                 "quantize.last_layer_8bit": True})
    model = bake(quantize.apply(copy.deepcopy(mlp_teacher), plan, ctx_for(mlp_teacher, digits)))
    assert [m.weight_bits for _, m in weight_layers(model)] == [2, 4, 8]
    assert [quantize.levels_per_channel(m.weight) <= 2**b
            for (_, m), b in zip(weight_layers(model), [2, 4, 8], strict=True)] == [True] * 3
    uniform = bake(quantize.apply(copy.deepcopy(mlp_teacher), Plan({"quantize.bits": 8}),
                                  ctx_for(mlp_teacher, digits)))
    assert stored_bytes(model) < stored_bytes(uniform)


class TiedNet(torch.nn.Module):
    """A token table and an output layer sharing it, with a layer of its own between."""

    def __init__(self) -> None:
        super().__init__()
        self.table = torch.nn.Embedding(40, 16)
        self.mid = torch.nn.Linear(16, 16)
        self.head = torch.nn.Linear(16, 40, bias=False)
        self.head.weight = self.table.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.mid(self.table(ids)).mean(dim=1))


def tied_ctx(model: torch.nn.Module) -> Context:
    ids = torch.randint(0, 40, (8, 5), generator=torch.Generator().manual_seed(0))
    return Context(teacher=model, train_x=ids, train_y=torch.zeros(8, dtype=torch.long),
                   example_input=ids[:1])


def test_a_tie_follows_its_table_and_gets_one_quantizer():
    torch.manual_seed(0)
    teacher = TiedNet()
    off = quantize.apply(copy.deepcopy(teacher), Plan({"quantize.bits": 4}), tied_ctx(teacher))
    assert off.mid.weight_bits == 4  # tables float by default, and so their tied head
    assert not hasattr(off.head, "weight_bits") and not hasattr(off.table, "weight_bits")
    assert off.head.weight is off.table.weight
    plan = Plan({"quantize.bits": 4, "quantize.embeddings": True, "quantize.mode": "ptq"})
    ctx = tied_ctx(teacher)
    on = quantize.apply(copy.deepcopy(teacher), plan, ctx)
    shared = quantize._quantizer(on.table)
    assert shared is quantize._quantizer(on.head) and not shared.enabled
    assert on.head.weight_tied_to == "table.weight" and on.head.weight_bits == 4
    for hook in ctx.registered.after_training:
        hook(on)  # PTQ calibrates the shared quantizer once
    assert shared.enabled and torch.equal(on.head.weight, on.table.weight)
    assert quantize.levels_per_channel(on.table.weight) <= 15
    baked = bake(copy.deepcopy(on))
    blob_size = stored_bytes(baked)
    assert blob_size == stored_bytes(on)
    assert unpack_state_dict(pack_model(baked))["head.weight"].shape == (40, 16)
    baked.head.weight.data[0, 0] += 1.0  # no longer equal: no longer counted once
    assert stored_bytes(baked) > blob_size
