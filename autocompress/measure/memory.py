"""Stored size: the length of the model's real packed form (see :mod:`autocompress.packing`).

Tied weights count once: entries sharing one tensor are packed as one (an alias), and a layer
marked ``weight_tied_to`` by quantization (its tie's copy after baking, or its quantized view
before) is pointed at the weight it is tied to when the two are still equal.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from autocompress.packing import (
    BITS_ATTRIBUTE,
    SCHEME_ATTRIBUTE,
    TIED_ATTRIBUTE,
    pack_state_dict,
    packed_size,
)


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


def effective_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict the model would have with its parametrizations (masks, fake quantization)
    folded in, computed without copying or changing the model. Like ``state_dict()``, it leaves
    out non-persistent buffers (a Hugging Face model's ``position_ids``, rotary frequencies)."""
    state: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if "parametrizations" in name.split("."):
            continue  # a parametrization's own internals
        prefix = f"{name}." if name else ""
        for key, value in [*module.named_parameters(recurse=False),
                           *module.named_buffers(recurse=False)]:
            if key not in module._non_persistent_buffers_set:  # not saved: rebuilt on load
                state[prefix + key] = value.detach()
        if parametrize.is_parametrized(module):
            with torch.no_grad():
                for key in module.parametrizations:
                    state[prefix + key] = getattr(module, key).detach()
    for name, module in model.named_modules():
        owner, key = getattr(module, TIED_ATTRIBUTE, None), f"{name}.weight" if name else "weight"
        if owner in state and key in state and torch.equal(state[owner], state[key]):
            state[key] = state[owner]  # one tensor: packed once
    return state


def pack_model(model: nn.Module) -> bytes:
    """The model's stored form itself (what :func:`stored_bytes` counts)."""
    return pack_state_dict(effective_state_dict(model), stored_bits(model),
                           asymmetric_weights(model))


def stored_bytes(model: nn.Module) -> int:
    """Bytes of the model's stored form: sparse where cheaper, weights at their bit width.

    A model with parametrizations is measured as if they were baked in."""
    return packed_size(effective_state_dict(model), stored_bits(model),
                       asymmetric_weights(model))
