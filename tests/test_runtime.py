"""ONNX Runtime against torch eager on the same compressed models."""

from __future__ import annotations

import copy

import pytest
import torch

from autocompress.measure import measure_latency
from autocompress.measure.runtime import deploy, int8_ready
from autocompress.plan import Plan
from autocompress.tasks import accuracy
from autocompress.techniques import prune, quantize
from autocompress.techniques.common import Context, bake


def compressed(teacher, digits, **choices):
    ctx = Context(teacher=teacher, train_x=digits.train.x, train_y=digits.train.y,
                  example_input=digits.train.x[:1])
    plan = Plan(choices)
    return bake(quantize.apply(prune.apply(copy.deepcopy(teacher), plan, ctx), plan, ctx))


@pytest.mark.parametrize("teacher_name", ["mlp_teacher", "cnn_teacher"])
def test_float_onnx_matches_torch(request, digits, teacher_name):
    model = compressed(request.getfixturevalue(teacher_name), digits, **{"prune.ratio": 0.5})
    ort = deploy(model, "onnxruntime", example_input=digits.train.x[:1], threads=1)
    assert not ort.int8
    with torch.no_grad():
        assert torch.allclose(ort(digits.val.x), model(digits.val.x), atol=1e-4)


@pytest.mark.parametrize("teacher_name", ["mlp_teacher", "cnn_teacher"])
def test_int8_onnx_agrees_with_torch_within_tolerance(request, digits, teacher_name):
    model = compressed(request.getfixturevalue(teacher_name), digits, **{"quantize.bits": 8})
    assert int8_ready(model)
    ort = deploy(model, "onnxruntime", example_input=digits.train.x[:1], threads=1,
                 calibration=digits.train.x)
    assert ort.int8
    with torch.no_grad():
        ours, theirs = model(digits.val.x), ort(digits.val.x)
    agree = float((ours.argmax(1) == theirs.argmax(1)).float().mean())
    assert agree >= 0.97
    assert abs(accuracy(ort, digits.val) - accuracy(model, digits.val)) <= 0.02
    scale = float(ours.abs().max())
    assert float((ours - theirs).abs().max()) <= 0.1 * scale


def test_torch_runtime_is_the_model_itself_and_latency_is_timed_on_the_deployed_form(
        mlp_teacher, digits):
    assert deploy(mlp_teacher, "torch", example_input=digits.train.x[:1], threads=1) is mlp_teacher
    ort = deploy(mlp_teacher, "onnxruntime", example_input=digits.train.x[:1], threads=1)
    latency = measure_latency(ort, digits.train.x[:1], batch_size=8, warmup=2, repeats=5)
    assert latency.median_ms > 0 and latency.batch_size == 8
    with pytest.raises(ValueError, match="unknown runtime"):
        deploy(mlp_teacher, "tvm", example_input=digits.train.x[:1], threads=1)


def test_torch_runtime_runs_int8_linear_kernels_for_8_bit_models(mlp_teacher, digits):
    model = compressed(mlp_teacher, digits, **{"quantize.bits": 8})
    deployed = deploy(model, "torch", example_input=digits.train.x[:1], threads=1)
    assert deployed.int8 and deployed is not model
    assert type(deployed[1]).__module__.startswith("torch.ao.nn.quantized.dynamic")
    with torch.no_grad():
        agree = (deployed(digits.val.x).argmax(1) == model(digits.val.x).argmax(1)).float().mean()
    assert float(agree) >= 0.97
