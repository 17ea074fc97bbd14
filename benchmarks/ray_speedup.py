"""Ray Tune against a serial run of the same study, measured in one run.

    .venv/bin/python benchmarks/ray_speedup.py [STUDY.yaml] [--trials 16]

Runs the study (random sampler, fifo: every trial does the same work on both sides) three ways:
serially with the Optuna backend in this process, on a local Ray with 1 trial at a time, and
on Ray with 2 at a time; and times Ray's fixed start-up (``ray.init``) on its own. The last line
is the headline: Ray with 2 concurrent trials over the serial run (target: at most 0.65 on a
2-core machine). Note that the serial run trains with torch's default 2 threads on the 2 cores,
while a Ray trial gets 1 CPU: the line before it compares Ray with itself at 1 CPU per trial.
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
    parser.add_argument("study", nargs="?", default=str(ROOT / "studies" / "lenet5_ray.yaml"))
    parser.add_argument("--trials", type=int, default=16)
    args = parser.parse_args()
    base = autocompress.load_study(args.study)
    import ray

    from autocompress.backends.ray_backend import init_ray

    started = time.perf_counter()
    init_ray("")
    startup = time.perf_counter() - started
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        teacher_dir = Path(tmp) / "teacher"
        # train the teacher once, outside every timing
        autocompress.run_study(base.with_overrides(trials=1, backend="optuna"),
                               out_dir=teacher_dir)
        for label, backend, concurrent in (("serial, Optuna in-process", "optuna", 1),
                                           ("Ray, 1 trial at a time", "ray", 1),
                                           ("Ray, 2 trials at a time", "ray", 2)):
            out = Path(tmp) / label.split(",")[0].lower() / str(concurrent)
            out.mkdir(parents=True)
            for name in ("teacher.pt", "teacher.json"):
                (out / name).write_bytes((teacher_dir / name).read_bytes())
            config = base.with_overrides(trials=args.trials, sampler="random", backend=backend,
                                         ray_max_concurrent=concurrent, ray_scheduler="fifo")
            started = time.perf_counter()
            outcome = autocompress.run_study(config, out_dir=out)
            wall = time.perf_counter() - started
            busy = sum(r.duration_s for r in outcome.results)
            rows.append((label, wall, busy, outcome.front.hypervolume))
    ray.shutdown()
    serial = rows[0][1]
    print(f"study {base.name}: {args.trials} trials each way; Ray start-up (ray.init): "
          f"{startup:.1f} s")
    print(f"{'':28}{'wall s':>8}{'in trials s':>13}{'vs serial':>11}{'hypervolume':>13}")
    for label, wall, busy, volume in rows:
        print(f"{label:28}{wall:8.1f}{busy:13.1f}{wall / serial:11.2f}{volume:13.4f}")
    print(f"Ray, 2 at a time / Ray, 1 at a time (same runtime, 1 CPU per trial): "
          f"{rows[2][1] / rows[1][1]:.2f}")
    print(f"Ray with 2 concurrent trials / serial in-process: {rows[2][1] / serial:.2f} "
          f"(target <= 0.65)")


if __name__ == "__main__":
    main()
