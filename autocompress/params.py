"""How a technique declares a parameter it adds to the search space, and reads it from a Plan.

Each technique module lists its ``PARAMETERS`` next to the code that reads them (the face
``docs/architecture.md`` describes); :mod:`autocompress.space` checks a YAML space against them.
A parameter left out of a space takes its ``default``: off for pruning and quantization, the
full width for the student, a common setting for distillation. That default is written once, in
the :class:`Param`; a technique reads its choices through :class:`Settings`, which falls back to
it, so a hand-made Plan and a Plan sampled from a space mean the same thing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from autocompress.plan import Choice, Plan

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


class Settings:
    """One section's reader of a Plan: a choice, or its :class:`Param`'s default when absent.

    A technique reads only its own section (a name outside it is a bug, and raises), so no
    technique decides from another one's choices.

    >>> ratio = Param("ratio", "float", 0.0, "share removed", low=0.0, high=0.99, per_layer=True)
    >>> setting = Settings("prune", (ratio,))
    >>> setting(Plan({"prune.ratio": 0.5}), "prune.ratio")
    0.5
    >>> setting(Plan({"prune.ratio.3": 0.2}), "prune.ratio", layer="3")
    0.2
    >>> setting(Plan({}), "prune.ratio", layer="1")
    0.0
    """

    def __init__(self, section: str, params: Sequence[Param]) -> None:
        self.section = section
        self.params = {f"{section}.{p.name}": p for p in params}

    def __call__(self, plan: Plan, name: str, *, layer: str | None = None) -> Choice:
        """``name`` (dotted, e.g. ``prune.ratio``), per ``layer`` when given and per-layer."""
        param = self.params.get(name)
        if param is None:
            raise KeyError(f"{name!r} is not a parameter of {self.section}: "
                           f"expected one of {sorted(self.params)}")
        if layer is None:
            return plan.get(name, param.default)
        if not param.per_layer:
            raise KeyError(f"{name!r} is global only: it has no per-layer value")
        return plan.for_layer(name, layer, param.default)
