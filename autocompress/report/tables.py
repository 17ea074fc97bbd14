"""``trials.csv``, ``pareto.csv`` and the front printed at the end of a search."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from autocompress.files import write_atomic
from autocompress.pareto import ParetoFront
from autocompress.result import FAILED, Stop, TrialResult
from autocompress.units import format_bytes

BASE_COLUMNS = ["trial", "state", "accuracy", "latency_ms", "memory_bytes"]


def results_dataframe(results: Sequence[Any]) -> pd.DataFrame:
    """One row per trial; the base columns first, then metrics, then ``plan.<choice>``."""
    frame = pd.DataFrame([r.to_row() for r in results])
    if frame.empty:
        return pd.DataFrame(columns=BASE_COLUMNS)
    plan_columns = [c for c in frame.columns if c.startswith("plan.")]
    other = [c for c in frame.columns if c not in BASE_COLUMNS and c not in plan_columns]
    return frame[BASE_COLUMNS + other + plan_columns].sort_values("trial", ignore_index=True)


def write_tables(out_dir: Path, results: Sequence[Any], front: ParetoFront) -> None:
    write_atomic(out_dir / "trials.csv", results_dataframe(results).to_csv(index=False))
    write_atomic(out_dir / "pareto.csv", results_dataframe(front.members).to_csv(index=False))


def describe_metrics(metrics: Mapping[str, float]) -> str:
    """``acc 97.1%  0.061 ms  31.2 kB``: the headline figures in a person's units ('-': not
    measured)."""
    acc = f"{100 * metrics['accuracy']:.1f}%" if "accuracy" in metrics else "-"
    lat = f"{metrics['latency_ms']:.3f} ms" if "latency_ms" in metrics else "- ms"
    mem = format_bytes(metrics["memory_bytes"]) if "memory_bytes" in metrics else "-"
    text = f"acc {acc}  {lat}  {mem}"
    if "peak_memory_bytes" in metrics:
        text += f"  peak {format_bytes(metrics['peak_memory_bytes'])}"
    return text


def describe_result(result: TrialResult) -> str:
    """One trial in a line: its figures, or why it stopped or failed."""
    if result.state == FAILED:
        return f"FAILED {result.reason}"
    text = describe_metrics(result.metrics)
    if result.stopped(Stop.SKIPPED):
        return f"{text}  not trained: {result.stop.why}"
    if result.stopped(Stop.STRUCTURE):
        return f"{text}  over budget at structure ({result.violations}), not trained"
    if result.stop is not None:
        return f"{text}  stopped early at {result.stopped_at}"
    if not result.feasible:
        return f"{text}  infeasible ({result.violations})"
    return text


@dataclass(frozen=True)
class TrialLine:
    """Prints a line per finished trial: ``trial 7/40 (#6)  acc 93.1% ...  [choices]  1.2 s``.

    Module-level and frozen, so it pickles to ``--jobs`` workers with the search."""

    total: int
    searched: tuple[str, ...]
    progress: Callable[[str], None]

    def __call__(self, result: TrialResult, count: int, label: str = "") -> None:
        choices = " ".join(f"{n.split('.')[-1]}={result.plan.get(n)!s:.5}"
                           for n in self.searched)
        self.progress(f"{label}trial {count}/{self.total} (#{result.number})  "
                      f"{describe_result(result)}  [{choices}]  {result.duration_s:.1f} s")


def _short(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def format_no_front(results: Sequence[Any], closest: int = 5) -> str:
    """Instead of an empty table: say no trial met the budget, and show the nearest misses."""
    missed = [r for r in results if r.state == "complete" and not r.feasible]
    if not missed:
        return "No trial completed, so there is no front (see trials.csv for the reasons)."
    missed.sort(key=lambda r: sum(v for v in r.constraints.values() if v > 0)
                / max(1, len(r.constraints)))
    lines = [f"No trial met the budget: {len(missed)} completed trials were all infeasible. "
             f"The {min(closest, len(missed))} closest, and the limits each broke:"]
    for r in missed[:closest]:
        stage = " (stopped at structure)" if r.stopped(Stop.STRUCTURE) else ""
        lines.append(f"  trial {r.number}: {describe_metrics(r.metrics)}  broke "
                     f"{r.violations}{stage}")
    return "\n".join(lines)


def short_names(names: Sequence[str]) -> list[str]:
    """``prune.ratio`` -> ``ratio`` where the last part is unique, else the full name."""
    last = [n.split(".", 1)[-1] if n.count(".") == 1 else n for n in names]
    return [s if last.count(s) == 1 else n for s, n in zip(last, names, strict=True)]


def format_front(front: ParetoFront, searched: Sequence[str]) -> str:
    """The front as a text table, with the teacher's figures and the ratios against them."""
    teacher = front.teacher
    head = ["trial", "accuracy", "latency_ms", "memory", "smaller", "faster",
            *short_names(searched)]
    rows = []
    if teacher:
        rows.append(["teacher", f"{100 * teacher['accuracy']:.2f}%",
                     f"{teacher['latency_ms']:.4f}", format_bytes(teacher["memory_bytes"]),
                     "1.0x", "1.0x", *["-"] * len(searched)])
    for member in front:
        m = member.metrics
        smaller = teacher["memory_bytes"] / m["memory_bytes"] if teacher else float("nan")
        faster = teacher["latency_ms"] / m["latency_ms"] if teacher else float("nan")
        rows.append([str(member.number), f"{100 * m['accuracy']:.2f}%",
                     f"{m['latency_ms']:.4f}", format_bytes(m["memory_bytes"]),
                     f"{smaller:.1f}x", f"{faster:.1f}x",
                     *[_short(member.plan.get(name)) for name in searched]])
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(str(c).rjust(w) for c, w in zip(row, widths, strict=True))
             for row in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
