"""The stored form of a compressed decoder language model: real bytes, measured, not estimated.

:func:`pack` writes one self-describing byte string; :func:`unpack` turns it back into a state
dict that loads into the model and reproduces its outputs exactly. Layout::

    b"ACLM" | uint32 version | uint64 header length | JSON header | payloads

The header lists every state-dict entry with its shape, dtype, how it is stored and the
``[offset, length]`` of each of its payloads (offsets from the start of the payloads):

* ``quant``: a weight quantized by :mod:`autocompress.llm.weight_quant` (GPTQ, Frantar et al.
  2022, or RTN): its codes bit-packed at exactly ``bits`` bits each (3-bit codes: 8 per 3
  bytes), float16 scales, and for an asymmetric format the zero points packed at ``bits`` bits;
* ``float``: any other floating tensor (norms, biases, unquantized weights) as float32, or
  float16 when asked;
* ``raw``: integer and boolean tensors as they are;
* ``alias``: a tensor sharing storage with an earlier one (a tied LM head), stored once.

Sparsity rule: a ``quant`` or ``float`` tensor is stored as a bitmask of kept (non-zero)
positions plus only the kept values exactly when that is smaller than storing it dense, i.e.
when ``n + kept * bits < n * bits``: more than 1/32 zeros for float32, 1/4 for 4-bit codes, 1/2
for 2-bit ones. A quantized weight's zero is the code equal to its group's zero point (the grid
always holds 0 exactly), so pruning and quantization compose.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from autocompress.errors import ConfigError
from autocompress.llm.weight_quant import (
    QUANT_ATTRIBUTE,
    Format,
    Quantized,
    dequantize,
    encode,
    quantize_groups,
)

MAGIC = b"ACLM"
VERSION = 1
_PREFIX = struct.Struct("<IQ")  # version, header length
_CHUNK = 1 << 22  # codes per bit-packing step (a multiple of 8): bounded temporary memory
FLOATS = {"float32": (torch.float32, np.float32, np.uint32),
          "float16": (torch.float16, np.float16, np.uint16)}


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Unsigned integers below ``2**bits`` (1..8 bits) at exactly ``bits`` bits each, the low
    bit first: ``ceil(n * bits / 8)`` bytes."""
    flat = np.ascontiguousarray(values, dtype=np.uint8).reshape(-1)
    out = []
    for start in range(0, flat.size, _CHUNK):
        chunk = flat[start:start + _CHUNK]
        matrix = np.unpackbits(chunk[:, None], axis=1, bitorder="little")[:, :bits]
        out.append(np.packbits(matrix.reshape(-1), bitorder="little").tobytes())
    return b"".join(out)


