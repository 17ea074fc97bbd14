"""A Plan: the plain, serialisable record of one trial's choices.

Everything after the sampler works from a Plan, so a trial can be replayed, exported or run on
another backend from its Plan and seed alone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

Choice = int | float | str | bool | None


@dataclass(frozen=True)
class Plan:
    """The choices of one trial, keyed by dotted names such as ``prune.ratio``.

    >>> plan = Plan({"prune.ratio": 0.5, "quantize.bits": 8}, seed=3)
    >>> plan.get("prune.ratio")
    0.5
    >>> Plan.from_json(plan.to_json()) == plan
    True
    """

    choices: Mapping[str, Choice] = field(default_factory=dict)
    seed: int = 0

    def get(self, name: str, default: Choice = None) -> Choice:
        return self.choices.get(name, default)

    def for_layer(self, name: str, layer: str, default: Choice = None) -> Choice:
        """A per-layer choice (``prune.ratio.3``) if the plan has one, else the global one."""
        return self.choices.get(f"{name}.{layer}", self.choices.get(name, default))

    def section(self, prefix: str) -> dict[str, Choice]:
        """The choices under ``prefix.`` with the prefix stripped."""
        start = prefix + "."
        return {k[len(start):]: v for k, v in self.choices.items() if k.startswith(start)}

    def to_dict(self) -> dict[str, Any]:
        return {"choices": dict(self.choices), "seed": self.seed}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        return cls(choices=dict(data.get("choices", {})), seed=int(data.get("seed", 0)))

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.from_dict(json.loads(text))

    def __hash__(self) -> int:
        return hash((tuple(sorted(self.choices.items())), self.seed))
