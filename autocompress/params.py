"""How a technique declares a parameter it adds to the search space.

Each technique module lists its ``PARAMETERS`` next to the code that reads them (the face
``../shared/DESIGN.md`` describes); :mod:`autocompress.space` checks a YAML space against them.
A parameter left out of a space takes its ``default``: off for pruning and quantization, the
full width for the student, a common setting for distillation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from autocompress.plan import Choice

Kind = Literal["float", "int", "choice", "bool"]


@dataclass(frozen=True)
class Param:
    """One tunable knob: its kind, what it may take, and its value when not searched."""

    name: str
    kind: Kind
    default: Choice
    help: str
    low: float | None = None
    high: float | None = None
    values: tuple[Choice, ...] = ()
    per_layer: bool = False  # a space may search one value per weight layer (``name.<layer>``)

    def allowed(self) -> str:
        """Words for the error message: what this parameter accepts."""
        if self.kind == "choice":
            return "a value or an ordered list from {" + ", ".join(map(str, self.values)) + "}"
        if self.kind == "bool":
            return "true, false or [false, true]"
        return (
            f"a number, a list of numbers or {{low, high}} within [{self.low:g}, {self.high:g}]"
        )
