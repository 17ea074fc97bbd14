"""A study's Pareto front against its own teacher, measured in one run.

    .venv/bin/python benchmarks/front_vs_teacher.py [STUDY.yaml] [--trials N] [--seed S]
                                                    [--within POINTS] [--smoke]
    .venv/bin/python -m benchmarks front_vs_teacher [--quick | --smoke]   (the quickstart study)

Runs the study in a temporary folder, then prints the teacher and, among front members within
POINTS of its validation accuracy, the smallest and the fastest, with their test accuracy (the
split the search never saw). The last line is the headline figure. Latencies are medians of
timed passes in the study's runtime on a noisy 2-core machine: compare ratios, not times.
``--quick`` runs 10 trials, ``--smoke`` 3 on the 8x8 digits.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the benchmarks package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import autocompress
from benchmarks.common import ROOT, Headline, shrink, sized

QUICKSTART = ROOT / "studies" / "quickstart.yaml"


def main(size: str = "full", *, study: str | Path = QUICKSTART, trials: int | None = None,
         seed: int | None = None, within: float = 2.0) -> Headline:
    """Run ``study`` (its own trial count when ``size`` is full and ``trials`` not given)."""
    config = autocompress.load_study(study)
    trials = trials or sized(size, full=None, quick=10, smoke=3)
    config = shrink(config.with_overrides(trials=trials, seed=seed), size)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        outcome = autocompress.run_study(config, out_dir=out)
    wall = time.perf_counter() - started
    teacher = outcome.teacher
    close = [m for m in outcome.front
             if teacher["accuracy"] - m.metrics["accuracy"] <= within / 100 + 1e-9]
    rows = [("teacher", None, teacher)]
    if close:
        small = max(close, key=lambda m: teacher["memory_bytes"] / m.metrics["memory_bytes"])
        fast = min(close, key=lambda m: m.metrics["latency_ms"])
        rows += [(f"smallest within {within:g} pts", small.number, small.metrics),
                 (f"fastest within {within:g} pts", fast.number, fast.metrics)]
    m = config.measure
    print(f"study {config.name}: {len(outcome.results)} trials in {wall:.0f} s; latency at batch "
          f"{m.batch_size}, {m.threads} thread(s), runtime {m.runtime}")
    print(f"{'':26}{'trial':>6}{'val acc':>9}{'test acc':>9}{'latency ms':>12}{'bytes':>10}"
          f"{'smaller':>9}{'faster':>8}")
    for name, number, x in rows:
        print(f"{name:26}{'-' if number is None else number:>6}{100 * x['accuracy']:8.2f}%"
              f"{100 * x.get('test_accuracy', float('nan')):8.2f}%{x['latency_ms']:12.4f}"
              f"{int(x['memory_bytes']):10d}{teacher['memory_bytes'] / x['memory_bytes']:8.1f}x"
              f"{teacher['latency_ms'] / x['latency_ms']:7.2f}x")
    best_size = max((teacher["memory_bytes"] / c.metrics["memory_bytes"] for c in close),
                    default=0.0)
    best_speed = max((teacher["latency_ms"] / c.metrics["latency_ms"] for c in close), default=0.0)
    text = (f"within {within:g} points of the teacher: largest compression {best_size:.1f}x, "
            f"largest speed-up {best_speed:.2f}x")
    print(text)
    return Headline(f"front vs teacher ({config.name})", text, None,
                    {"compression": best_size, "speedup": best_speed})


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", nargs="?", default=str(QUICKSTART))
    parser.add_argument("--trials", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--within", type=float, default=2.0,
                        help="accuracy points below the teacher a member may be (default 2)")
    parser.add_argument("--smoke", action="store_const", const="smoke", default="full",
                        dest="size", help="the smallest run (the 8x8 digits, 3 trials)")
    args = parser.parse_args()
    main(args.size, study=args.study, trials=args.trials, seed=args.seed, within=args.within)


if __name__ == "__main__":
    cli()
