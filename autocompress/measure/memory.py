"""Stored size: the length of the model's real packed form (see :mod:`autocompress.packing`)."""

from __future__ import annotations

from torch import nn

from autocompress.packing import BITS_ATTRIBUTE, SCHEME_ATTRIBUTE, pack_state_dict


def stored_bits(model: nn.Module) -> dict[str, int]:
    """Bit width of each quantized weight tensor, by state-dict name."""
    widths = {}
    for name, module in model.named_modules():
        bits = getattr(module, BITS_ATTRIBUTE, None)
        if bits is not None and bits < 32:
            widths[f"{name}.weight" if name else "weight"] = int(bits)
    return widths


def asymmetric_weights(model: nn.Module) -> list[str]:
    return [f"{name}.weight" if name else "weight" for name, module in model.named_modules()
            if getattr(module, SCHEME_ATTRIBUTE, "symmetric") == "asymmetric"]


def stored_bytes(model: nn.Module) -> int:
    """Bytes of the model's stored form: sparse where cheaper, weights at their bit width."""
    return len(pack_state_dict(model.state_dict(), stored_bits(model), asymmetric_weights(model)))
