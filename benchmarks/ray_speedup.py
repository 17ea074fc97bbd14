"""Ray Tune against a serial run of the same study, measured in one run.

    .venv/bin/python benchmarks/ray_speedup.py [STUDY.yaml] [--trials 16] [--epochs N] [--smoke]
    .venv/bin/python -m benchmarks ray_speedup [--quick | --smoke]   (studies/lenet5_ray.yaml)

Runs the study (random sampler, fifo: every trial does the same work each way) serially with the
Optuna backend in this process, once with torch's default threads (all cores) and once with 1
thread (the allotment of a Ray trial, ``cpus_per_trial: 1``); with ``--jobs 2`` (two Optuna
worker processes); on a local Ray with 1 trial at a time; and on Ray with 2 at a time. Ray's
fixed start-up (``ray.init``) is timed on its own. The last line is the headline: Ray with 2
concurrent trials over the serial run with the same per-trial allotment (target: at most 0.65
on a 2-core machine); the line before it is the same ratio against the all-cores serial run.
``--epochs`` overrides the study's fine-tune epochs: longer trials leave less of the wall time to
what does not parallelise (the study's set-up and report, Ray's hand-offs).
``--quick`` runs 8 trials each way, ``--smoke`` 2 on the 8x8 digits.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the benchmarks package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

import autocompress
from benchmarks.common import ROOT, Headline, shrink, sized

LENET5_RAY = ROOT / "studies" / "lenet5_ray.yaml"


def main(size: str = "full", *, study: str | Path = LENET5_RAY, trials: int | None = None,
         epochs: int | None = None) -> Headline:
    """``trials`` each way (default 16, fewer at the smaller sizes); ``epochs`` fine-tune epochs
    per trial (default: the study's)."""
    trials = trials or sized(size, full=16, quick=8, smoke=2)
    base = shrink(autocompress.load_study(study), size)
    if epochs is not None:
        base = base.with_overrides(finetune={**vars(base.finetune), "epochs": epochs})
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
        default_threads = torch.get_num_threads()
        for index, (label, backend, concurrent, threads) in enumerate((
                (f"serial, {default_threads} threads", "optuna", 1, default_threads),
                ("serial, 1 thread", "optuna", 1, 1),
                ("Optuna --jobs 2", "optuna", 2, 1),
                ("Ray, 1 trial at a time", "ray", 1, 1),
                ("Ray, 2 trials at a time", "ray", 2, 1))):
            out = Path(tmp) / str(index)
            out.mkdir(parents=True)
            for name in ("teacher.pt", "teacher.json"):
                (out / name).write_bytes((teacher_dir / name).read_bytes())
            config = base.with_overrides(
                trials=trials, sampler="random", backend=backend,
                jobs=concurrent if backend == "optuna" else 1,
                ray_max_concurrent=concurrent, ray_scheduler="fifo")
            torch.set_num_threads(threads)
            started = time.perf_counter()
            outcome = autocompress.run_study(config, out_dir=out)
            wall = time.perf_counter() - started
            torch.set_num_threads(default_threads)
            busy = sum(r.duration_s for r in outcome.results)
            rows.append((label, wall, busy, outcome.front.hypervolume))
    ray.shutdown()
    serial, same_allotment = rows[0][1], rows[1][1]
    print(f"study {base.name}: {trials} trials each way, {base.finetune.epochs} fine-tune "
          f"epochs each; Ray start-up (ray.init): {startup:.1f} s")
    print(f"{'':26}{'wall s':>8}{'in trials s':>13}{'vs serial':>11}{'vs 1 thread':>13}"
          f"{'hypervolume':>13}")
    for label, wall, busy, volume in rows:
        print(f"{label:26}{wall:8.1f}{busy:13.1f}{wall / serial:11.2f}"
              f"{wall / same_allotment:13.2f}{volume:13.4f}")
    print(f"Optuna --jobs 2 / serial, 1 thread: {rows[2][1] / same_allotment:.2f}")
    print(f"Ray, 2 at a time / Ray, 1 at a time: {rows[4][1] / rows[3][1]:.2f}")
    print(f"Ray with 2 concurrent trials / serial with all {default_threads} threads: "
          f"{rows[4][1] / serial:.2f}")
    ratio = rows[4][1] / same_allotment
    text = (f"Ray with 2 concurrent trials / serial with a Ray trial's 1 thread: {ratio:.2f} "
            f"(target <= 0.65)")
    print(text)
    return Headline("Ray against a serial run", text, ratio <= 0.65,
                    {"ray_2_vs_serial_1_thread": ratio, "ray_2_vs_serial": rows[4][1] / serial,
                     "ray_startup_s": startup})


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", nargs="?", default=str(LENET5_RAY))
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=None,
                        help="fine-tune epochs per trial (default: the study's)")
    parser.add_argument("--smoke", action="store_const", const="smoke", default="full",
                        dest="size", help="the smallest run (the 8x8 digits, 2 trials each way)")
    args = parser.parse_args()
    trials = args.trials if args.size == "full" else None
    main(args.size, study=args.study, trials=trials, epochs=args.epochs)


if __name__ == "__main__":
    cli()
