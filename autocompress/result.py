"""What one trial found (:class:`TrialResult`), why it stopped short (:class:`StopReason`), and
the counts every summary of a study shows (:class:`TrialCounts`).

Why a trial stopped is a typed value, parsed from and printed to its stored text form in one
place, so the CLI, the HTML report and the benchmarks cannot disagree on what a trial was.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from autocompress.budget import feasible, format_violations
from autocompress.plan import Plan

COMPLETE, FAILED, PRUNED = "complete", "failed", "pruned"
MAIN_COLUMNS = ("accuracy", "latency_ms", "memory_bytes")  # kept first, never renamed
INTERRUPTED = "interrupted"  # reason prefix of a trial a stopped or killed search left running


class Stop(enum.Enum):
    """The three ways a trial ends without being trained to the end."""

    STRUCTURE = "structure"  # over the budget once built: never trained (constraint first)
    EARLY = "epoch"          # stopped between epochs by the early-stopping rule
    SKIPPED = "skipped"      # a learned predictor judged it not worth training


@dataclass(frozen=True)
class StopReason:
    """Why a trial stopped short; ``str()`` is the stored form (``structure``, ``epoch 2``,
    ``skipped: why``), :meth:`parse` reads it back.

    >>> StopReason.parse(str(StopReason(Stop.EARLY, epoch=2)))
    StopReason(kind=<Stop.EARLY: 'epoch'>, epoch=2, why='')
    """

    kind: Stop
    epoch: int | None = None
    why: str = ""

    def __str__(self) -> str:
        if self.kind is Stop.EARLY:
            return f"epoch {self.epoch}"
        if self.kind is Stop.SKIPPED:
            return f"skipped: {self.why}"
        return self.kind.value

    @classmethod
    def parse(cls, text: str | None) -> StopReason | None:
        if not text:
            return None
        if text.startswith(Stop.SKIPPED.value):
            return cls(Stop.SKIPPED, why=text.removeprefix(Stop.SKIPPED.value).lstrip(": "))
        if text.startswith(Stop.EARLY.value):
            epoch = text.removeprefix(Stop.EARLY.value).strip()
            return cls(Stop.EARLY, epoch=int(epoch) if epoch.isdigit() else None)
        return cls(Stop.STRUCTURE)


@dataclass
class TrialResult:
    """What one trial found: its plan, state, metrics and how they were measured."""

    plan: Plan
    state: str = COMPLETE
    metrics: dict[str, float] = field(default_factory=dict)
    measurement: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    duration_s: float = 0.0
    number: int | None = None
    constraints: dict[str, float] = field(default_factory=dict)
    stop: StopReason | None = None
    packed: bytes | None = field(default=None, repr=False)  # the finished model's stored form

    @property
    def stopped_at(self) -> str:
        """The stored text form of :attr:`stop` ("" when the trial was not stopped)."""
        return str(self.stop) if self.stop else ""

    def stopped(self, kind: Stop) -> bool:
        return self.stop is not None and self.stop.kind is kind

    @property
    def ok(self) -> bool:
        """Completed with every metric measured (not failed, not stopped early or at structure)."""
        return self.state == COMPLETE and self.stop is None

    @property
    def feasible(self) -> bool:
        return self.state == COMPLETE and feasible(self.constraints)

    @property
    def violations(self) -> str:
        return format_violations(self.constraints)

    def to_row(self) -> dict[str, Any]:
        """One flat row: ``trial``, ``state``, the metrics, then ``plan.<choice>`` columns."""
        row: dict[str, Any] = {"trial": self.number, "state": self.state}
        for name in MAIN_COLUMNS:
            row[name] = self.metrics.get(name)
        row.update({k: v for k, v in self.metrics.items() if k not in MAIN_COLUMNS})
        row["feasible"] = self.feasible
        row["violations"] = self.violations
        row["stopped_at"] = self.stopped_at
        row["duration_s"] = round(self.duration_s, 3)
        row["reason"] = self.reason
        row.update({f"plan.{k}": v for k, v in self.plan.choices.items()})
        row["plan.seed"] = self.plan.seed
        return row


@dataclass(frozen=True)
class TrialCounts:
    """How a study's trials ended; every summary (CLI, HTML report, study.json) shows these.

    Each trial is in exactly one of ``feasible``, ``infeasible_trained``, ``structure``,
    ``early``, ``skipped``, ``failed`` and ``interrupted``; ``infeasible`` adds the two
    infeasible kinds.
    """

    total: int = 0
    feasible: int = 0
    infeasible_trained: int = 0
    structure: int = 0
    early: int = 0
    skipped: int = 0
    failed: int = 0
    interrupted: int = 0

    @property
    def infeasible(self) -> int:
        return self.infeasible_trained + self.structure

    @classmethod
    def of(cls, results: Iterable[TrialResult]) -> TrialCounts:
        counts = dict.fromkeys(("feasible", "infeasible_trained", "structure", "early",
                                "skipped", "failed", "interrupted"), 0)
        total = 0
        for r in results:
            total += 1
            if r.state == FAILED:
                key = "interrupted" if r.reason.startswith(INTERRUPTED) else "failed"
            elif r.stop is not None and r.stop.kind is not Stop.STRUCTURE:
                key = "skipped" if r.stop.kind is Stop.SKIPPED else "early"
            elif r.stop is not None:
                key = "structure"
            else:
                key = "feasible" if r.feasible else "infeasible_trained"
            counts[key] += 1
        return cls(total=total, **counts)

    def summary(self) -> str:
        """The one sentence the CLI prints after a search (and the report repeats)."""
        return (f"{self.total} trials ({self.infeasible} infeasible, {self.structure} of them "
                f"stopped at structure without training; {self.early} stopped early; "
                + (f"{self.skipped} not trained, called hopeless by the predictor; "
                   if self.skipped else "")
                + f"{self.failed} failed"
                + (f"; {self.interrupted} interrupted by a stopped search, then retried"
                   if self.interrupted else "") + ")")
