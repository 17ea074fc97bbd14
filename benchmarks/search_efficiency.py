"""Search efficiency: hypervolume per sampler and trial count, and time to a good front.

    .venv/bin/python -m benchmarks search_efficiency [--quick | --smoke]

Part 1: the quickstart study (LeNet-300-100 on mnist5k, budget 100 kB / 2 ms / 2 points, three
objectives) with 3 fine-tune epochs, run with NSGA-II, TPE and random search, 5 seeds each, on
the default joint space and on the per-layer space (`search_spaces/per_layer.yaml`: one pruning
ratio, bit width and width per layer). Hypervolume (reference from the budget, the same for
every run) after 20, 40 and 80 trials: medians over seeds and their ratio to random search.

Part 2, the figure a user feels: wall-clock time until the front reaches 95% of the hypervolume
that a 200-trial random search with full-cost trials reaches (no budget during the search, so
every trial trains; the budget is applied afterwards; no early stopping), against the same
search with everything on (TPE, the sampler part 1 finds strongest; constraint-first stops; the
median pruner), and with TPE and constraint-first alone, up to 200 trials each.
Times are taken from the trials' completion times in the study storage.
"""

from __future__ import annotations

import statistics

import optuna

import autocompress
from autocompress.backends.storage import default_url, open_storage
from benchmarks.common import ROOT, Headline, run, scratch, sized, study, table

SAMPLERS = ("nsga2", "tpe", "random")


def _study_fields(space: str, sampler: str, seed: int, trials: int) -> dict:
    return {"name": f"eff-{space}-{sampler}-{seed}",
            "space": str(ROOT / "search_spaces" / f"{space}.yaml"),
            "finetune": {"epochs": 3}, "sampler": sampler, "seed": seed, "trials": trials}


def hypervolumes(space: str, seeds: int, checkpoints: list[int], folder, size: str
                 ) -> dict[str, list]:
    """sampler -> per checkpoint, the median hypervolume over seeds."""
    medians = {}
    for sampler in SAMPLERS:
        per_seed = []
        for seed in range(seeds):
            config = study(_study_fields(space, sampler, seed, checkpoints[-1]), size=size)
            outcome, _ = run(config, folder / f"{space}-{sampler}-{seed}")
            history = autocompress.hypervolume_history(outcome.results, config.objectives,
                                                       outcome.teacher, config.budget)
            per_seed.append([history[min(n, len(history)) - 1] for n in checkpoints])
        medians[sampler] = [statistics.median(v[i] for v in per_seed)
                            for i in range(len(checkpoints))]
    return medians


def _completion_times(folder, name: str) -> list[float]:
    """Seconds from the first trial's start to each trial's completion, in trial order."""
    storage = open_storage(default_url(folder))
    trials = optuna.load_study(study_name=name, storage=storage).trials
    start = min(t.datetime_start for t in trials if t.datetime_start)
    return [((t.datetime_complete or t.datetime_start) - start).total_seconds()
            for t in sorted(trials, key=lambda t: t.number)]


def time_to_quality(trials: int, folder, size: str) -> tuple[float, float, dict]:
    """(seconds the full-cost random run needs to reach 95% of its final hypervolume, that
    hypervolume, {run with TPE and constraint-first, without and with the median pruner:
    (seconds to the same hypervolume or None, final hypervolume)})."""
    base = study(_study_fields("default", "random", 0, trials), size=size)
    full = study({**_study_fields("default", "random", 0, trials), "name": "full-cost",
                  "budget": {}, "pruner": "none"}, size=size)
    outcome, _ = run(full, folder / "full")
    teacher_accuracy = outcome.teacher["accuracy"]
    for result in outcome.results:  # the budget applied afterwards
        result.constraints = base.budget.constraints(result.metrics, teacher_accuracy)
    history = autocompress.hypervolume_history(outcome.results, base.objectives,
                                               outcome.teacher, base.budget)
    goal = 0.95 * history[-1]
    times = _completion_times(folder / "full", "full-cost")
    time_full = next(t for t, v in zip(times, history, strict=True) if v >= goal)

    found = {}
    for label, pruner in (("TPE + constraint-first", "none"),
                          ("TPE + constraint-first + median pruner", "median")):
        smart = study({**_study_fields("default", "tpe", 0, trials), "name": "everything-on",
                       "pruner": pruner}, size=size)
        smart_outcome, _ = run(smart, folder / pruner)
        smart_history = autocompress.hypervolume_history(
            smart_outcome.results, smart.objectives, smart_outcome.teacher, smart.budget)
        smart_times = _completion_times(folder / pruner, "everything-on")
        reached = next((t for t, v in zip(smart_times, smart_history, strict=True) if v >= goal),
                       None)
        found[label] = (reached, smart_history[-1])
    return time_full, history[-1], found


def main(size: str = "full", *, samplers: bool = True) -> Headline:
    """``samplers=False`` skips part 1 (the sampler table)."""
    seeds, checkpoints = sized(size, full=(5, [20, 40, 80]), quick=(1, [10, 20]),
                               smoke=(1, [2, 3]))
    spaces = sized(size, full=["default", "per_layer"], quick=["default"], smoke=["default"])
    spaces = spaces if samplers else []
    rows = []
    with scratch() as folder:
        for space in spaces:
            medians = hypervolumes(space, seeds, checkpoints, folder, size)
            for sampler in SAMPLERS:
                rows.append([f"{space}, {sampler}"]
                            + [f"{v:.4f}" for v in medians[sampler]]
                            + [f"{v / r:.2f}" if r else "-"
                               for v, r in zip(medians[sampler], medians["random"],
                                               strict=True)])
        time_full, volume_full, found = time_to_quality(
            sized(size, full=200, quick=30, smoke=3), folder, size)
    print(table(["space, sampler"] + [f"HV@{n}" for n in checkpoints]
                + [f"vs random @{n}" for n in checkpoints], rows))
    print(f"(medians over {seeds} seed(s); hypervolume reference from the budget)")
    rows = [["random, full-cost trials (no budget while searching)", f"{time_full:.0f}", "1.00",
             f"{volume_full:.4f}"]]
    for label, (seconds, volume) in found.items():
        rows.append([label, "not reached" if seconds is None else f"{seconds:.0f}",
                     "-" if seconds is None else f"{seconds / time_full:.2f}", f"{volume:.4f}"])
    print(table(["run (seed 0)", "s to 95% of the random run's final HV", "ratio", "final HV"],
                rows))
    time_smart, volume_smart = found["TPE + constraint-first + median pruner"]
    figures = {"final_hv_full_cost_random": volume_full, "final_hv_everything_on": volume_smart}
    if time_smart is None:
        text = ("time to 95% of a full-cost random search's hypervolume: not reached with "
                "everything on (TPE, constraint-first, median pruner; target <= 0.5x)")
        met = False
    else:
        ratio = time_smart / time_full
        text = (f"time to 95% of a full-cost random search's hypervolume: {ratio:.2f}x with "
                f"everything on (TPE, constraint-first, median pruner: {time_smart:.0f} s "
                f"against {time_full:.0f} s; target <= 0.5x)")
        met = ratio <= 0.5
        figures["time_ratio"] = ratio
    print(text)
    return Headline("search efficiency", text, met, figures)


if __name__ == "__main__":
    main()
