"""Learned predictors: hypervolume per wall-clock minute with and without them.

    .venv/bin/python -m benchmarks predictor [--quick | --smoke]

LeNet-300-100 on mnist5k (the quickstart task and space), objectives accuracy and stored size,
budget 100 kB and at most 1 point below the teacher, 8 fine-tune epochs (so training is most of
a trial, as in real use), TPE, 60 trials, run with ``predictor: off`` and with ``predictor: on``
(warmup 20 trained trials, at most 50% of the judged trials skipped), 5 seeds each. Latency is
left out of the objectives and the budget on purpose: its run-to-run noise would make the two
runs of a seed diverge for reasons that have nothing to do with the predictor (the first version
of this benchmark, which had it, showed exactly that). Per run: the final hypervolume (reference
from the budget) and the wall time of the search; the headline is the median ratio of
hypervolume per minute, on over off (the issue's target: at least 1.3x at equal final quality),
with the median ratio of final hypervolumes beside it.
"""

from __future__ import annotations

import statistics

import autocompress
from benchmarks.common import ROOT, Headline, run, scratch, sized, study, table


def main(size: str = "full") -> Headline:
    seeds, trials = sized(size, full=(5, 60), quick=(1, 40), smoke=(1, 7))
    warmup = sized(size, full=20, quick=15, smoke=5)  # 5: the least a study file allows
    rows, gains, quality = [], [], []
    with scratch() as folder:
        for seed in range(seeds):
            measured = {}
            for switch in ("off", "on"):
                config = study({
                    "name": f"predictor-{switch}-{seed}",
                    "space": str(ROOT / "search_spaces" / "default.yaml"),
                    "objectives": {"accuracy": "max", "memory_bytes": "min"},
                    "budget": {"max_memory_bytes": "100kB", "max_accuracy_drop": 1.0},
                    "finetune": {"epochs": 8}, "sampler": "tpe", "seed": seed,
                    "trials": trials, "predictor": switch,
                    "predictor_warmup": warmup, "predictor_max_skip": 0.5,
                }, size=size)
                outcome, wall = run(config, folder / f"{switch}-{seed}")
                skipped = autocompress.TrialCounts.of(outcome.results).skipped
                measured[switch] = (outcome.front.hypervolume, wall)
                rows.append([f"seed {seed}, predictor {switch}", f"{wall:.0f}",
                             f"{outcome.front.hypervolume:.4f}",
                             f"{60 * outcome.front.hypervolume / wall:.4f}", skipped])
            (volume_off, wall_off), (volume_on, wall_on) = measured["off"], measured["on"]
            gains.append((volume_on / wall_on) / (volume_off / wall_off) if volume_off else 0.0)
            quality.append(volume_on / volume_off if volume_off else 0.0)
    print(table(["run", "wall s", "final HV", "HV per minute", "skipped"], rows))
    gain, kept = statistics.median(gains), statistics.median(quality)
    text = (f"predictor on / off: {gain:.2f}x hypervolume per minute, final hypervolume "
            f"{kept:.2f}x (median of {seeds} seed(s), {trials} trials; target >= 1.3x at equal "
            f"final quality)")
    print(text)
    return Headline("learned predictors", text, gain >= 1.3 and kept >= 0.95,
                    {"gain": gain, "final_hv_ratio": kept})


if __name__ == "__main__":
    main()
