"""What the benchmarks share: studies run in scratch folders with cached teachers, selection of
front members by test accuracy, and the headline each benchmark returns."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import autocompress

ROOT = Path(__file__).resolve().parents[1]
# git-ignored: each teacher is trained once and reused by every run (a test points it elsewhere)
TEACHERS = Path(os.environ.get("AUTOCOMPRESS_BENCH_TEACHERS", ROOT / "benchmarks" / ".teachers"))


@dataclass
class Headline:
    """The last line of a benchmark and whether its target was met (None: no target)."""

    name: str
    text: str
    met: bool | None = None


def study(fields: Mapping[str, Any], *, name: str = "bench") -> autocompress.StudyConfig:
    """A study config from fields (as in a study file), quickstart's where not given."""
    base = autocompress.load_study(ROOT / "studies" / "quickstart.yaml")
    data: dict[str, Any] = {
        "name": name, "task": vars(base.task), "space": str(ROOT / base.space),
        "objectives": dict(base.objectives), "budget": base.budget.to_dict(),
        "finetune": vars(base.finetune), "trials": base.trials, "seed": 0,
        "sampler": base.sampler, "measure": vars(base.measure),
    }
    data.update(fields)
    return autocompress.study_from_dict(data, where=f"benchmark {name}")


@contextmanager
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="autocompress-bench-") as folder:
        yield Path(folder)


def run(config: autocompress.StudyConfig, out: Path) -> tuple[autocompress.StudyOutcome, float]:
    """Run ``config`` in ``out`` with its teacher from the benchmark cache; (outcome, wall s).

    The teacher is trained once per recipe and copied in, so no timing includes its training.
    """
    task = config.task
    cache = TEACHERS / f"{task.dataset}-{task.teacher}-{task.teacher_epochs}"
    out.mkdir(parents=True, exist_ok=True)
    if not (cache / "teacher.pt").is_file():
        with scratch() as tmp:
            autocompress.run_study(config.with_overrides(trials=1, name="teacher"), out_dir=tmp)
            cache.mkdir(parents=True, exist_ok=True)
            for name in ("teacher.pt", "teacher.json"):
                shutil.copy(tmp / name, cache / name)
    for name in ("teacher.pt", "teacher.json"):
        shutil.copy(cache / name, out / name)
    started = time.perf_counter()
    outcome = autocompress.run_study(config, out_dir=out)
    return outcome, time.perf_counter() - started


def within(outcome: autocompress.StudyOutcome, points: float, *, on: str = "test_accuracy"
           ) -> list[autocompress.TrialResult]:
    """Front members whose accuracy (``on``: test or validation) is within ``points`` of the
    teacher's on the same split."""
    floor = outcome.teacher[on] - points / 100 - 1e-9
    return [m for m in outcome.front if m.metrics.get(on, -1.0) >= floor]


def compression(outcome: autocompress.StudyOutcome, member: autocompress.TrialResult) -> float:
    return outcome.teacher["memory_bytes"] / member.metrics["memory_bytes"]


def most_compressed(outcome: autocompress.StudyOutcome, points: float
                    ) -> autocompress.TrialResult | None:
    """The front member with the largest compression among those within ``points`` of the
    teacher's test accuracy (the split the search never saw), or None."""
    close = within(outcome, points, on="test_accuracy")
    return max(close, key=lambda m: compression(outcome, m), default=None)


def choices(member: autocompress.TrialResult, searched: list[str]) -> str:
    """The member's searched choices, short."""
    parts = []
    for name in searched:
        value = member.plan.get(name)
        text = f"{value:.3g}" if isinstance(value, float) else str(value)
        parts.append(f"{name.split('.', 1)[-1]}={text}")
    return " ".join(parts)


def table(header: list[str], rows: list[list[Any]]) -> str:
    """Plain aligned columns (numbers right-aligned)."""
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = []
    for row in cells:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    return "\n".join(lines)
