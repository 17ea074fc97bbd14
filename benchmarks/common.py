"""What the benchmarks share: the three sizes of a run, studies run in scratch folders with cached
teachers, selection of front members by validation accuracy (test reported), and the headline
each benchmark returns.

Every benchmark's ``main(size)`` takes one of :data:`SIZES`: ``full`` (the figures the docs
quote), ``quick`` (fewer trials and seeds) and ``smoke`` (seconds: the 8x8 digits, a teacher
and students trained for 2 epochs, two or three trials; :func:`shrink`), which the tests run so
no benchmark drifts away from the API unnoticed. Smoke figures mean nothing.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

import autocompress

ROOT = Path(__file__).resolve().parents[1]
# git-ignored: each teacher is trained once and reused by every run (a test points it elsewhere)
TEACHERS = Path(os.environ.get("AUTOCOMPRESS_BENCH_TEACHERS", ROOT / "benchmarks" / ".teachers"))
SIZES = ("full", "quick", "smoke")
T = TypeVar("T")


@dataclass
class Headline:
    """The last line of a benchmark and whether its target was met (None: no target).

    ``figures`` are the numbers the line states, by name (finite ones only), so a test or a
    summary can read them without parsing the text.
    """

    name: str
    text: str
    met: bool | None = None
    figures: dict[str, float] = field(default_factory=dict)


def sized(size: str, *, full: T, quick: T, smoke: T) -> T:
    """The setting for ``size`` (one of :data:`SIZES`)."""
    if size not in SIZES:
        raise ValueError(f"size: got {size!r}, expected one of {', '.join(SIZES)}")
    return {"full": full, "quick": quick, "smoke": smoke}[size]


def shrink(config: autocompress.StudyConfig, size: str) -> autocompress.StudyConfig:
    """``config`` as run at ``size``: unchanged, except in the smoke form, which swaps in the
    8x8 digits (1,797 images), a teacher trained for 2 epochs, 2 fine-tune epochs and 3 timed
    passes (a teacher that weak leaves some students within the accuracy budgets, so fronts
    are not empty). Trial counts stay each benchmark's own choice."""
    if size != "smoke":
        return config
    task = {**vars(config.task), "dataset": "digits", "teacher_epochs": 2, "checkpoint": None}
    measure = {**vars(config.measure), "warmup": 1, "repeats": 3}
    return config.with_overrides(where="benchmark smoke form", task=task, measure=measure,
                                 finetune={**vars(config.finetune), "epochs": 2})


def study(fields: Mapping[str, Any], *, name: str = "bench", size: str = "full"
          ) -> autocompress.StudyConfig:
    """A study config from fields (as in a study file), quickstart's where not given, at
    ``size`` (see :func:`shrink`)."""
    base = autocompress.load_study(ROOT / "studies" / "quickstart.yaml")
    data: dict[str, Any] = {
        "name": name, "task": vars(base.task), "space": str(ROOT / base.space),
        "objectives": dict(base.objectives), "budget": base.budget.to_dict(),
        "finetune": vars(base.finetune), "trials": base.trials, "seed": 0,
        "sampler": base.sampler, "measure": vars(base.measure),
    }
    data.update(fields)
    return shrink(autocompress.study_from_dict(data, where=f"benchmark {name}"), size)


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


def within(outcome: autocompress.StudyOutcome, points: float, *, on: str = "accuracy"
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
    teacher's *validation* accuracy, or None: chosen on validation, as a user would choose,
    so the test accuracy the tables report is an untouched estimate (choosing on test would
    report the best of several draws on the split meant to stay unseen)."""
    close = within(outcome, points, on="accuracy")
    return max(close, key=lambda m: compression(outcome, m), default=None)


def accuracy_interval(accuracy: float, n: int, *, level: float = 0.95, draws: int = 10_000,
                      seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of an accuracy measured on ``n`` test images.

    Resampling the ``n`` per-image outcomes (right or wrong) with replacement draws the count
    right from Binomial(n, accuracy), so the accuracy and ``n`` are all it needs."""
    if n < 1 or not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"accuracy_interval: got accuracy {accuracy!r} on {n!r} images")
    resampled = np.random.default_rng(seed).binomial(n, accuracy, size=draws) / n
    tail = (1.0 - level) / 2
    low, high = np.quantile(resampled, [tail, 1.0 - tail])
    return float(low), float(high)


def spread(values: Sequence[float], fmt: str = "{:.2f}") -> str:
    """``median (lowest-highest)`` of several seeds' figures, each written with ``fmt``."""
    if not values:
        raise ValueError("spread: no values")
    text = fmt.format(statistics.median(values))
    return text if len(values) == 1 else (
        f"{text} ({fmt.format(min(values))}-{fmt.format(max(values))})")


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
