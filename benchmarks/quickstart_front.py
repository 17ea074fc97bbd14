"""The quickstart front against its teacher, measured in one run.

    .venv/bin/python benchmarks/quickstart_front.py [--trials 40] [--seed 0]

Prints the teacher and, among front members within 2 points of its validation accuracy, the one
with the largest compression and the one with the largest speed-up; the last line is the
headline figure. Latencies are medians of timed passes on a noisy 2-core machine.
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
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config = autocompress.load_study(ROOT / "studies" / "quickstart.yaml")
    config = config.with_overrides(trials=args.trials, seed=args.seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        outcome = autocompress.run_study(config, out_dir=out)
    wall = time.perf_counter() - started
    teacher = outcome.teacher
    close = [m for m in outcome.front if teacher["accuracy"] - m.metrics["accuracy"] <= 0.02]
    rows = [("teacher", teacher)]
    if close:
        rows.append(("smallest within 2 pts",
                     max(close, key=lambda m: teacher["memory_bytes"] / m.metrics["memory_bytes"]
                         ).metrics))
        rows.append(("fastest within 2 pts",
                     min(close, key=lambda m: m.metrics["latency_ms"]).metrics))
    print(f"{'':24}{'val acc':>9}{'latency ms':>12}{'bytes':>10}{'smaller':>9}{'faster':>8}")
    for name, m in rows:
        print(f"{name:24}{100 * m['accuracy']:8.2f}%{m['latency_ms']:12.4f}"
              f"{int(m['memory_bytes']):10d}{teacher['memory_bytes'] / m['memory_bytes']:8.1f}x"
              f"{teacher['latency_ms'] / m['latency_ms']:7.2f}x")
    best = max((teacher["memory_bytes"] / m.metrics["memory_bytes"] for m in close), default=0.0)
    print(f"front: {len(outcome.front)} members of {len(outcome.results)} trials, {wall:.0f} s; "
          f"largest compression within 2 points of the teacher: {best:.1f}x")


if __name__ == "__main__":
    main()
