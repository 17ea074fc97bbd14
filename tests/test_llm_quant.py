"""Weight-only quantization (RTN, GPTQ) of decoder LMs and their packed stored form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from llm_tiny import tiny_llama, token_batch
from torch import nn

from autocompress.errors import ConfigError
from autocompress.llm.store import load, pack, pack_bits, read_header, unpack, unpack_bits
from autocompress.llm.weight_quant import (
    QUANT_ATTRIBUTE,
    Format,
    dequantize,
    encode,
    gptq,
    quantize_groups,
    quantize_model,
    rtn,
)

# --- one weight ---


def test_rtn_by_hand():
    w = torch.tensor([[-0.3, 0.1, 0.35, 0.6]])
    # asymmetric 2 bits: range [-0.3, 0.6], scale 0.9 / 3 = 0.3 -> float16 0.300048828125,
    # zero round(0.3 / s) = 1, codes round(w / s) + 1 = [-1, 0, 1, 2] + 1
    codes, scales, zeros = quantize_groups(w, Format(2, 4, symmetric=False))
    s = 0.300048828125
    assert codes.tolist() == [[0, 1, 2, 3]] and scales.item() == s and zeros.tolist() == [[1]]
    assert rtn(w, Format(2, 4)).tolist() == [[-s, 0.0, s, 2 * s]]
    # symmetric 3 bits: scale max|w| / 3 = 0.2 -> float16 0.199951171875; signed codes
    # round(w / s) = [-2, 1, 2, 3] (-1.5004 rounds to -2), stored offset by 4
    codes, scales, zeros = quantize_groups(w, Format(3, None, symmetric=True))
    s = 0.199951171875
    assert codes.tolist() == [[2, 5, 6, 7]] and scales.item() == s and zeros is None
    assert rtn(w, Format(3, 0, symmetric=True)).tolist() == [[-2 * s, s, 2 * s, 3 * s]]


def test_bad_formats_are_one_line_config_errors():
    for kwargs in ({"bits": 9}, {"bits": 1}, {"group_size": -4}, {"bits": 4.0}):
        with pytest.raises(ConfigError, match="expected") as info:
            Format(**kwargs)
        assert "\n" not in str(info.value)


def test_a_group_size_that_does_not_divide_the_width_leaves_a_shorter_last_group():
    # SmolLM2's width 576 in groups of 128 is 4 groups of 128 and one of 64; here 5 = 3 + 2
    w = torch.tensor([[0.0, 0.3, 0.6, -0.4, 0.2]])
    _, scales, zeros = quantize_groups(w, Format(2, 3))
    assert scales.shape == (1, 2) and zeros.shape == (1, 2)
    first, last = rtn(w[:, :3], Format(2, 3)), rtn(w[:, 3:], Format(2, 2))  # each group alone
    assert torch.equal(rtn(w, Format(2, 3)), torch.cat([first, last], dim=1))
    x = torch.randn(64, 10) @ torch.randn(10, 10)
    weight = torch.randn(6, 10)
    deq, gcodes, gscales, gzeros = gptq(weight, x.T @ x, Format(3, 4))
    assert gscales.shape == (6, 3)
    assert torch.equal(dequantize(gcodes, gscales, gzeros, Format(3, 4), (6, 10)), deq)


def _correlated(n: int = 512, d: int = 256, out: int = 48, seed: int = 0):
    """Inputs X = Z A (a random mixing of independent features: strongly correlated columns)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=generator) @ torch.randn(d, d, generator=generator)
    return x, torch.randn(out, d, generator=generator)


@pytest.mark.parametrize("fmt", [Format(3, 128), Format(4, None)])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_beats_rtn_on_correlated_inputs(fmt, act_order):
    x, w = _correlated()
    hessian = x.double().T @ x.double()
    q, codes, scales, zeros = gptq(w, hessian, fmt, act_order=act_order)
    rtn_error = (x @ (w - rtn(w, fmt)).T).norm()
    assert (x @ (w - q).T).norm() < 0.85 * rtn_error
    assert torch.equal(dequantize(codes, scales, zeros, fmt, w.shape), q)
    assert torch.equal(encode(q, scales, zeros, fmt), codes)  # codes recovered from the weights


@pytest.mark.parametrize("fmt", [Format(3, 128), Format(4, None), Format(4, 32, symmetric=True)])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_with_identity_hessian_is_rtn(fmt, act_order):
    _, w = _correlated(n=8, d=128)
    q, *_ = gptq(w, 7.0 * torch.eye(w.shape[1], dtype=torch.float64), fmt, act_order=act_order)
    assert torch.equal(q, rtn(w, fmt))


