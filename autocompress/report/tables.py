"""``trials.csv``, ``pareto.csv`` and the front printed at the end of a search."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from autocompress.files import write_atomic
from autocompress.pareto import ParetoFront
from autocompress.result import FAILED, INTERRUPTED, Stop, TrialResult
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
    trials = results_dataframe(results)
    write_atomic(out_dir / "trials.csv", trials.to_csv(index=False))
    members = results_dataframe(front.members)
    if not front.members:  # an empty front still names its columns: those of the trials
        members = trials.iloc[0:0]
    write_atomic(out_dir / "pareto.csv", members.to_csv(index=False))


def describe_metrics(metrics: Mapping[str, float]) -> str:
    """``acc 97.1%  0.061 ms  31.2 kB``: the headline figures in a person's units ('-': not
    measured); a language model's: ``ppl 46.08  412.3 ms prefill  23.4 tok/s  538 MB``."""
    if "tokens_per_s" in metrics:
        ppl = f"{metrics['perplexity']:.2f}" if "perplexity" in metrics else "-"
        lat = f"{metrics['latency_ms']:.1f} ms" if "latency_ms" in metrics else "- ms"
        mem = format_bytes(metrics["memory_bytes"]) if "memory_bytes" in metrics else "-"
        return f"ppl {ppl}  {lat} prefill  {metrics['tokens_per_s']:.1f} tok/s  {mem}"
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


METRIC_LABELS = {"accuracy": "accuracy", "test_accuracy": "test accuracy",
                 "perplexity": "perplexity", "test_perplexity": "test perplexity",
                 "latency_ms": "latency", "tokens_per_s": "decode speed",
                 "memory_bytes": "stored size", "peak_memory_bytes": "peak memory",
                 "parameters": "parameters"}
TEST_OF = {"accuracy": "test_accuracy", "perplexity": "test_perplexity"}


def format_metric(name: str, value: Any) -> str:
    """One figure in a person's units (accuracy in %, sizes in kB/MB, ms, tokens/s); '-' when
    unknown, so the report and the CLI never show a raw fraction or byte count."""
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if name.endswith("accuracy"):
        return f"{100 * value:.2f}%"
    if name.endswith("bytes"):
        return format_bytes(value)
    if name.endswith("_ms"):
        return f"{value:.3g} ms"
    if name == "tokens_per_s":
        return f"{value:.4g} tokens/s"
    if name == "parameters":
        return f"{value / 1e6:.3g}M" if value >= 1e6 else f"{value / 1e3:.3g}k"
    return f"{value:.4g}"


def format_choice(value: Any) -> str:
    """A plan's value as a study file would spell it (floats to 3 digits)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def split_choices(plans: Sequence[Any], searched: Sequence[str] | None = None
                  ) -> tuple[list[str], dict[str, Any]]:
    """(searched names, fixed name -> value), in the plans' order: what the study chose apart
    from what every trial shared. Without ``searched``, a choice is searched when it varies."""
    names = list(dict.fromkeys(k for p in plans for k in p.choices))
    if searched is None:
        searched = [n for n in names
                    if len({repr(p.choices[n]) for p in plans if n in p.choices}) > 1]
    varying = [n for n in names if n in set(searched)]
    fixed = {n: next(p.choices[n] for p in plans if n in p.choices)
             for n in names if n not in varying}
    return varying, fixed


def describe_over(constraints: Mapping[str, float]) -> str:
    """``stored size 8.87 kB over limit; accuracy 2.10 points under limit``: the limits broken, in
    a person's units (empty when every limit holds)."""
    parts = []
    for name, over in constraints.items():
        if over <= 0:
            continue
        label = METRIC_LABELS.get(name, name)
        if name == "accuracy":
            parts.append(f"{label} {100 * over:.2f} points under limit")
        else:
            parts.append(f"{label} {format_metric(name, over)} over limit")
    return "; ".join(parts)


def trial_outcome(result: TrialResult, front: Collection[int | None] = ()) -> str:
    """What became of a trial, in the categories of :class:`TrialCounts` (``front`` for the
    feasible trials numbered in ``front``), so the report's words match the CLI's counts."""
    if result.state == FAILED:
        return "interrupted" if result.reason.startswith(INTERRUPTED) else "failed"
    if result.stop is not None:
        return {Stop.SKIPPED: "not trained", Stop.EARLY: "stopped early",
                Stop.STRUCTURE: "stopped at structure"}[result.stop.kind]
    if not result.feasible:
        return "infeasible"
    return "front" if result.number in front else "feasible"


def trial_reason(result: TrialResult) -> str:
    """Why a trial fell short: its failure, its stop or the limits it broke ('' when none)."""
    if result.state == FAILED:
        return result.reason
    if result.stopped(Stop.SKIPPED):
        return f"not worth training: {result.stop.why}"
    if result.stopped(Stop.EARLY):
        return f"stopped early at {result.stopped_at}"
    over = describe_over(result.constraints)
    return f"over budget once built: {over}" if result.stopped(Stop.STRUCTURE) else over


def figure_names(objectives: Sequence[str], rows: Sequence[Any]) -> list[str]:
    """The objectives, then the test split's figure for the quality objective where measured."""
    return [*objectives, *(TEST_OF[n] for n in objectives
                           if n in TEST_OF and any(TEST_OF[n] in r.metrics for r in rows))]


def teacher_ratios(metrics: Mapping[str, float], teacher: Mapping[str, float]
                   ) -> dict[str, float | None]:
    """How many times smaller and faster than the teacher (by tokens/s for a language model,
    which has no latency); None where either figure is missing."""
    def ratio(a: Any, b: Any) -> float | None:
        ok = all(isinstance(v, int | float) and math.isfinite(v) for v in (a, b))
        return a / b if ok and b > 0 else None

    faster = ratio(teacher.get("latency_ms"), metrics.get("latency_ms")) \
        if "latency_ms" in teacher else ratio(metrics.get("tokens_per_s"),
                                              teacher.get("tokens_per_s"))
    return {"smaller": ratio(teacher.get("memory_bytes"), metrics.get("memory_bytes")),
            "faster": faster}


def trial_title(result: TrialResult, objectives: Sequence[str],
                front: Collection[int | None] = ()) -> str:
    """``trial 7 (infeasible): accuracy 80.37%, ...; why``: a plotted point's hover label."""
    figures = ", ".join(f"{METRIC_LABELS.get(n, n)} {format_metric(n, result.metrics.get(n))}"
                        for n in objectives)
    why = trial_reason(result)
    return (f"trial {result.number} ({trial_outcome(result, front)}): {figures}"
            + (f"; {why}" if why else ""))
