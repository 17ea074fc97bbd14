"""The stored form of a compressed model: sparse, bit-packed, byte-exact.

``memory_bytes`` everywhere in autocompress is ``len(pack_state_dict(...))``: the size of a real
byte string that :func:`unpack_state_dict` turns back into the same tensors, not an estimate.

Per tensor the encoder picks the smallest of three layouts for the non-zeros:

* dense: every element;
* bitmap: one bit per element saying "non-zero", then the non-zero values;
* relative: ``(gap, value)`` pairs with ``k``-bit gaps, a zero "filler" entry where a gap does not
  fit (the index coding of Deep Compression, Han et al. 2016), with ``k`` chosen per tensor.

Values are float32 (``bits=32``), float16 (``bits=16``) or per-output-channel integer codes of
``bits`` bits (2..8): symmetric (one float32 scale per channel) or asymmetric (a scale and an
8-bit zero point per channel). Zero is exact in both, so pruned weights cost nothing. The
channels of an embedding table are its rows: one scale per token.

Tied weights (a language model's output layer sharing its token-embedding matrix) are stored
once: a tensor whose storage an earlier tensor already holds (same data pointer, shape, strides
and dtype) is written as an alias naming that tensor, a few bytes, and unpacks to the very same
tensor object, so loading it keeps the tie.
"""

from __future__ import annotations

import struct
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np
import torch

MAGIC = b"ACPK"
VERSION = 2  # 2 added aliases (tied weights); version 1 files read as before
READABLE = (1, 2)
ALIAS = 255  # the bit width field of an alias record
DENSE, BITMAP, RELATIVE = 0, 1, 2
FLOAT_BITS = (16, 32)
INT_BITS = range(2, 9)
MAX_GAP_BITS = 16
# A quantized layer carries its weight width in this attribute (set by techniques.quantize,
# read by measure.memory): the one link between compressing a layer and measuring it.
BITS_ATTRIBUTE = "weight_bits"
SCHEME_ATTRIBUTE = "weight_scheme"  # "symmetric" or "asymmetric", beside the bits
# On a layer whose weight is tied to an earlier layer's (the state-dict name of that weight):
# equal tensors stored once even where baking gave each layer its own copy.
TIED_ATTRIBUTE = "weight_tied_to"


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


