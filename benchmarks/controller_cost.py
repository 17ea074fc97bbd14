"""Cost of the controller: per-trial time spent outside the trial (sampler, storage, recording).

    .venv/bin/python -m benchmarks controller [--quick | --smoke]

A trivial objective (a TrialResult made up on the spot, no model) runs through the Optuna
backend exactly as real trials do (NSGA-II, the default storage: the study folder's journal file,
constraints, user attributes, the exact-count checks), at 100 and 1,000 trials; the per-trial
wall time is the controller's cost; once more at 100 trials on SQLite with heartbeats (a
``storage: sqlite:///...`` study, and every study before the journal became the default). It
is set against the median trial of the quickstart study, measured in the same run, and against
Optuna alone (same space and sampler, no attributes) on SQLite, on a journal file and in memory,
to show where the time goes. This benchmark drives the backend
layer directly (``optuna_backend.optimize``): the public API has no way to run a trial without
a model, which is what isolates the controller.
"""

from __future__ import annotations

import random
import statistics
import time

import optuna

import autocompress
from autocompress.backends import optuna_backend
from autocompress.backends.storage import default_url, open_storage
from benchmarks.common import ROOT, Headline, run, scratch, sized, study, table

OBJECTIVES = {"accuracy": "max", "latency_ms": "min", "memory_bytes": "min"}


def trivial_trials(n: int, folder, *, sqlite: bool = False) -> float:
    """Seconds per trial of ``n`` trivial trials on a fresh study in the default storage (a
    journal file in its folder), or on SQLite."""
    space = autocompress.SearchSpace.from_yaml(ROOT / "search_spaces" / "default.yaml")
    where = folder / f"controller-{n}{'-sqlite' if sqlite else ''}"
    where.mkdir()
    storage = open_storage(f"sqlite:///{where / 'study.db'}" if sqlite else default_url(where))
    optuna_study = optuna_backend.open_study(storage, f"controller-{n}", OBJECTIVES,
                                             sampler_name="nsga2", seed=0, n_trials=n)
    draw = random.Random(0)

    def made_up(plan: autocompress.Plan, *, should_stop=None, on_epoch=None, judge=None
                ) -> autocompress.TrialResult:
        # the keywords optimize() passes every runner (judge: the predictor's, unused here)
        metrics = {"accuracy": draw.random(), "latency_ms": draw.random(),
                   "memory_bytes": draw.random() * 1e5}
        return autocompress.TrialResult(plan, "complete", metrics, {},
                                        constraints={"memory_bytes": -1.0})

    started = time.perf_counter()
    optuna_backend.optimize(optuna_study, space, made_up, n_trials=n, target=n, seed=0,
                            objectives=OBJECTIVES, constraint_names=["memory_bytes"])
    return (time.perf_counter() - started) / n


def plain_optuna(n: int, storage) -> float:
    """Seconds per trial of Optuna alone (same space, NSGA-II, no attributes) on ``storage``."""
    space = autocompress.SearchSpace.from_yaml(ROOT / "search_spaces" / "default.yaml")
    draw = random.Random(0)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # no line per trial, as in our backend
    try:
        plain = optuna.create_study(storage=storage, directions=["maximize", "minimize"],
                                    sampler=optuna.samplers.NSGAIISampler(seed=0))

        def objective(trial):
            space.sample(trial)
            return draw.random(), draw.random()

        started = time.perf_counter()
        plain.optimize(objective, n_trials=n)
    finally:
        optuna.logging.set_verbosity(verbosity)
    return (time.perf_counter() - started) / n


def main(size: str = "full") -> Headline:
    sizes = sized(size, full=(100, 1000), quick=(20, 100), smoke=(10, 20))
    with scratch() as folder:
        per_trial = {n: trivial_trials(n, folder) for n in sizes}
        n = sizes[0]
        on_sqlite = trivial_trials(n, folder, sqlite=True)
        journal = optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(folder / "plain.log")))
        plain = {"SQLite (RDBStorage)": plain_optuna(n, f"sqlite:///{folder / 'plain.db'}"),
                 "a journal file (JournalStorage)": plain_optuna(n, journal),
                 "memory": plain_optuna(n, None)}
        trials = sized(size, full=10, quick=5, smoke=2)
        outcome, _ = run(study({"trials": trials, "sampler": "random"}, size=size),
                         folder / "quickstart")
    trial_s = statistics.median(r.duration_s for r in outcome.results)
    rows = [[f"trivial objective, {n} trials", f"{1000 * s:.1f}", f"{100 * s / trial_s:.2f}%"]
            for n, s in per_trial.items()]
    rows.append([f"trivial objective on SQLite, {n} trials", f"{1000 * on_sqlite:.1f}",
                 f"{100 * on_sqlite / trial_s:.2f}%"])
    rows += [[f"Optuna alone on {where}, {n} trials", f"{1000 * s:.1f}",
              f"{100 * s / trial_s:.2f}%"] for where, s in plain.items()]
    rows.append([f"quickstart trial (median of {len(outcome.results)})",
                 f"{1000 * trial_s:.1f}", "100%"])
    print(table(["", "ms per trial", "of a quickstart trial"], rows))
    small, large = per_trial[sizes[0]], per_trial[sizes[1]]
    growth = large / small
    share = 100 * large / trial_s
    met = share < 2.0 and growth < 1.5  # 1.5: per-trial cost about flat, total about linear
    text = (f"controller cost at {sizes[1]} trials: {1000 * large:.1f} ms per trial = "
            f"{share:.2f}% of a quickstart trial (target < 2%); per-trial cost x{growth:.2f} "
            f"from {sizes[0]} to {sizes[1]} trials (linear total time: x1)")
    print(text)
    return Headline("controller cost", text, met,
                    {"ms_per_trial": 1000 * large, "share_percent": share, "growth": growth})


if __name__ == "__main__":
    main()
