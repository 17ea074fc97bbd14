from __future__ import annotations

import numpy as np
import pytest
import torch

from autocompress.packing import (
    channel_scales,
    pack_state_dict,
    pack_uint,
    qmax,
    unpack_state_dict,
    unpack_uint,
)


@pytest.mark.parametrize("bits", [1, 2, 3, 5, 8, 13])
def test_pack_uint_round_trip(bits):
    codes = np.random.default_rng(bits).integers(0, 2**bits, size=1001)
    data = pack_uint(codes, bits)
    assert len(data) == -(-1001 * bits // 8)
    assert np.array_equal(unpack_uint(data, bits, 1001), codes)


def on_grid(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Snap a weight to the symmetric per-channel grid the packer uses."""
    scale = torch.from_numpy(channel_scales(weight.numpy(), bits)).double()[:, None]
    flat = weight.double().reshape(weight.shape[0], -1)
    return (torch.round(flat / scale).clamp(-qmax(bits), qmax(bits)) * scale).reshape(weight.shape)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
@pytest.mark.parametrize("density", [1.0, 0.3, 0.03])
def test_quantized_sparse_tensors_round_trip(bits, density):
    gen = torch.Generator().manual_seed(bits)
    weight = torch.randn(20, 3, 5, 5, generator=gen)
    weight[torch.rand(weight.shape, generator=gen) > density] = 0.0
    weight = on_grid(weight, bits).float()
    state = {"conv.weight": weight, "conv.bias": torch.randn(20), "steps": torch.tensor(7)}
    out = unpack_state_dict(pack_state_dict(state, {"conv.weight": bits}))
    assert torch.allclose(out["conv.weight"], weight, rtol=1e-6, atol=1e-7)
    assert torch.equal(out["conv.weight"] == 0, weight == 0)
    assert torch.equal(out["conv.bias"], state["conv.bias"])
    assert torch.equal(out["steps"], state["steps"]) and out["steps"].dtype == torch.int64


@pytest.mark.parametrize("density", [1.0, 0.5, 0.01])
def test_float_tensors_round_trip_exactly(density):
    weight = torch.randn(64, 100)
    weight[torch.rand(weight.shape) > density] = 0.0
    out = unpack_state_dict(pack_state_dict({"w": weight}))
    assert torch.equal(out["w"], weight)


def test_sizes_follow_bits_and_sparsity():
    weight = torch.randn(300, 784)
    dense32 = len(pack_state_dict({"w": weight}))
    dense8 = len(pack_state_dict({"w": weight}, {"w": 8}))
    assert dense32 == pytest.approx(300 * 784 * 4, rel=1e-3)
    assert dense8 == pytest.approx(300 * 784 + 300 * 4, rel=1e-3)  # codes plus one scale a row
    sparse = weight.clone()
    sparse[torch.rand(sparse.shape) > 0.1] = 0  # about 10% left
    packed = len(pack_state_dict({"w": sparse}, {"w": 8}))
    nnz = int((on_grid(sparse, 8) != 0).sum())
    # each non-zero costs its 8-bit code plus a few bits of index, never more than 8 bits
    assert nnz * 8 / 8 < packed < nnz * 16 / 8 + 300 * 4 + 100


def test_rejects_foreign_bytes_and_bad_widths():
    with pytest.raises(ValueError, match="magic"):
        unpack_state_dict(b"nope")
    with pytest.raises(ValueError, match="bit width"):
        pack_state_dict({"w": torch.ones(2, 2)}, {"w": 12})


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8, 16, 32])
@pytest.mark.parametrize("density", [1.0, 0.4, 0.05, 0.0])
@pytest.mark.parametrize("asymmetric", [False, True])
def test_packed_size_is_exactly_the_packed_length(bits, density, asymmetric):
    from autocompress.packing import packed_size

    gen = torch.Generator().manual_seed(bits)
    weight = torch.randn(17, 33, generator=gen)
    weight[torch.rand(weight.shape, generator=gen) > density] = 0.0
    state = {"layer.weight": weight, "layer.bias": torch.randn(17), "n": torch.tensor([1, 2])}
    args = ({"layer.weight": bits}, ["layer.weight"] if asymmetric else [])
    assert packed_size(state, *args) == len(pack_state_dict(state, *args))


def test_a_tensor_shared_under_two_names_is_stored_once_and_unpacks_as_one():
    from autocompress.packing import aliases, packed_size

    table = torch.randn(50, 20)
    state = {"embed.weight": table, "bias": torch.randn(20), "head.weight": table,
             "copy": table.clone(), "rows": table[:10]}  # equal values or a part: not a tie
    bits = {"embed.weight": 4, "head.weight": 4}
    assert aliases(state) == {"head.weight": "embed.weight"}
    blob = pack_state_dict(state, bits)
    assert packed_size(state, bits) == len(blob)
    alone = pack_state_dict({k: v for k, v in state.items() if k != "head.weight"}, bits={
        "embed.weight": 4})
    header = 2 + len("head.weight") + 1 + len("float32") + 1 + 2 * 4 + 8
    assert len(blob) - len(alone) == header + 3 * 4 + len("embed.weight")  # names its target
    out = unpack_state_dict(blob)
    assert out["head.weight"] is out["embed.weight"]
    assert out["copy"] is not out["embed.weight"] and torch.equal(out["copy"], table)
    assert torch.equal(out["rows"], table[:10])


def test_version_1_files_still_read():
    state = {"w": torch.randn(3, 4)}
    blob = pack_state_dict(state)
    assert torch.equal(unpack_state_dict(blob[:4] + bytes([1]) + blob[5:])["w"], state["w"])
    with pytest.raises(ValueError, match="version 9"):
        unpack_state_dict(blob[:4] + bytes([9]) + blob[5:])
