"""A study's Pareto front against its own teacher, measured in one run.

    .venv/bin/python benchmarks/front_vs_teacher.py [STUDY.yaml] [--trials N] [--seed S]
                                                    [--within POINTS]

Runs the study in a temporary folder, then prints the teacher and, among front members within
POINTS of its validation accuracy, the smallest and the fastest, with their test accuracy (the
split the search never saw). The last line is the headline figure. Latencies are medians of
timed passes in the study's runtime on a noisy 2-core machine: compare ratios, not times.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import autocompress

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", nargs="?", default=str(ROOT / "studies" / "quickstart.yaml"))
    parser.add_argument("--trials", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--within", type=float, default=2.0,
                        help="accuracy points below the teacher a member may be (default 2)")
    args = parser.parse_args()
    config = autocompress.load_study(args.study).with_overrides(trials=args.trials, seed=args.seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        outcome = autocompress.run_study(config, out_dir=out)
    wall = time.perf_counter() - started
    teacher = outcome.teacher
    close = [m for m in outcome.front
             if teacher["accuracy"] - m.metrics["accuracy"] <= args.within / 100 + 1e-9]
    rows = [("teacher", None, teacher)]
    if close:
        small = max(close, key=lambda m: teacher["memory_bytes"] / m.metrics["memory_bytes"])
        fast = min(close, key=lambda m: m.metrics["latency_ms"])
        rows += [(f"smallest within {args.within:g} pts", small.number, small.metrics),
                 (f"fastest within {args.within:g} pts", fast.number, fast.metrics)]
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
    print(f"within {args.within:g} points of the teacher: largest compression {best_size:.1f}x, "
          f"largest speed-up {best_speed:.2f}x")


if __name__ == "__main__":
    main()
