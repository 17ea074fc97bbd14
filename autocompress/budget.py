"""The hardware budget: limits a compressed model must meet, and by how much a trial misses them.

Constraint values follow Optuna's rule: ``<= 0`` is feasible, a positive value is the amount over
the limit, in the limit's own unit (``latency_ms +0.42`` is 0.42 ms too slow). Accuracy limits
are points: ``min_accuracy`` is a share in [0, 1], ``max_accuracy_drop`` is points below the
teacher (``1.0`` = one percentage point).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from autocompress.units import format_bytes

LIMITS = ("max_latency_ms", "max_memory_bytes", "max_peak_memory_bytes", "min_accuracy",
          "max_accuracy_drop", "max_perplexity", "max_perplexity_increase")
CONSTRAINT_OF = {
    "max_latency_ms": "latency_ms",
    "max_memory_bytes": "memory_bytes",
    "max_peak_memory_bytes": "peak_memory_bytes",
}


@dataclass(frozen=True)
class Budget:
    """Limits (any may be None) and the measurement conditions they hold under."""

    max_latency_ms: float | None = None
    max_memory_bytes: int | None = None
    max_peak_memory_bytes: int | None = None
    min_accuracy: float | None = None
    max_accuracy_drop: float | None = None
    max_perplexity: float | None = None           # a language model's, on the validation text
    max_perplexity_increase: float | None = None  # a share over the teacher's: 0.1 = +10%
    batch_size: int | None = None
    threads: int | None = None
    device: str = "cpu"

    @property
    def empty(self) -> bool:
        return all(getattr(self, name) is None for name in LIMITS)

    def accuracy_floor(self, teacher_accuracy: float | None) -> float | None:
        """The lowest acceptable accuracy: the tighter of the two accuracy limits."""
        floors = []
        if self.min_accuracy is not None:
            floors.append(self.min_accuracy)
        if self.max_accuracy_drop is not None and teacher_accuracy is not None:
            floors.append(teacher_accuracy - self.max_accuracy_drop / 100.0)
        return max(floors) if floors else None

    def perplexity_ceiling(self, teacher_perplexity: float | None) -> float | None:
        """The highest acceptable perplexity: the tighter of the two perplexity limits."""
        ceilings = []
        if self.max_perplexity is not None:
            ceilings.append(self.max_perplexity)
        if self.max_perplexity_increase is not None and teacher_perplexity is not None:
            ceilings.append(teacher_perplexity * (1.0 + self.max_perplexity_increase))
        return min(ceilings) if ceilings else None

    def constraint_names(self) -> list[str]:
        names = [CONSTRAINT_OF[k] for k in CONSTRAINT_OF if getattr(self, k) is not None]
        if self.min_accuracy is not None or self.max_accuracy_drop is not None:
            names.append("accuracy")
        if self.max_perplexity is not None or self.max_perplexity_increase is not None:
            names.append("perplexity")
        return names

    def constraints(
        self, metrics: Mapping[str, float], teacher_accuracy: float | None = None, *,
        teacher_perplexity: float | None = None,
    ) -> dict[str, float]:
        """Amount over each limit (``<= 0`` inside it) for the metrics that are known."""
        values = {}
        for limit, name in CONSTRAINT_OF.items():
            bound = getattr(self, limit)
            if bound is not None and name in metrics:
                values[name] = float(metrics[name]) - float(bound)
        floor = self.accuracy_floor(teacher_accuracy)
        if floor is not None and "accuracy" in metrics:
            values["accuracy"] = floor - float(metrics["accuracy"])
        ceiling = self.perplexity_ceiling(teacher_perplexity)
        if ceiling is not None and "perplexity" in metrics:
            values["perplexity"] = float(metrics["perplexity"]) - ceiling
        return values

    def to_dict(self) -> dict[str, object]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def describe(self, teacher_accuracy: float | None = None) -> list[str]:
        """One line per limit, in a person's units."""
        lines = []
        if self.max_latency_ms is not None:
            lines.append(f"latency <= {self.max_latency_ms:g} ms")
        if self.max_memory_bytes is not None:
            lines.append(f"stored size <= {format_bytes(self.max_memory_bytes)}"
                         f" ({self.max_memory_bytes} bytes)")
        if self.max_peak_memory_bytes is not None:
            lines.append(f"peak inference memory <= {format_bytes(self.max_peak_memory_bytes)}")
        if self.min_accuracy is not None:
            lines.append(f"accuracy >= {100 * self.min_accuracy:.2f}%")
        if self.max_accuracy_drop is not None:
            floor = self.accuracy_floor(teacher_accuracy) if teacher_accuracy else None
            extra = f" (>= {100 * floor:.2f}%)" if floor is not None else ""
            lines.append(f"accuracy drop <= {self.max_accuracy_drop:g} points{extra}")
        if self.max_perplexity is not None:
            lines.append(f"perplexity <= {self.max_perplexity:g}")
        if self.max_perplexity_increase is not None:
            lines.append(f"perplexity increase <= {100 * self.max_perplexity_increase:g}%")
        return lines


def format_violations(constraints: Mapping[str, float]) -> str:
    """``latency_ms +0.42; memory_bytes +1200``: the broken limits only; empty when feasible."""
    parts = []
    for name, over in constraints.items():
        if over > 0:
            shown = f"{over:.0f}" if name.endswith("bytes") else f"{over:.4g}"
            parts.append(f"{name} +{shown}")
    return "; ".join(parts)


def feasible(constraints: Mapping[str, float]) -> bool:
    return all(v <= 0 for v in constraints.values())
