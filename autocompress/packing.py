"""The stored form of a compressed model: sparse, bit-packed, byte-exact.

``memory_bytes`` everywhere in autocompress is ``len(pack_state_dict(...))``: the size of a real
byte string that :func:`unpack_state_dict` turns back into the same tensors, not an estimate.

Per tensor the encoder picks the smallest of three layouts for the non-zeros:

* dense: every element;
* bitmap: one bit per element saying "non-zero", then the non-zero values;
* relative: ``(gap, value)`` pairs with ``k``-bit gaps, a zero "filler" entry where a gap does not
  fit (the index coding of Deep Compression, Han et al. 2016), with ``k`` chosen per tensor.

Values are float32 (``bits=32``), float16 (``bits=16``) or symmetric per-output-channel integer
codes of ``bits`` bits (2..8) with one float32 scale per output channel.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

MAGIC = b"ACPK"
VERSION = 1
DENSE, BITMAP, RELATIVE = 0, 1, 2
FLOAT_BITS = (16, 32)
INT_BITS = range(2, 9)
MAX_GAP_BITS = 16
# A quantized layer carries its weight width in this attribute (set by techniques.quantize,
# read by measure.memory): the one link between compressing a layer and measuring it.
BITS_ATTRIBUTE = "weight_bits"


def pack_uint(codes: np.ndarray, bits: int) -> bytes:
    """Pack unsigned integers below ``2**bits`` at ``bits`` bits each, little-endian bit order."""
    codes = np.asarray(codes, dtype=np.uint64).reshape(-1)
    shifts = np.arange(bits, dtype=np.uint64)
    bit_matrix = ((codes[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bit_matrix.reshape(-1), bitorder="little").tobytes()


def unpack_uint(data: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_uint`."""
    flat = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
    bit_matrix = flat[: count * bits].reshape(count, bits).astype(np.uint64)
    return (bit_matrix << np.arange(bits, dtype=np.uint64)).sum(axis=1)


def qmax(bits: int) -> int:
    """Largest code of a symmetric ``bits``-bit quantizer: 2**(bits-1) - 1 (2 bits: -1, 0, 1)."""
    return 2 ** (bits - 1) - 1


def channel_scales(weight: np.ndarray, bits: int) -> np.ndarray:
    """Per-output-channel symmetric scales: max |w| of the channel over ``qmax(bits)``."""
    rows = weight.reshape(weight.shape[0], -1) if weight.ndim > 1 else weight.reshape(1, -1)
    peak = np.abs(rows).max(axis=1) if rows.size else np.zeros(rows.shape[0])
    scales = peak / qmax(bits)
    return np.where(scales > 0, scales, 1.0).astype(np.float32)


@dataclass(frozen=True)
class _Layout:
    kind: int
    gap_bits: int
    entries: int
    payload_bits: int


def _choose_layout(nonzero: np.ndarray, value_bits: int) -> _Layout:
    """The cheapest layout for this non-zero pattern, computed from counts alone."""
    numel = nonzero.size
    positions = np.flatnonzero(nonzero)
    nnz = positions.size
    best = _Layout(DENSE, 0, numel, numel * value_bits)
    bitmap = _Layout(BITMAP, 0, nnz, numel + nnz * value_bits)
    if bitmap.payload_bits < best.payload_bits:
        best = bitmap
    if nnz:
        gaps = np.diff(np.concatenate(([-1], positions))) - 1
        for k in range(1, MAX_GAP_BITS + 1):
            entries = nnz + int((gaps >> k).sum())
            cost = entries * (k + value_bits)
            if cost < best.payload_bits:
                best = _Layout(RELATIVE, k, entries, cost)
    return best


def _values_to_bytes(values: np.ndarray, bits: int) -> bytes:
    if bits == 32:
        return values.astype("<f4").tobytes()
    if bits == 16:
        return values.astype("<f2").tobytes()
    return pack_uint(values, bits)


def _values_from_bytes(data: bytes, bits: int, count: int) -> np.ndarray:
    if bits == 32:
        return np.frombuffer(data, dtype="<f4", count=count).astype(np.float64)
    if bits == 16:
        return np.frombuffer(data, dtype="<f2", count=count).astype(np.float64)
    return unpack_uint(data, bits, count).astype(np.int64)