def test_gptq_lazy_blocks_change_nothing_and_dead_columns_are_zero():
    x, w = _correlated(d=96)
    x[:, 5] = 0.0  # an input never seen
    hessian = x.double().T @ x.double()
    fmt = Format(3, 32)  # groups that straddle blocks of 20 columns
    results = [gptq(w, hessian, fmt, block_size=size) for size in (128, 20, 1)]
    for other in results[1:]:
        assert torch.equal(other[1], results[0][1])
    assert torch.all(results[0][0][:, 5] == 0)


# --- a whole decoder ---


def _group_values(weight: torch.Tensor, group: int) -> int:
    rows, cols = weight.shape
    grouped = weight.detach().reshape(rows * (cols // group), group)
    return max(len(torch.unique(row)) for row in grouped)


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_quantize_model_grid_and_tied_table(method):
    model = tiny_llama()
    table = model.model.embed_tokens.weight.detach().clone()
    tokens = token_batch(4, 16)
    formats = quantize_model(model, tokens, method=method, fmt=Format(3, 16),
                             per_layer={"down_proj": Format(2, 32, symmetric=True)},
                             embeddings=Format(4, 8))
    linears = [n for n, m in model.model.layers.named_modules() if isinstance(m, nn.Linear)]
    assert len(formats) == len(linears) + 1 and "lm_head" not in formats
    for name, fmt in formats.items():
        weight = model.get_submodule(name).weight
        assert _group_values(weight, fmt.group(weight.shape[1])) <= 2**fmt.bits
        assert fmt == (Format(2, 32, True) if name.endswith("down_proj") else
                       Format(4, 8) if name.endswith("embed_tokens") else Format(3, 16))
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied
    assert torch.equal(model.lm_head.weight, rtn(table, Format(4, 8)))  # quantized once
    assert torch.isfinite(model(tokens).logits).all()


def test_gptq_model_closer_to_the_original_than_rtn():
    calibration, held_out = token_batch(8, 32, seed=1), token_batch(8, 32, seed=2)
    errors = {}
    for method in ("rtn", "gptq"):
        model = tiny_llama()
        before = model(held_out).logits
        quantize_model(model, calibration, method=method, fmt=Format(3, 32), act_order=True)
        errors[method] = (model(held_out).logits - before).square().mean()
    assert errors["gptq"] < 0.9 * errors["rtn"]


def test_untied_head_gets_the_embedding_format():
    model = tiny_llama()
    model.lm_head.weight = nn.Parameter(model.lm_head.weight.detach().clone())
    formats = quantize_model(model, None, method="rtn", fmt=Format(4, 32),
                             embeddings=Format(8, None))
    assert formats["lm_head"] == formats["model.embed_tokens"] == Format(8, None)


def test_quantize_model_rejects_bad_arguments_before_changing_anything():
    model = tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cases = [({"method": "awq", "fmt": Format()}, "method: got 'awq'"),
             ({"method": "rtn", "fmt": Format(4, 32), "per_layer": {"down_proj": "4-bit"}},
              "per_layer"),
             ({"method": "rtn", "fmt": Format(), "per_layer": {"q_prj": Format()}},
              "did you mean 'q_proj'"),
             ({"method": "gptq", "fmt": Format(4, 32)}, "tokens: got None")]
    for kwargs, message in cases:
        with pytest.raises(ConfigError, match=message):
            quantize_model(model, None, **kwargs)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# --- the stored form ---


def _fresh_copy(data: bytes) -> nn.Module:
    model = tiny_llama(seed=123)
    model.load_state_dict(unpack(data))
    return model


def _payload(data: bytes) -> int:
    return len(data) - read_header(data)[1]


def test_round_trip_after_gptq_4bit_g32():
    model, tokens = tiny_llama(), token_batch(4, 16)
    formats = quantize_model(model, tokens, method="gptq", fmt=Format(4, 32))
    data = pack(model, formats)
    copy = _fresh_copy(data)
    torch.testing.assert_close(copy(tokens).logits, model(tokens).logits, atol=1e-5, rtol=0)
    assert copy.lm_head.weight is copy.model.embed_tokens.weight
    again = tiny_llama(seed=7)
    assert load(again, data) == formats and pack(again, formats) == data  # packs to the same bytes
    model.model.layers[0].mlp.up_proj.weight.data[0, 0] += 1e-3  # off the grid: refused
    with pytest.raises(ConfigError, match="off the recorded grid"):
        pack(model, formats)


def _halve(model: nn.Module) -> int:
    """Zero the smaller half of every decoder linear's row; returns the weights touched."""
    total = 0
    with torch.no_grad():
        for module in model.model.layers.modules():
            if isinstance(module, nn.Linear):
                w = module.weight
                drop = w.abs().argsort(dim=1)[:, : w.shape[1] // 2]
                w.scatter_(1, drop, 0.0)
                total += w.numel()
    return total


def test_round_trip_and_size_after_50_percent_sparsity():
    model, tokens = tiny_llama(), token_batch(4, 16)
    dense = _payload(pack(model, {}))
    n = _halve(model)
    data = pack(model, {})
    torch.testing.assert_close(_fresh_copy(data)(tokens).logits, model(tokens).logits,
                               atol=1e-5, rtol=0)
    # per linear: one mask bit per weight and float32 values for the kept half
    assert dense - _payload(data) == 4 * n - (n // 8 + 4 * n // 2)
    # sparse and 4-bit: the zeros stay exact zeros (the grid holds 0), masked out of the codes
    formats = quantize_model(model, None, method="rtn", fmt=Format(4, 32))
    assert all((m.weight == 0).float().mean() >= 0.5 for m in model.model.layers.modules()
               if isinstance(m, nn.Linear))
    data = pack(model, formats)
    torch.testing.assert_close(_fresh_copy(data)(tokens).logits, model(tokens).logits,
                               atol=1e-5, rtol=0)
    codes = [e["codes"][1] for e in read_header(data)[0]["tensors"] if e["kind"] == "quant"]
    assert sum(codes) == n // 2 * 4 // 8


def test_4bit_g32_size_matches_the_hand_count():
    model = tiny_llama(hidden=128, intermediate=256)
    formats = quantize_model(model, None, method="rtn", fmt=Format(4, 32))
    linear = 2 * (128 * 128 + 64 * 128 + 64 * 128 + 128 * 128 + 3 * 256 * 128)
    table, norms = 97 * 128, 5 * 128
    groups = linear // 32
    expected = linear * 4 // 8 + 2 * groups + groups * 4 // 8 + 4 * (table + norms)
    float32 = 4 * (linear + table + norms)  # the tied table once
    data = pack(model, formats)
    assert _payload(data) == expected
    assert len(data) / float32 == pytest.approx(expected / float32, rel=0.03)
    assert len(data) < 0.4 * float32


def test_3bit_codes_take_exactly_3_bits():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 8, size=1001).astype(np.uint8)
    packed = pack_bits(values, 3)
    assert len(packed) == math.ceil(1001 * 3 / 8)
    assert np.array_equal(unpack_bits(packed, 3, 1001), values)
    for bits in range(1, 9):
        values = rng.integers(0, 2**bits, size=77).astype(np.uint8)
        assert np.array_equal(unpack_bits(pack_bits(values, bits), bits, 77), values)
    model = tiny_llama()
    formats = quantize_model(model, None, method="rtn", fmt=Format(3, 32, symmetric=True))
    entries = {e["name"]: e for e in read_header(pack(model, formats))[0]["tensors"]}
    for name in formats:
        numel = model.get_submodule(name).weight.numel()
        assert entries[f"{name}.weight"]["codes"][1] == math.ceil(numel * 3 / 8)


def test_tied_table_is_stored_once():
    model = tiny_llama()
    tied = pack(model, {})
    assert read_header(tied)[0]["tensors"][-1] == {
        "name": "lm_head.weight", "shape": [97, 32], "dtype": "float32",
        "kind": "alias", "of": "model.embed_tokens.weight"}
    model.lm_head.weight = nn.Parameter(model.lm_head.weight.detach().clone())
    untied = pack(model, {})
    assert _payload(untied) - _payload(tied) == 97 * 32 * 4
    assert len(untied) - len(tied) >= 97 * 32 * 4
    # a quantized tied table: its codes, scales and zero points once
    model = tiny_llama()
    formats = quantize_model(model, None, method="rtn", fmt=Format(4, 32),
                             embeddings=Format(4, 16))
    data = pack(model, formats)
    assert _fresh_copy(data).lm_head.weight.equal(model.lm_head.weight)
    assert [e["kind"] for e in read_header(data)[0]["tensors"]].count("alias") == 1


def test_float16_storage_and_model_attribute_kept():
    model = tiny_llama()
    formats = quantize_model(model, None, method="rtn", fmt=Format(4, 32))
    assert getattr(model.model.layers[0].self_attn.q_proj, QUANT_ATTRIBUTE).fmt == Format(4, 32)
    half, full = pack(model, formats, floats="float16"), pack(model, formats)
    assert _payload(full) - _payload(half) == 2 * (97 * 32 + 5 * 32)
    with pytest.raises(ConfigError, match="floats"):
        pack(model, formats, floats="int8")