def unpack_bits(data: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``count`` uint8 values."""
    raw = np.frombuffer(data, dtype=np.uint8)
    out = np.empty(count, dtype=np.uint8)
    for start in range(0, count, _CHUNK):
        n = min(_CHUNK, count - start)
        chunk = raw[start * bits // 8:(start * bits + n * bits + 7) // 8]
        matrix = np.unpackbits(chunk, bitorder="little")[:n * bits].reshape(n, bits)
        padded = np.zeros((n, 8), dtype=np.uint8)
        padded[:, :bits] = matrix
        out[start:start + n] = np.packbits(padded, axis=1, bitorder="little")[:, 0]
    return out


class _Writer:
    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, data: bytes) -> list[int]:
        self.parts.append(data)
        self.size += len(data)
        return [self.size - len(data), len(data)]


def _storage_key(tensor: torch.Tensor) -> tuple | None:
    if tensor.numel() == 0:
        return None
    return (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(),
            tuple(tensor.shape), tensor.stride(), tensor.dtype)


def _resolve(state: Mapping[str, torch.Tensor], formats: Mapping[str, Format]) -> dict[str, Format]:
    """Formats keyed by state-dict entry: a module name means its ``.weight``."""
    out = {}
    for key, fmt in formats.items():
        name = key if key in state else f"{key}.weight"
        if name not in state or state[name].dim() != 2:
            raise ConfigError("store.pack", "formats", key,
                              "the name of a module (or 2-D weight) of the model")
        if not isinstance(fmt, Format):
            raise ConfigError("store.pack", f"formats[{key!r}]", fmt, "a weight_quant.Format")
        out[name] = fmt
    return out


def _record(model: nn.Module, names: list[str]) -> Quantized | None:
    """The scales and zero points weight_quant left on the module owning one of ``names``."""
    for name in names:
        owner = name.rsplit(".", 1)[0] if "." in name else ""
        try:
            found = getattr(model.get_submodule(owner), QUANT_ATTRIBUTE, None)
        except AttributeError:
            found = None
        if found is not None:
            return found
    return None


def _mask_part(writer: _Writer, keep: np.ndarray) -> list[int]:
    return writer.add(np.packbits(keep, bitorder="little").tobytes())


def _sparse(numel: int, kept: int, bits: int) -> bool:
    """Bitmask plus kept values exactly when that takes fewer bytes than dense values."""
    return -(-numel // 8) + -(-kept * bits // 8) < -(-numel * bits // 8)


def _quant_entry(writer: _Writer, name: str, tensor: torch.Tensor, fmt: Format,
                 record: Quantized | None) -> dict[str, Any]:
    weight = tensor.detach().cpu()
    if record is None:  # no record: the RTN grid of the format, if the weights sit on it
        _, scales, zeros = quantize_groups(weight, fmt)
    elif record.fmt != fmt:
        raise ConfigError("store.pack", f"formats[{name!r}]", fmt,
                          f"{record.fmt}, the format the weight was quantized with")
    else:
        scales = record.scales.cpu().half()
        zeros = None if record.zeros is None else record.zeros.cpu().to(torch.uint8)
    codes = encode(weight, scales, zeros, fmt)
    back = dequantize(codes, scales, zeros, fmt, weight.shape).to(weight.dtype)
    if not torch.equal(back, weight):
        got = f"weights off the {'recorded' if record else 'RTN'} grid of {fmt}"
        raise ConfigError("store.pack", name, got, "weights as weight_quant.quantize_model or "
                          "store.load left them (with their scales), unchanged since")
    entry: dict[str, Any] = {"kind": "quant", "format": [fmt.bits, fmt.group_size, fmt.symmetric]}
    flat = codes.numpy().reshape(-1)
    cols = weight.shape[1]
    zero_points = (np.full(scales.shape, 2 ** (fmt.bits - 1), dtype=np.uint8) if zeros is None
                   else zeros.numpy())
    keep = flat != np.repeat(zero_points, fmt.group(cols), axis=1)[:, :cols].reshape(-1)
    if _sparse(flat.size, int(keep.sum()), fmt.bits):
        entry["mask"] = _mask_part(writer, keep)
        flat = flat[keep]
    entry["codes"] = writer.add(pack_bits(flat, fmt.bits))
    entry["scales"] = writer.add(scales.numpy().astype("<f2").tobytes())
    if zeros is not None:
        entry["zeros"] = writer.add(pack_bits(zeros.numpy(), fmt.bits))
    return entry


def _float_entry(writer: _Writer, tensor: torch.Tensor, floats: str) -> dict[str, Any]:
    torch_type, np_type, _ = FLOATS[floats]
    flat = tensor.detach().cpu().to(torch_type).numpy().reshape(-1)
    entry: dict[str, Any] = {"kind": "float", "floats": floats}
    # -0.0 (a negative weight multiplied by a 0 mask) is a zero too: it comes back as +0.0,
    # numerically the same weight
    keep = flat != 0
    if _sparse(flat.size, int(keep.sum()), 8 * flat.itemsize):
        entry["mask"] = _mask_part(writer, keep)
        flat = flat[keep]
    entry["values"] = writer.add(flat.astype(np.dtype(np_type).newbyteorder("<")).tobytes())
    return entry


def pack(model: nn.Module, formats: Mapping[str, Format], *, floats: str = "float32") -> bytes:
    """The model's state dict as bytes: the weights named in ``formats`` (module names, as
    :func:`~autocompress.llm.weight_quant.quantize_model` returns them) as bit-packed codes,
    every other floating tensor as ``floats`` ("float32" or "float16"), shared tensors once.

    Codes are recovered from the dequantized weights with the scales and zero points that
    quantize_model left on each module (or, without them, the format's RTN grid), and checked:
    a weight that is not exactly on its grid is a ConfigError, never silently rounded."""
    if floats not in FLOATS:
        raise ConfigError("store.pack", "floats", floats, "float32 or float16")
    state = model.state_dict()
    by_name = _resolve(state, formats)
    groups: dict[tuple, list[str]] = {}
    for name, tensor in state.items():
        key = _storage_key(tensor)
        if key is not None:
            groups.setdefault(key, []).append(name)
    first: dict[tuple, str] = {}
    writer, entries = _Writer(), []
    for name, tensor in state.items():
        key = _storage_key(tensor)
        meta: dict[str, Any] = {"name": name, "shape": list(tensor.shape),
                                "dtype": str(tensor.dtype).removeprefix("torch.")}
        if key is not None and key in first:
            entries.append({**meta, "kind": "alias", "of": first[key]})
            continue
        if key is not None:
            first[key] = name
        tied = groups[key] if key is not None else [name]
        chosen = {by_name[n] for n in tied if n in by_name}
        if len(chosen) > 1:
            raise ConfigError("store.pack", "formats", sorted(chosen, key=str),
                              f"one format for the tied weights {', '.join(tied)}")
        if chosen:
            meta.update(_quant_entry(writer, name, tensor, chosen.pop(), _record(model, tied)))
        elif tensor.is_floating_point():
            meta.update(_float_entry(writer, tensor, floats))
        else:
            meta.update({"kind": "raw", "values": writer.add(tensor.cpu().numpy().tobytes())})
        entries.append(meta)
    header = json.dumps({"tensors": entries}, separators=(",", ":")).encode()
    return b"".join([MAGIC, _PREFIX.pack(VERSION, len(header)), header, *writer.parts])


def read_header(data: bytes) -> tuple[dict[str, Any], int]:
    """The parsed header of a packed model and where its payloads start."""
    if data[:4] != MAGIC or len(data) < 4 + _PREFIX.size:
        raise ValueError("not a packed autocompress language model (bad magic)")
    version, length = _PREFIX.unpack_from(data, 4)
    if version != VERSION:
        raise ValueError(f"packed model version {version}; this reader knows {VERSION}")
    start = 4 + _PREFIX.size
    return json.loads(bytes(data[start:start + length])), start + length


def _scatter(values: np.ndarray, mask: np.ndarray | None, fill: np.ndarray | int) -> np.ndarray:
    if mask is None:
        return values
    out = np.array(np.broadcast_to(fill, mask.shape), dtype=values.dtype)
    out[mask] = values
    return out


def _read(data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, Quantized]]:
    header, start = read_header(data)
    view = memoryview(data)[start:]

    def part(span: list[int]) -> bytes:
        return bytes(view[span[0]:span[0] + span[1]])

    out: dict[str, torch.Tensor] = {}
    records: dict[str, Quantized] = {}
    for entry in header["tensors"]:
        name, shape, dtype = entry["name"], tuple(entry["shape"]), getattr(torch, entry["dtype"])
        numel = int(np.prod(shape, dtype=np.int64))
        mask = None
        if "mask" in entry:
            mask = np.unpackbits(np.frombuffer(part(entry["mask"]), dtype=np.uint8),
                                 count=numel, bitorder="little").astype(bool)
        if entry["kind"] == "alias":
            out[name] = out[entry["of"]]
        elif entry["kind"] == "quant":
            bits, group, symmetric = entry["format"]
            fmt = Format(bits, group, symmetric)
            groups = fmt.groups(shape[1])
            scales = np.frombuffer(part(entry["scales"]), dtype="<f2").reshape(shape[0], groups)
            zeros = (None if symmetric else
                     unpack_bits(part(entry["zeros"]), bits, scales.size).reshape(scales.shape))
            fill = (np.full(scales.shape, 2 ** (bits - 1), dtype=np.uint8) if zeros is None
                    else zeros)
            kept = numel if mask is None else int(mask.sum())
            codes = _scatter(unpack_bits(part(entry["codes"]), bits, kept), mask,
                             np.repeat(fill, fmt.group(shape[1]), axis=1)[:, :shape[1]]
                             .reshape(-1))
            records[name] = Quantized(fmt, torch.from_numpy(scales.astype(np.float16)),
                                      None if zeros is None else torch.from_numpy(zeros))
            out[name] = dequantize(torch.from_numpy(codes.reshape(shape)), records[name].scales,
                                   records[name].zeros, fmt, shape).to(dtype)
        elif entry["kind"] == "float":
            np_type = np.dtype(FLOATS[entry["floats"]][1]).newbyteorder("<")
            values = _scatter(np.frombuffer(part(entry["values"]), dtype=np_type), mask, 0)
            out[name] = torch.from_numpy(values.astype(np_type.newbyteorder("="))
                                         ).reshape(shape).to(dtype)
        else:
            np_type = torch.empty(0, dtype=dtype).numpy().dtype
            out[name] = torch.from_numpy(
                np.frombuffer(part(entry["values"]), dtype=np_type).copy()).reshape(shape)
    return out, records


def unpack(data: bytes) -> dict[str, torch.Tensor]:
    """The state dict :func:`pack` stored; tied entries are one tensor object again."""
    return _read(data)[0]


def load(model: nn.Module, data: bytes) -> dict[str, Format]:
    """Load packed bytes into ``model`` and put the scales and zero points back on the quantized
    modules (so the model packs again to the same bytes); returns the formats, as :func:`pack`
    takes them."""
    state, records = _read(data)
    model.load_state_dict(state)
    formats = {}
    for name, record in records.items():
        owner = name.rsplit(".", 1)[0] if "." in name else ""
        setattr(model.get_submodule(owner), QUANT_ATTRIBUTE, record)
        formats[name.removesuffix(".weight")] = record.fmt
    return formats


def stored_bytes(model: nn.Module, formats: Mapping[str, Format], *,
                 floats: str = "float32") -> int:
    """The model's size as stored: the length of :func:`pack`'s bytes."""
    return len(pack(model, formats, floats=floats))


__all__ = ["MAGIC", "VERSION", "load", "pack", "pack_bits", "read_header", "stored_bytes", "unpack",
           "unpack_bits"]
