"""Weight-only quantization of decoder language models: round-to-nearest (RTN) and GPTQ.

Grid (one per group of ``group_size`` consecutive input columns of one output row; no group
size means one group per row):

* asymmetric: the range ``[min(w, 0), max(w, 0)]`` (it always holds 0, so pruned weights stay
  exactly 0), ``scale = (max - min) / (2**bits - 1)``, an integer zero point
  ``round(-min / scale)`` in ``[0, 2**bits - 1]``; codes ``clamp(round(w / scale) + zero)``;
* symmetric: ``scale = max|w| / (2**(bits-1) - 1)`` so the largest magnitude lands exactly on a
  level, on the signed grid ``[-2**(bits-1), 2**(bits-1) - 1]`` (the extra negative level is
  reachable by GPTQ's updated weights). Codes are stored unsigned, offset by ``2**(bits-1)``:
  the symmetric zero point is that constant, so both schemes dequantize as
  ``(code - zero) * scale``.

Scales are float16 (what the stored form keeps), and codes are computed with the float16-rounded
scale, so the simulated weights here and the weights :mod:`autocompress.llm.store` unpacks are
bit for bit the same. GPTQ follows Frantar et al. 2022, "GPTQ: Accurate Post-Training
Quantization for Generative Pre-trained Transformers", Algorithm 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from autocompress.errors import ConfigError, did_you_mean
from autocompress.llm.calibrate import InputStats, decoder_layers, sequential

KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
METHODS = ("rtn", "gptq")
# On a module whose weight was quantized here: its Quantized record (format, scales, zeros).
# A plain attribute, not a buffer: the state dict stays the model's own; store.pack reads it.
QUANT_ATTRIBUTE = "weight_quant"
_FP16_MAX = 65504.0
_FP16_TINY = 2.0**-24  # the smallest positive float16: a scale never rounds to 0


@dataclass(frozen=True)
class Format:
    """``bits`` per weight (2..8), ``group_size`` input columns per scale (None or 0: one group
    per output row), symmetric or asymmetric grid (see the module docstring)."""

    bits: int = 4
    group_size: int | None = 128
    symmetric: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise ConfigError("weight_quant.Format", "bits", self.bits, "an integer in 2..8")
        group = self.group_size
        if group is not None and (isinstance(group, bool) or not isinstance(group, int)
                                  or group < 0):
            raise ConfigError("weight_quant.Format", "group_size", group,
                              "a positive integer, or None or 0 for one group per row")
        if not isinstance(self.symmetric, bool):
            raise ConfigError("weight_quant.Format", "symmetric", self.symmetric, "true or false")

    @property
    def maxq(self) -> int:
        return 2**self.bits - 1

    def group(self, columns: int) -> int:
        """The group length for a weight with ``columns`` input columns."""
        return self.group_size or columns

    def groups(self, columns: int) -> int:
        """Groups per row: the last one is shorter where the group size does not divide the
        width (SmolLM2's 576 in groups of 128: four of 128 and one of 64)."""
        return -(-columns // self.group(columns))

    def check(self, columns: int, where: str, name: str) -> None:
        """ConfigError for a weight ``name`` with no input column to quantize."""
        if columns < 1:
            raise ConfigError(where, "in_features", columns, f"at least one column in {name}")


def per_column(values: torch.Tensor, columns: int, group: int) -> torch.Tensor:
    """(rows, groups) group parameters spread over the ``columns`` they cover."""
    return values.repeat_interleave(group, dim=-1)[..., :columns]


@dataclass
class Quantized:
    """What a quantized weight is stored as, besides its codes: float16 ``scales`` and uint8
    ``zeros`` (None when symmetric), both (rows, groups)."""

    fmt: Format
    scales: torch.Tensor
    zeros: torch.Tensor | None


def group_params(block: torch.Tensor, fmt: Format) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (float16-rounded, as float32) and zero point of each row of ``block`` (..., g)."""
    block = block.float()
    if fmt.symmetric:
        scale = block.abs().amax(dim=-1) / (2 ** (fmt.bits - 1) - 1)
        zero = torch.full_like(scale, 2 ** (fmt.bits - 1))
    else:
        low = block.amin(dim=-1).clamp(max=0)
        high = block.amax(dim=-1).clamp(min=0)
        scale = (high - low) / fmt.maxq
    scale = scale.clamp(_FP16_TINY, _FP16_MAX).half().float()
    if not fmt.symmetric:
        zero = torch.round(-low / scale).clamp(0, fmt.maxq)
    return scale, zero


def _codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, fmt: Format) -> torch.Tensor:
    return torch.clamp(torch.round(w / scale) + zero, 0, fmt.maxq)


def _dequant(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """The one formula every dequantized weight comes from (so all agree to the bit)."""
    return (codes.float() - zero.float()) * scale.float()


def quantize_groups(weight: torch.Tensor, fmt: Format
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Round-to-nearest: uint8 codes (rows, cols), float16 scales and uint8 zeros (rows, groups).

    Zeros are None for a symmetric format (the zero point is the constant ``2**(bits-1)``)."""
    rows, cols = weight.shape
    fmt.check(cols, "quantize_groups", f"a {rows}x{cols} weight")
    g, groups = fmt.group(cols), fmt.groups(cols)
    w = weight.detach().float()
    # zero padding of a short last group changes neither range: both grids contain 0
    padded = torch.nn.functional.pad(w, (0, groups * g - cols))
    scale, zero = group_params(padded.reshape(rows, groups, g), fmt)
    codes = _codes(w, per_column(scale, cols, g), per_column(zero, cols, g), fmt)
    zeros = None if fmt.symmetric else zero.to(torch.uint8)
    return codes.to(torch.uint8), scale.half(), zeros


def dequantize(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
               fmt: Format, shape: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Float32 weights of ``shape`` from codes, scales and zero points."""
    rows, cols = shape
    g = fmt.group(cols)
    zero = (torch.full(scales.shape, 2 ** (fmt.bits - 1), dtype=torch.float32,
                       device=scales.device) if zeros is None else zeros)
    return _dequant(codes.reshape(rows, cols), per_column(scales, cols, g),
                    per_column(zero, cols, g))


def encode(weight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
           fmt: Format) -> torch.Tensor:
    """uint8 codes of ``weight`` on a known grid: exact for weights that sit on it, as this
    module's dequantized weights do ((code - zero) * scale / scale rounds back to the code)."""
    cols = weight.shape[1]
    g = fmt.group(cols)
    zero = (torch.full(scales.shape, 2 ** (fmt.bits - 1), dtype=torch.float32,
                       device=scales.device) if zeros is None else zeros.float())
    codes = _codes(weight.detach().float(), per_column(scales.float(), cols, g),
                   per_column(zero, cols, g), fmt)
    return codes.to(torch.uint8)


def rtn(weight: torch.Tensor, fmt: Format) -> torch.Tensor:
    """Round-to-nearest weights (float32): the baseline GPTQ improves on."""
    return dequantize(*quantize_groups(weight, fmt), fmt, weight.shape)


def _inverse_cholesky(hessian: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of the inverse of the dampened Hessian (float64)."""
    eye = torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    mean = hessian.diagonal().mean()
    for attempt in range(4):  # a near-singular H: more dampening, as a last resort
        damped = hessian + damp * 10**attempt * mean * eye
        lower, info = torch.linalg.cholesky_ex(damped)
        if int(info) == 0:
            inverse = torch.cholesky_inverse(lower)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if int(info) == 0:
                return upper
    raise ValueError("gptq: the Hessian is not positive definite even with 1000x dampening")


def gptq(weight: torch.Tensor, hessian: torch.Tensor, fmt: Format, *, act_order: bool = False,
         block_size: int = 128, damp: float = 0.01
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """GPTQ (Frantar et al. 2022, Algorithm 1): quantize columns in turn, spreading each one's
    rounding error over the later columns through the inverse Hessian's Cholesky factor.

    ``hessian`` is X^T X of the layer inputs up to a positive factor (the result does not depend
    on it: dampening is ``damp`` times the mean diagonal). Columns never seen (H_ii = 0) get
    H_ii = 1 and weight 0. Updates are lazy, ``block_size`` columns at a time. Each group's scale
    and zero point come from the current, already-updated weights when the loop reaches the
    group's first column. With ``act_order`` columns go in order of decreasing H_ii, and group
    parameters are fixed before the loop from the original weights of the original column groups
    (the reference implementation's "static groups"), so a group is still consecutive columns.

    Returns (dequantized float32 weight, uint8 codes, float16 scales, uint8 zeros or None)."""
    rows, cols = weight.shape
    fmt.check(cols, "gptq", f"a {rows}x{cols} weight")
    g = fmt.group(cols)
    w = weight.detach().float().clone()
    h = hessian.detach().to(w.device, torch.float64).clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    scales = torch.zeros(rows, fmt.groups(cols), device=w.device)
    zeros = torch.zeros_like(scales)
    if act_order:
        for j in range(fmt.groups(cols)):
            scales[:, j], zeros[:, j] = group_params(w[:, j * g:(j + 1) * g], fmt)
        perm = torch.argsort(h.diagonal(), descending=True, stable=True)
        w, h = w[:, perm], h[perm][:, perm]
    else:
        perm = torch.arange(cols, device=w.device)
    u = _inverse_cholesky(h, damp).float()
    group_of = (perm // g).tolist()  # the original group of each column in loop order
    codes = torch.zeros_like(w)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        w1, err = w[:, i1:i2].clone(), torch.zeros(rows, i2 - i1, device=w.device)
        for i in range(i2 - i1):
            col = i1 + i
            if not act_order and col % g == 0:  # the group's current weights, pending updates in
                current = w1[:, i:i + g]
                if col + g > i2:
                    rest = w[:, i2:col + g] - err[:, :i] @ u[i1:col, i2:col + g]
                    current = torch.cat([current, rest], dim=1)
                scales[:, col // g], zeros[:, col // g] = group_params(current, fmt)
            group = group_of[col]
            q = _codes(w1[:, i], scales[:, group], zeros[:, group], fmt)
            codes[:, col] = q
            e = (w1[:, i] - _dequant(q, scales[:, group], zeros[:, group])) / u[col, col]
            w1[:, i:] -= e[:, None] * u[col, i1 + i:i2][None, :]
            err[:, i] = e
        w[:, i2:] -= err @ u[i1:i2, i2:]
    if act_order:
        codes = codes[:, torch.argsort(perm)]
    codes = codes.to(torch.uint8)
    zero_points = None if fmt.symmetric else zeros.to(torch.uint8)
    dequantized = dequantize(codes, scales.half(), zero_points, fmt, (rows, cols))
    return dequantized, codes, scales.half(), zero_points


# --- a whole decoder ---

def _block_linears(model: nn.Module) -> dict[str, nn.Linear]:
    names = {id(module): name for name, module in model.named_modules()}
    found: dict[str, nn.Linear] = {}
    for block in decoder_layers(model):
        for name, module in block.named_modules():
            if isinstance(module, nn.Linear):
                found[f"{names[id(block)]}.{name}"] = module
    return found


def _layer_formats(linears: Mapping[str, nn.Linear], fmt: Format,
                   per_layer: Mapping[str, Format] | None) -> dict[str, Format]:
    """Every linear's format: its qualified name in ``per_layer``, else its kind, else ``fmt``."""
    where = "quantize_model"
    per_layer = dict(per_layer or {})
    known = set(linears) | {name.rsplit(".", 1)[-1] for name in linears}
    for key, value in per_layer.items():
        if key not in known:
            raise ConfigError(where, "per_layer", key,
                              f"a linear kind ({', '.join(KINDS)}) or qualified name in the "
                              f"decoder blocks{did_you_mean(str(key), known)}")
        if not isinstance(value, Format) and value is not None:
            raise ConfigError(where, f"per_layer[{key!r}]", value,
                              "a weight_quant.Format, or None (left float)")
    formats = {name: per_layer.get(name, per_layer.get(name.rsplit(".", 1)[-1], fmt))
               for name in linears}
    for name, linear in linears.items():  # every layer checked before any is changed
        if formats[name] is not None:
            formats[name].check(linear.in_features, where, name)
    return formats


def _set(module: nn.Module, weight: torch.Tensor, fmt: Format, scales: torch.Tensor,
         zeros: torch.Tensor | None) -> None:
    with torch.no_grad():
        module.weight.copy_(weight.to(module.weight.dtype))
    setattr(module, QUANT_ATTRIBUTE, Quantized(fmt, scales, zeros))


def _quantize_rtn(module: nn.Module, fmt: Format) -> None:
    codes, scales, zeros = quantize_groups(module.weight, fmt)
    _set(module, dequantize(codes, scales, zeros, fmt, module.weight.shape), fmt, scales, zeros)


def _embedding_targets(model: nn.Module, fmt: Format) -> list[tuple[str, nn.Module]]:
    """The input embedding and, unless it shares the table, the LM head; format checked."""
    names = {id(module): name for name, module in model.named_modules()}
    table = model.get_input_embeddings()
    targets = [(names[id(table)], table)]
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and head.weight is not table.weight:
        targets.append((names[id(head)], head))
    for name, module in targets:
        fmt.check(module.weight.shape[1], "quantize_model: embeddings", name)
    return targets


def quantize_model(model: nn.Module, tokens: torch.Tensor | None, *, method: str,
                   fmt: Format | None,
                   per_layer: Mapping[str, Format | None] | None = None,
                   embeddings: Format | None = None, act_order: bool = False,
                   batch_size: int = 8) -> dict[str, Format]:
    """Quantize every ``nn.Linear`` inside the decoder blocks, in place (simulated quantization:
    the weights become their dequantized float values; the scales and zero points are kept on
    the module as ``weight_quant`` for :mod:`autocompress.llm.store`).

    GPTQ calibrates block by block with :func:`~autocompress.llm.calibrate.sequential` (each
    block on the outputs of the quantized blocks before it, as in Frantar et al. 2022); RTN
    needs no data (``tokens`` may be None). ``per_layer`` maps a kind (``"q_proj"``...) or a
    qualified name to its own Format; ``None`` (there, or as ``fmt``) leaves a layer float
    (mixed precision with float layers). With ``embeddings`` the token table is quantized by RTN
    per row (a tied LM head with it, once; an untied one gets the same format). Returns
    ``{qualified module name: Format}`` of everything quantized.
    """
    where = "quantize_model"
    if method not in METHODS:
        raise ConfigError(where, "method", method,
                          f"one of {', '.join(METHODS)}{did_you_mean(str(method), METHODS)}")
    for field, value in (("fmt", fmt), ("embeddings", embeddings)):
        if not isinstance(value, Format) and value is not None:
            raise ConfigError(where, field, value, "a weight_quant.Format")
    if method == "gptq" and tokens is None:
        raise ConfigError(where, "tokens", None, "calibration token ids for gptq")
    linears = _block_linears(model)
    formats = _layer_formats(linears, fmt, per_layer)
    targets = _embedding_targets(model, embeddings) if embeddings is not None else []
    linears = {name: linear for name, linear in linears.items() if formats[name] is not None}
    formats = {name: f for name, f in formats.items() if f is not None}
    if method == "rtn" or not formats:
        for name, linear in linears.items():
            _quantize_rtn(linear, formats[name])
    else:
        def compress(name: str, linear: nn.Linear, stats: InputStats) -> None:
            if name not in formats:
                return
            hessian = 2 * stats.hessian / max(stats.count, 1)  # H = 2 X^T X / n
            weight, _, scales, zeros = gptq(linear.weight, hessian, formats[name],
                                            act_order=act_order)
            _set(linear, weight, formats[name], scales, zeros)

        sequential(model, tokens, compress, hessian=True, batch_size=batch_size)
    for name, module in targets:
        _quantize_rtn(module, embeddings)
        formats[name] = embeddings
    return formats


__all__ = ["KINDS", "METHODS", "QUANT_ATTRIBUTE", "Format", "Quantized", "dequantize", "encode",
           "gptq", "group_params", "quantize_groups", "quantize_model", "rtn"]
