"""What a constraint-first stop saves: infeasible trials against full trials, one run.

    .venv/bin/python -m benchmarks constraint_first [--quick | --smoke]

Runs the quickstart study under a tight budget (stored size <= 12 kB, latency <= 0.02 ms at
batch 1, accuracy drop <= 2 points). Trials whose structure breaks the size or latency limit stop
before training. The baseline is measured in the same process on the same plans: each stopped
plan is timed again, alternately, stopped by the budget and run in full with no budget (it then
trains and is measured completely), a few times each. Prints per plan the median times and their
ratio, and the share of the study's time spent on infeasible trials; the last line is the median
ratio (target: below 0.05).
"""

from __future__ import annotations

import statistics
import time

import autocompress
from autocompress.tasks.teacher import builtin_task
from autocompress.trial import TeacherOutputs
from benchmarks.common import Headline, run, scratch, sized, study

TIGHT = {"max_memory_bytes": "12kB", "max_latency_ms": "0.02ms", "max_accuracy_drop": 2.0}
# the digits' teacher has 64 inputs, not 784: its students are a few kB, so the smoke form's
# size limit is lower to stop some of them
SMOKE_TIGHT = {**TIGHT, "max_memory_bytes": "3kB"}


def main(size: str = "full") -> Headline:
    trials, baseline, repeats = sized(size, full=(30, 10, 3), quick=(12, 3, 2), smoke=(3, 1, 1))
    # the quickstart study (its measurement: batch 1, 1 thread, ONNX Runtime) under TIGHT
    budget = sized(size, full=TIGHT, quick=TIGHT, smoke=SMOKE_TIGHT)
    config = study({"name": "tight", "budget": budget, "trials": trials}, size=size)
    with scratch() as out:
        outcome, _ = run(config, out)
        task = builtin_task(config, out)
        outputs = TeacherOutputs.of(task.teacher, task.train.x)
        stopped = [r for r in outcome.results if r.stopped(autocompress.Stop.STRUCTURE)]
        rows = []  # per stopped plan: (kind, median stop time, median full time)
        for result in stopped[: baseline]:
            stop_times, full_times = [], []
            for _ in range(repeats):  # alternate, so drift hits both alike
                for budget, times in ((config.budget, stop_times),
                                      (autocompress.Budget(), full_times)):
                    started = time.perf_counter()
                    autocompress.run_trial(result.plan, task, teacher_outputs=outputs,
                                           finetune=config.finetune, measure=config.measure,
                                           budget=budget)
                    times.append(time.perf_counter() - started)
            kind = "latency" if "latency_ms" in result.metrics else "size"
            rows.append((kind, statistics.median(stop_times), statistics.median(full_times)))
    in_study = [r.duration_s for r in stopped]
    trained = [r.duration_s for r in outcome.results if r.ok]
    print(f"study: {len(outcome.results)} trials, {len(stopped)} stopped at structure "
          f"(median {statistics.median(in_study) if in_study else float('nan'):.3f} s), "
          f"{len(trained)} trained (median "
          f"{statistics.median(trained) if trained else float('nan'):.3f} s)")
    print(f"{'stopped plan, re-run ' + str(repeats) + 'x each':34}{'stop s':>9}{'full s':>9}"
          f"{'ratio':>8}")
    for kind, stop, full in rows:
        print(f"{'over budget on ' + kind:34}{stop:9.3f}{full:9.3f}{stop / full:8.3f}")
    ratios = [stop / full for _, stop, full in rows]
    for kind in ("size", "latency"):
        some = [stop / full for k, stop, full in rows if k == kind]
        if some:
            print(f"median ratio, stopped on {kind}: {statistics.median(some):.3f} ({len(some)})")
    infeasible = sum(r.duration_s for r in outcome.results if r.state == "complete"
                     and not r.feasible)
    total = sum(r.duration_s for r in outcome.results)
    print(f"share of the study's trial time spent on infeasible trials: "
          f"{100 * infeasible / total:.1f}% ({infeasible:.1f} s of {total:.1f} s; "
          f"{sum(not r.feasible for r in outcome.results)} of {len(outcome.results)} trials)")
    median = statistics.median(ratios) if ratios else float("nan")
    text = (f"median infeasible trial / median full trial (same plans): {median:.3f} "
            f"(target < 0.05)")
    print(text)
    return Headline("constraint-first savings", text, median < 0.05,
                    {"median_ratio": median} if ratios else {})


if __name__ == "__main__":
    main()
