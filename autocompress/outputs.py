"""The one tensor a model's output is judged by, whatever form the output takes.

A user's model may return a plain tensor, a tuple, a dict or a structured output (Hugging Face's
``ModelOutput`` with ``.logits``). The task adapter (:mod:`autocompress.tasks.adapters`),
tracing, gradient criteria and block ablation all read the logits here, so none of them guesses
on its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

LOGITS_FORMS = ("a tensor, an output with .logits or ['logits'], or a tuple whose first tensor "
                "is the logits")


def logits_of(output: Any) -> torch.Tensor:
    """The logits in a model's output: itself, ``.logits``, ``["logits"]`` or the first tensor
    of a tuple."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, Mapping) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    if isinstance(output, tuple | list):
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
    raise NoLogits(describe(output))


class NoLogits(TypeError):
    """A model's output holds no logits; ``description`` says what it was."""

    def __init__(self, description: str) -> None:
        super().__init__(f"the model returned {description}; expected {LOGITS_FORMS}")
        self.description = description


def describe(output: Any) -> str:
    """What a model returned, in a few words for an error message."""
    name = type(output).__name__
    if isinstance(output, Mapping):
        return f"a {name} with keys {sorted(map(str, output))} and no logits"
    if isinstance(output, tuple | list):
        return f"a {name} of {len(output)} items and no tensor"
    return f"a {name} and no logits"
