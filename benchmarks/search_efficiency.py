"""Search efficiency: hypervolume per sampler and trial count, and time to a good front.

    .venv/bin/python -m benchmarks search_efficiency [--quick | --smoke]
    .venv/bin/python benchmarks/search_efficiency.py [--part2-only] [--seeds S] [--smoke]

Part 1: the quickstart study (LeNet-300-100 on mnist5k, budget 100 kB / 2 ms / 2 points, three
objectives) with 3 fine-tune epochs, run with NSGA-II, TPE and random search, 5 seeds each, on
the default joint space and on the per-layer space (`search_spaces/per_layer.yaml`: one pruning
ratio, bit width and width per layer). Hypervolume (reference from the budget, the same for
every run) after 20, 40 and 80 trials: medians over seeds and their ratio to random search.

Part 2, the figure a user feels: wall-clock time until the front reaches 95% of the hypervolume
that a 200-trial random search with full-cost trials reaches (no budget during the search, so
every trial trains; the budget is applied afterwards; no early stopping), against the same
search with everything on (TPE, the sampler part 1 finds strongest; constraint-first stops; the
median pruner), and with TPE and constraint-first alone, up to 200 trials each, 5 seeds (quick
and smoke: 1): each seed's ratio and their median, a run that never reaches the goal counting
as slower than any that does. Times are taken from the trials' completion times in the study
storage.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import optuna

if __package__ in (None, ""):  # run as a script: make the benchmarks package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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


def time_to_quality(trials: int, seed: int, folder, size: str) -> tuple[float, float, dict]:
    """One seed: (seconds the full-cost random run needs to reach 95% of its final
    hypervolume, that hypervolume, {run with TPE and constraint-first, without and with the
    median pruner: (seconds to the same hypervolume or None, final hypervolume)})."""
    base = study(_study_fields("default", "random", seed, trials), size=size)
    full = study({**_study_fields("default", "random", seed, trials), "name": "full-cost",
                  "budget": {}, "pruner": "none"}, size=size)
    outcome, _ = run(full, folder / f"full-{seed}")
    teacher_accuracy = outcome.teacher["accuracy"]
    for result in outcome.results:  # the budget applied afterwards
        result.constraints = base.budget.constraints(result.metrics, teacher_accuracy)
    history = autocompress.hypervolume_history(outcome.results, base.objectives,
                                               outcome.teacher, base.budget)
    goal = 0.95 * history[-1]
    times = _completion_times(folder / f"full-{seed}", "full-cost")
    time_full = next(t for t, v in zip(times, history, strict=True) if v >= goal)

    found = {}
    for label, pruner in (("TPE + constraint-first", "none"),
                          ("TPE + constraint-first + median pruner", "median")):
        smart = study({**_study_fields("default", "tpe", seed, trials), "name": "everything-on",
                       "pruner": pruner}, size=size)
        smart_outcome, _ = run(smart, folder / f"{pruner}-{seed}")
        smart_history = autocompress.hypervolume_history(
            smart_outcome.results, smart.objectives, smart_outcome.teacher, smart.budget)
        smart_times = _completion_times(folder / f"{pruner}-{seed}", "everything-on")
        reached = next((t for t, v in zip(smart_times, smart_history, strict=True) if v >= goal),
                       None)
        found[label] = (reached, smart_history[-1])
    return time_full, history[-1], found


EVERYTHING_ON = "TPE + constraint-first + median pruner"


def main(size: str = "full", *, samplers: bool = True, part2_seeds: int | None = None
         ) -> Headline:
    """``samplers=False`` skips part 1 (the sampler table); ``part2_seeds`` overrides part 2's
    seed count (5 in full, 1 otherwise)."""
    seeds, checkpoints = sized(size, full=(5, [20, 40, 80]), quick=(1, [10, 20]),
                               smoke=(1, [2, 3]))
    part2_seeds = part2_seeds or sized(size, full=5, quick=1, smoke=1)
    spaces = sized(size, full=["default", "per_layer"], quick=["default"], smoke=["default"])
    spaces = spaces if samplers else []
    rows, runs = [], []
    with scratch() as folder:
        for space in spaces:
            medians = hypervolumes(space, seeds, checkpoints, folder, size)
            for sampler in SAMPLERS:
                rows.append([f"{space}, {sampler}"]
                            + [f"{v:.4f}" for v in medians[sampler]]
                            + [f"{v / r:.2f}" if r else "-"
                               for v, r in zip(medians[sampler], medians["random"],
                                               strict=True)])
        for seed in range(part2_seeds):
            runs.append(time_to_quality(sized(size, full=200, quick=30, smoke=3), seed,
                                        folder, size))
    if rows:
        print(table(["space, sampler"] + [f"HV@{n}" for n in checkpoints]
                    + [f"vs random @{n}" for n in checkpoints], rows))
        print(f"(medians over {seeds} seed(s); hypervolume reference from the budget)")
    rows, ratios = [], []
    for seed, (time_full, volume_full, found) in enumerate(runs):
        rows.append([f"seed {seed}: random, full-cost trials (no budget while searching)",
                     f"{time_full:.0f}", "1.00", f"{volume_full:.4f}"])
        for label, (seconds, volume) in found.items():
            rows.append([f"seed {seed}: {label}",
                         "not reached" if seconds is None else f"{seconds:.0f}",
                         "-" if seconds is None else f"{seconds / time_full:.2f}",
                         f"{volume:.4f}"])
        seconds = found[EVERYTHING_ON][0]
        # a run that never reached the goal is slower than any that did
        ratios.append(math.inf if seconds is None else seconds / time_full)
    print(table(["run", "s to 95% of the random run's final HV", "ratio", "final HV"], rows))
    reached = sum(math.isfinite(r) for r in ratios)
    ratio = statistics.median(ratios)
    figures = {"final_hv_full_cost_random": statistics.median(r[1] for r in runs),
               "final_hv_everything_on": statistics.median(r[2][EVERYTHING_ON][1] for r in runs)}
    if math.isfinite(ratio):
        figures["time_ratio"] = ratio
    each = ", ".join(f"{r:.2f}x" if math.isfinite(r) else "not reached" for r in ratios)
    text = (f"time to 95% of a full-cost random search's hypervolume with everything on (TPE, "
            f"constraint-first, median pruner): "
            f"{f'{ratio:.2f}x' if math.isfinite(ratio) else 'not reached'}, median of "
            f"{part2_seeds} seed(s) (per seed {each}; reached in {reached}/{part2_seeds}, the "
            f"others count as slowest) (target <= 0.5x)")
    print(text)
    return Headline("search efficiency", text, ratio <= 0.5, figures)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part2-only", action="store_true",
                        help="skip part 1 (the sampler table, about 40 minutes)")
    parser.add_argument("--seeds", type=int, help="part 2's seeds, 0.. (default 5)")
    parser.add_argument("--smoke", action="store_const", const="smoke", default="full",
                        dest="size", help="the smallest run (the 8x8 digits, 3 trials)")
    args = parser.parse_args()
    if args.seeds is not None and args.seeds < 1:
        parser.error(f"--seeds: got {args.seeds}, expected a whole number >= 1")
    main(args.size, samplers=not args.part2_only, part2_seeds=args.seeds)


if __name__ == "__main__":
    cli()