def asymmetric_grid(weight: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel (scale, zero point) of an asymmetric grid covering min..max and 0."""
    rows = weight.reshape(weight.shape[0], -1) if weight.ndim > 1 else weight.reshape(1, -1)
    levels = 2**bits - 1
    low = np.minimum(rows.min(axis=1), 0.0) if rows.size else np.zeros(rows.shape[0])
    high = np.maximum(rows.max(axis=1), 0.0) if rows.size else np.zeros(rows.shape[0])
    scale = np.where(high - low > 0, (high - low) / levels, 1.0).astype(np.float32)
    zero_point = np.clip(np.rint(-low / scale), 0, levels).astype(np.int64)
    return scale, zero_point


def _codes(array: np.ndarray, bits: int, asymmetric: bool):
    """(unsigned codes, zero code of each element, scales bytes) of an integer-coded tensor."""
    flat = array.reshape(-1)
    channels = array.shape[0] if array.ndim > 1 else 1
    per_channel = flat.size // channels if channels else 0
    if asymmetric:
        scale, zero_point = asymmetric_grid(array, bits)
        codes = np.rint(flat / np.repeat(scale, per_channel)) + np.repeat(zero_point, per_channel)
        codes = np.clip(codes, 0, 2**bits - 1).astype(np.int64)
        zero_codes = np.repeat(zero_point, per_channel)
        header = scale.astype("<f4").tobytes() + zero_point.astype(np.uint8).tobytes()
    else:
        scale = channel_scales(array, bits)
        top = qmax(bits)
        codes = np.clip(np.rint(flat / np.repeat(scale, per_channel)), -top, top).astype(np.int64)
        codes += top  # unsigned; zero is `top`
        zero_codes = np.full(flat.size, top, dtype=np.int64)
        header = scale.astype("<f4").tobytes()
    return codes, zero_codes, header


def _analyse(array: np.ndarray, bits: int, asymmetric: bool):
    """(values to store, zero code per element, scales bytes, non-zero mask, layout)."""
    if bits in FLOAT_BITS:
        stored = array.reshape(-1)
        zero_codes = np.zeros(stored.size)
        scales = b""
        nonzero = stored != 0
    else:
        stored, zero_codes, scales = _codes(array, bits, asymmetric)
        nonzero = stored != zero_codes  # the non-zero pattern after quantization
    return stored, zero_codes, scales, nonzero, _choose_layout(nonzero, bits)


def _payload_sizes(layout: _Layout, numel: int, bits: int) -> tuple[int, int]:
    """Byte lengths of (index, values) for a layout, exactly as the encoder writes them."""
    index = {DENSE: 0, BITMAP: -(-numel // 8),
             RELATIVE: -(-layout.entries * layout.gap_bits // 8)}[layout.kind]
    values = layout.entries * bits // 8 if bits in FLOAT_BITS else -(-layout.entries * bits // 8)
    return index, values


def _encode_float_tensor(
    array: np.ndarray, bits: int, asymmetric: bool = False
) -> tuple[bytes, bytes, bytes, _Layout]:
    """(scales, index payload, values payload, layout) for one float tensor."""
    stored, zero_codes, scales, nonzero, layout = _analyse(array, bits, asymmetric)
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
        at = np.cumsum(out_gaps + 1) - 1  # where every entry, filler or real, lands
        values = zero_codes[at].astype(stored.dtype)  # fillers decode to an exact zero
        values[real_at] = stored[positions]
        index = pack_uint(out_gaps, layout.gap_bits)
    return scales, index, _values_to_bytes(values, bits), layout


def _decode_float_tensor(
    shape: tuple[int, ...], bits: int, asymmetric: bool, layout: _Layout, scales: bytes,
    index: bytes, payload: bytes,
) -> np.ndarray:
    numel = int(np.prod(shape)) if shape else 1
    values = _values_from_bytes(payload, bits, layout.entries)
    if layout.kind == DENSE:
        at = np.arange(numel)
    elif layout.kind == BITMAP:
        mask = np.unpackbits(np.frombuffer(index, np.uint8), bitorder="little")[:numel]
        at = np.flatnonzero(mask)
    else:
        gaps = unpack_uint(index, layout.gap_bits, layout.entries).astype(np.int64)
        at = np.cumsum(gaps + 1) - 1
    if bits in FLOAT_BITS:
        flat = np.zeros(numel, dtype=np.float64)
        flat[at] = values
        return flat.reshape(shape)
    channels = shape[0] if len(shape) > 1 else 1
    per_channel = numel // channels
    scale = np.frombuffer(scales, dtype="<f4", count=channels).astype(np.float64)
    if asymmetric:
        zero_codes = np.frombuffer(scales, dtype=np.uint8, offset=4 * channels).astype(np.int64)
    else:
        zero_codes = np.full(channels, qmax(bits), dtype=np.int64)
    zero_flat = np.repeat(zero_codes, per_channel)
    codes = zero_flat.copy()
    codes[at] = values
    return ((codes - zero_flat) * np.repeat(scale, per_channel)).reshape(shape)


def _pack_header(
    name: str, dtype: str, shape: tuple[int, ...], bits: int, flags: int, layout: _Layout
) -> bytes:
    name_b, dtype_b = name.encode(), dtype.encode()
    head = struct.pack("<H", len(name_b)) + name_b + struct.pack("<B", len(dtype_b)) + dtype_b
    head += struct.pack("<B", len(shape)) + struct.pack(f"<{len(shape)}I", *shape)
    return head + struct.pack("<BBBBI", bits, flags, layout.kind, layout.gap_bits, layout.entries)


def _width(name: str, tensor: torch.Tensor, bits: Mapping[str, int]) -> int:
    width = int(bits.get(name, 32))
    if width not in FLOAT_BITS and width not in INT_BITS:
        raise ValueError(f"{name}: bit width {width} not in 2..8, 16 or 32")
    return width


def _storage(tensor: torch.Tensor) -> tuple | None:
    """What makes two state-dict entries one tensor: the same memory, viewed the same way."""
    if tensor.numel() == 0:
        return None
    return (tensor.device, tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()),
            tensor.dtype)


def aliases(state_dict: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """``{name: earlier name}`` for each entry that shares its storage with an earlier one."""
    first: dict[tuple, str] = {}
    found = {}
    for name, tensor in state_dict.items():
        key = _storage(tensor)
        if key is not None and key in first:
            found[name] = first[key]
        elif key is not None:
            first[key] = name
    return found


def _alias_record(name: str, tensor: torch.Tensor, target: str) -> bytes:
    """A header with width ``ALIAS``, no scales, no index, and the target's name as payload."""
    dtype, target_b = str(tensor.dtype).replace("torch.", ""), target.encode()
    head = _pack_header(name, dtype, tuple(tensor.shape), ALIAS, 0, _Layout(DENSE, 0, 0, 0))
    return head + struct.pack("<III", 0, 0, len(target_b)) + target_b


def packed_size(
    state_dict: Mapping[str, torch.Tensor],
    bits: Mapping[str, int] | None = None,
    asymmetric: Collection[str] = (),
) -> int:
    """``len(pack_state_dict(...))``, worked out without writing the payloads (several times
    faster: the structure stage of every trial sizes its model this way)."""
    bits = dict(bits or {})
    total = len(MAGIC) + struct.calcsize("<BI")
    tied = aliases(state_dict)
    for name, tensor in state_dict.items():
        if name in tied:
            total += len(_alias_record(name, tensor, tied[name]))
            continue
        tensor = tensor.detach().cpu()
        dtype = str(tensor.dtype).replace("torch.", "")
        total += (struct.calcsize("<H") + len(name.encode()) + 1 + len(dtype.encode()) + 1
                  + 4 * tensor.dim() + struct.calcsize("<BBBBI") + 3 * 4)
        if not tensor.is_floating_point():
            total += tensor.numel() * tensor.element_size()
            continue
        width = _width(name, tensor, bits)
        _, _, scales, _, layout = _analyse(tensor.to(torch.float64).numpy(), width,
                                           name in asymmetric and width in INT_BITS)
        index, values = _payload_sizes(layout, tensor.numel(), width)
        total += len(scales) + index + values
    return total


def pack_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    bits: Mapping[str, int] | None = None,
    asymmetric: Collection[str] = (),
) -> bytes:
    """Encode a state dict in its stored form.

    ``bits`` maps a tensor's name to its width (2..8 integer codes, 16 or 32 float); floating
    tensors not named are stored as float32. Tensors named in ``asymmetric`` use a per-channel
    zero point (levels 0..2**bits-1) instead of the symmetric grid. Zeros are never stored
    when an index is cheaper.
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
    tied = aliases(state_dict)
    for name, tensor in state_dict.items():
        if name in tied:
            chunks.append(_alias_record(name, tensor, tied[name]))
            continue
        tensor = tensor.detach().cpu()
        shape = tuple(tensor.shape)
        dtype = str(tensor.dtype).replace("torch.", "")
        if tensor.is_floating_point():
            width = _width(name, tensor, bits)
            flags = int(name in asymmetric and width in INT_BITS)
            scales, index, payload, layout = _encode_float_tensor(
                tensor.to(torch.float64).numpy(), width, bool(flags)
            )
        else:
            width, flags, scales, index = 0, 0, b"", b""
            payload = tensor.numpy().tobytes()
            layout = _Layout(DENSE, 0, tensor.numel(), 8 * len(payload))
        chunks.append(_pack_header(name, dtype, shape, width, flags, layout))
        for part in (scales, index, payload):
            chunks.append(struct.pack("<I", len(part)) + part)
    return b"".join(chunks)


def unpack_state_dict(blob: bytes) -> dict[str, torch.Tensor]:
    """Decode :func:`pack_state_dict`'s bytes back into tensors (an alias is the tensor it
    names, the same object)."""
    if blob[:4] != MAGIC:
        raise ValueError("not an autocompress packed model (bad magic bytes)")
    version, count = struct.unpack_from("<BI", blob, 4)
    if version not in READABLE:
        raise ValueError(f"packed model version {version}, this autocompress reads "
                         f"{', '.join(map(str, READABLE))}")
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
        bits, flags, kind, gap_bits, entries = take("<BBBBI")
        scales, index, payload = (take_bytes(take("<I")[0]) for _ in range(3))
        if bits == ALIAS:
            out[name] = out[payload.decode()]  # the same tensor: a tie stays a tie
            continue
        if bits == 0:
            np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
            array = np.frombuffer(payload, dtype=np_dtype).reshape(shape).copy()
            out[name] = torch.from_numpy(array)
            continue
        layout = _Layout(kind, gap_bits, entries, 0)
        array = _decode_float_tensor(tuple(shape), bits, bool(flags), layout, scales, index,
                                     payload)
        out[name] = torch.from_numpy(array).to(dtype)
    return out
