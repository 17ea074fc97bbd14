"""What a constraint-first stop saves: infeasible trials against full trials, one run.

    .venv/bin/python benchmarks/constraint_first.py [--trials 30] [--seed 0]

Runs the quickstart study under a tight budget (stored size <= 12 kB, latency <= 0.02 ms at
batch 1, accuracy drop <= 2 points). Trials whose structure breaks the size or latency limit stop
before training. The baseline is measured in the same process: the same stopped plans run again
with no budget, so they train and are measured in full. Prints the median wall time of each kind
of stop and of the full runs; the last line is the headline ratio (target: below 0.05).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import autocompress
from autocompress.budget import Budget
from autocompress.study import builtin_task
from autocompress.trial import TeacherOutputs, run_trial

ROOT = Path(__file__).resolve().parents[1]
TIGHT = {"max_memory_bytes": "12kB", "max_latency_ms": "0.02ms", "max_accuracy_drop": 2.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline", type=int, default=8,
                        help="stopped plans re-run in full as the baseline (default 8)")
    args = parser.parse_args()
    base = autocompress.load_study(ROOT / "studies" / "quickstart.yaml")
    data = {"name": "tight", "task": vars(base.task), "space": base.space,
            "objectives": dict(base.objectives), "budget": TIGHT,
            "finetune": vars(base.finetune), "trials": args.trials, "seed": args.seed,
            "sampler": base.sampler}
    config = autocompress.config.study_from_dict(data, where="benchmark")
    with tempfile.TemporaryDirectory() as out:
        outcome = autocompress.run_study(config, out_dir=out)
        task = builtin_task(config, Path(out))
        stopped = [r for r in outcome.results if r.stopped_at == "structure"]
        by_memory = [r.duration_s for r in stopped if "latency_ms" not in r.metrics]
        by_latency = [r.duration_s for r in stopped if "latency_ms" in r.metrics]
        outputs = TeacherOutputs.of(task.teacher, task.train.x)
        full = []
        for result in stopped[: args.baseline]:
            started = time.perf_counter()
            run_trial(result.plan, task, teacher_outputs=outputs, finetune=config.finetune,
                      measure=config.measure, budget=Budget())
            full.append(time.perf_counter() - started)
    trained = [r.duration_s for r in outcome.results if not r.stopped_at and r.state == "complete"]

    def med(xs: list[float]) -> str:
        return f"{statistics.median(xs):8.3f}" if xs else "       -"

    full_median = statistics.median(full) if full else float("nan")
    print(f"{'trial kind':44}{'count':>6}{'median s':>9}{'vs full':>9}")
    rows = [("stopped at structure: size over budget", by_memory),
            ("stopped at structure: latency over budget", by_latency),
            ("stopped at structure: all", [r.duration_s for r in stopped]),
            ("trained in this study (passed the structure check)", trained),
            ("baseline: the stopped plans run in full", full)]
    for name, xs in rows:
        ratio = statistics.median(xs) / full_median if xs and full else float("nan")
        print(f"{name:44}{len(xs):6d}{med(xs)}{ratio:9.3f}")
    stopped_median = statistics.median([r.duration_s for r in stopped]) if stopped else 0.0
    print(f"median infeasible trial / median full trial: {stopped_median / full_median:.3f} "
          f"(target < 0.05)")


if __name__ == "__main__":
    main()
