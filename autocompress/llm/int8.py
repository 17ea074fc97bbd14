"""The ``torch-int8`` runtime of a language model: torch's dynamic int8 kernels, with the layers
whose inputs carry outlier features kept in float (measured; see below)."""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import nn

DYNAMIC_LINEAR = torch.ao.nn.quantized.dynamic.Linear


# Left in float under torch-int8 (measured on SmolLM2-135M, 8 x 256 validation tokens, ppl 46.1
# in float): every Linear in int8 gave 238; keeping each MLP's down_proj float, 59.5; that and the
# first and last decoder blocks, 51.3 (+11%) at 2.2x the float decode speed. Dynamic int8 takes
# one activation scale per tensor, and these layers' inputs carry the outlier features that
# scale cannot hold (LLM.int8(), Dettmers et al. 2022).
INT8_FLOAT_SUFFIXES = ("down_proj",)


def int8_float_layers(model: nn.Module) -> list[str]:
    """The Linear layers ``torch-int8`` keeps in float: each ``down_proj`` (an MLP's output
    projection) and every Linear of the first and last decoder blocks."""
    from autocompress.llm.calibrate import decoder_layers

    try:
        blocks = decoder_layers(model)
    except ValueError:
        blocks = nn.ModuleList()
    ends = {id(m) for block in (blocks[:1] + blocks[-1:] if len(blocks) else [])
            for m in block.modules()}
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)
            and (name.endswith(INT8_FLOAT_SUFFIXES) or id(module) in ends)]


def _quantized(model: nn.Module, qconfig: Any, scheme: str, keep_float: set[str]) -> nn.Module:
    names = {name for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and name not in keep_float}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices
        quantized = torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model).eval(), dict.fromkeys(names, qconfig), dtype=torch.qint8)
        probe = next(m for m in quantized.modules() if isinstance(m, DYNAMIC_LINEAR))
        probe(torch.zeros(1, probe.in_features))  # the engine really runs this scheme
    kept = f", {len(keep_float)} Linear layers kept float" if keep_float else ""
    quantized.quantization = (f"int8 dynamic {scheme} ({torch.backends.quantized.engine}"
                              f"{kept})")
    return quantized


def int8_dynamic(model: nn.Module, *, keep_float: list[str] | None = None) -> nn.Module:
    """A copy whose Linear layers (``lm_head`` included) run torch's dynamic int8 kernels with
    per-channel weight scales, except ``keep_float`` (default :func:`int8_float_layers`);
    per-tensor, with a warning, where the engine lacks per-channel."""
    keep = set(int8_float_layers(model) if keep_float is None else keep_float)
    if not any(isinstance(m, nn.Linear) for n, m in model.named_modules() if n not in keep):
        raise ValueError("torch-int8 quantizes nn.Linear layers; this model has none")
    quant = torch.ao.quantization
    try:
        return _quantized(model, quant.per_channel_dynamic_qconfig, "per-channel", keep)
    except RuntimeError as exc:
        warnings.warn(f"per-channel dynamic int8 unavailable on engine "
                      f"{torch.backends.quantized.engine!r} ({exc}); using per-tensor",
                      stacklevel=2)
        return _quantized(model, quant.default_dynamic_qconfig, "per-tensor", keep)