def _encode_float_tensor(array: np.ndarray, bits: int) -> tuple[bytes, bytes, bytes, _Layout]:
    """(scales, index payload, values payload, layout) for one float tensor."""
    flat = array.reshape(-1).astype(np.float64)
    scales = b""
    if bits in FLOAT_BITS:
        stored = flat
        zero_value = 0.0
    else:
        scale = channel_scales(array, bits)
        per_element = np.repeat(scale, flat.size // scale.size if scale.size else 0)
        codes = np.clip(np.rint(flat / per_element), -qmax(bits), qmax(bits)).astype(np.int64)
        stored = codes + qmax(bits)  # unsigned codes; zero is qmax(bits)
        zero_value = qmax(bits)
        flat = codes.astype(np.float64)  # non-zero pattern after quantization
        scales = scale.astype("<f4").tobytes()
    nonzero = flat != 0
    layout = _choose_layout(nonzero, bits)
    if layout.kind == DENSE:
        index, values = b"", stored
    elif layout.kind == BITMAP:
        index = np.packbits(nonzero.astype(np.uint8), bitorder="little").tobytes()
        values = stored[nonzero]
    else:
        positions = np.flatnonzero(nonzero)
        gaps = np.diff(np.concatenate(([-1], positions))) - 1
        span = 1 << layout.gap_bits
        fillers = gaps // span
        real_at = np.cumsum(fillers + 1) - 1
        out_gaps = np.full(layout.entries, span - 1, dtype=np.int64)
        out_gaps[real_at] = gaps % span
        values = np.full(layout.entries, zero_value, dtype=stored.dtype)
        values[real_at] = stored[positions]
        index = pack_uint(out_gaps, layout.gap_bits)
    return scales, index, _values_to_bytes(values, bits), layout


def _decode_float_tensor(
    shape: tuple[int, ...], bits: int, layout: _Layout, scales: bytes, index: bytes, payload: bytes
) -> np.ndarray:
    numel = int(np.prod(shape)) if shape else 1
    values = _values_from_bytes(payload, bits, layout.entries)
    flat = np.zeros(numel, dtype=np.float64)
    if layout.kind == DENSE:
        flat[:] = values
        codes_at = np.arange(numel)
    elif layout.kind == BITMAP:
        mask = np.unpackbits(np.frombuffer(index, np.uint8), bitorder="little")[:numel].astype(bool)
        codes_at = np.flatnonzero(mask)
        flat[codes_at] = values
    else:
        gaps = unpack_uint(index, layout.gap_bits, layout.entries).astype(np.int64)
        codes_at = np.cumsum(gaps + 1) - 1
        flat[codes_at] = values
    if bits not in FLOAT_BITS:
        scale = np.frombuffer(scales, dtype="<f4").astype(np.float64)
        per_element = np.repeat(scale, numel // scale.size)
        stored = np.full(numel, float(qmax(bits)))
        stored[codes_at] = flat[codes_at]
        flat = (stored - qmax(bits)) * per_element
    return flat.reshape(shape)


def _pack_header(
    name: str, dtype: str, shape: tuple[int, ...], bits: int, layout: _Layout
) -> bytes:
    name_b, dtype_b = name.encode(), dtype.encode()
    head = struct.pack("<H", len(name_b)) + name_b + struct.pack("<B", len(dtype_b)) + dtype_b
    head += struct.pack("<B", len(shape)) + struct.pack(f"<{len(shape)}I", *shape)
    return head + struct.pack("<BBBI", bits, layout.kind, layout.gap_bits, layout.entries)


def pack_state_dict(
    state_dict: Mapping[str, torch.Tensor], bits: Mapping[str, int] | None = None
) -> bytes:
    """Encode a state dict in its stored form.

    ``bits`` maps a tensor's name to its width (2..8 integer codes, 16 or 32 float); floating
    tensors not named are stored as float32. Zeros are never stored when an index is cheaper.
    Other dtypes (integer buffers) are stored raw.

    >>> import torch
    >>> w = torch.zeros(4, 100); w[:, ::10] = 1.0
    >>> len(pack_state_dict({"w": w}, {"w": 2})) < len(pack_state_dict({"w": w}))
    True
    """
    bits = dict(bits or {})
    unknown = set(bits) - set(state_dict)
    if unknown:
        raise KeyError(f"bit widths given for tensors not in the state dict: {sorted(unknown)}")
    chunks = [MAGIC, struct.pack("<BI", VERSION, len(state_dict))]
    for name, tensor in state_dict.items():
        tensor = tensor.detach().cpu()
        shape = tuple(tensor.shape)
        dtype = str(tensor.dtype).replace("torch.", "")
        if tensor.is_floating_point():
            width = int(bits.get(name, 32))
            if width not in FLOAT_BITS and width not in INT_BITS:
                raise ValueError(f"{name}: bit width {width} not in 2..8, 16 or 32")
            scales, index, payload, layout = _encode_float_tensor(
                tensor.to(torch.float64).numpy(), width
            )
        else:
            width, scales, index = 0, b"", b""
            payload = tensor.numpy().tobytes()
            layout = _Layout(DENSE, 0, tensor.numel(), 8 * len(payload))
        chunks.append(_pack_header(name, dtype, shape, width, layout))
        for part in (scales, index, payload):
            chunks.append(struct.pack("<I", len(part)) + part)
    return b"".join(chunks)


def unpack_state_dict(blob: bytes) -> dict[str, torch.Tensor]:
    """Decode :func:`pack_state_dict`'s bytes back into tensors."""
    if blob[:4] != MAGIC:
        raise ValueError("not an autocompress packed model (bad magic bytes)")
    version, count = struct.unpack_from("<BI", blob, 4)
    if version != VERSION:
        raise ValueError(f"packed model version {version}, this autocompress reads {VERSION}")
    at = 9
    out: dict[str, torch.Tensor] = {}

    def take(fmt: str) -> tuple:
        nonlocal at
        values = struct.unpack_from(fmt, blob, at)
        at += struct.calcsize(fmt)
        return values

    def take_bytes(n: int) -> bytes:
        nonlocal at
        part = blob[at : at + n]
        at += n
        return part

    for _ in range(count):
        name = take_bytes(take("<H")[0]).decode()
        dtype = getattr(torch, take_bytes(take("<B")[0]).decode())
        ndim = take("<B")[0]
        shape = take(f"<{ndim}I")
        bits, kind, gap_bits, entries = take("<BBBI")
        scales, index, payload = (take_bytes(take("<I")[0]) for _ in range(3))
        if bits == 0:
            np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
            array = np.frombuffer(payload, dtype=np_dtype).reshape(shape).copy()
            out[name] = torch.from_numpy(array)
            continue
        layout = _Layout(kind, gap_bits, entries, 0)
        array = _decode_float_tensor(tuple(shape), bits, layout, scales, index, payload)
        out[name] = torch.from_numpy(array).to(dtype)
    return out
