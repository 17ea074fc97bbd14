from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from autocompress.measure import measure_latency, stored_bytes
from autocompress.plan import Plan
from autocompress.techniques import prune, quantize
from autocompress.techniques.common import Context, bake, weight_layers


def compressed(teacher, digits, ratio, bits):
    ctx = Context(teacher=teacher, train_x=digits.train.x, train_y=digits.train.y,
                  example_input=digits.train.x[:1])
    plan = Plan({"prune.ratio": ratio, "quantize.bits": bits})
    model = quantize.apply(prune.apply(copy.deepcopy(teacher), plan, ctx), plan, ctx)
    return bake(model)


def test_teacher_is_stored_as_float32(mlp_teacher):
    params = sum(p.numel() for p in mlp_teacher.parameters())
    assert stored_bytes(mlp_teacher) == pytest.approx(4 * params, rel=0.01)


@pytest.mark.parametrize(("ratio", "bits"), [(0.0, 8), (0.0, 4), (0.9, 32), (0.9, 8), (0.95, 4)])
def test_pruned_and_quantized_model_is_smaller_by_the_expected_factor(
    mlp_teacher, digits, ratio, bits
):
    """Teacher bytes over compressed bytes, against the factor worked out from the counts."""
    model = compressed(mlp_teacher, digits, ratio, bits)
    factor = stored_bytes(mlp_teacher) / stored_bytes(model)
    weights = sum(m.weight.numel() for _, m in weight_layers(model))
    others = sum(p.numel() for p in model.parameters()) - weights  # biases stay float32
    scales = sum(m.weight.shape[0] for _, m in weight_layers(model)) if bits < 32 else 0
    fixed = 4 * (others + scales)
    kept = weights * (1 - ratio)
    if ratio == 0:  # dense codes: exact up to the small headers
        expected = stored_bytes(mlp_teacher) / (kept * bits / 8 + fixed)
        assert factor == pytest.approx(expected, rel=0.01)
    else:  # each kept value costs its bits plus 1..8 bits of index
        best = stored_bytes(mlp_teacher) / (kept * bits / 8 + fixed)
        worst = stored_bytes(mlp_teacher) / (kept * (bits + 8) / 8 + fixed)
        assert worst <= factor <= best


def test_latency_reports_how_it_was_measured(mlp_teacher, digits):
    latency = measure_latency(mlp_teacher, digits.train.x[:1], batch_size=4, threads=1,
                              warmup=2, repeats=7)
    assert latency.median_ms > 0 and latency.noise_ms >= 0
    assert (latency.batch_size, latency.threads, latency.repeats) == (4, 1, 7)


class ThreadSpy(nn.Module):
    """Records torch's thread count at every forward pass (warm-up and timed)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(torch.get_num_threads())
        return x


@pytest.mark.parametrize("threads", [1, 2])
def test_latency_runs_every_pass_at_the_requested_threads_and_restores_them(threads):
    before = torch.get_num_threads()
    other = 3 if threads != 3 else 4  # a count that differs from the one requested
    torch.set_num_threads(other)
    try:
        spy = ThreadSpy()
        latency = measure_latency(spy, torch.zeros(1, 4), threads=threads, warmup=2, repeats=5,
                                  min_warmup_seconds=0.0)
        assert latency.threads == threads
        assert len(spy.seen) == 2 + 5 and set(spy.seen) == {threads}
        assert torch.get_num_threads() == other  # the caller's setting is back afterwards
    finally:
        torch.set_num_threads(before)
