"""Each technique alone and together: the best compression within 0.5 points.

    .venv/bin/python -m benchmarks techniques [--quick | --smoke]

LeNet-300-100 on mnist5k, searched with the shipped pruning-only, quantization-only,
distillation-only and joint (default) spaces, same trials, sampler, seeds and objectives
(validation accuracy and stored size, at most 0.5 points below the teacher, 8 fine-tune epochs),
5 seeds each (quick and smoke: 1). Per seed, the member is the most compressed front member
within 0.5 points of the teacher's *validation* accuracy; the table shows the median over seeds
of its compression with the spread, and the test accuracy, size and choices of the median seed's
member (test is only reported, never used to choose). The headline is the joint space's median
against the best single technique's median, and in how many seeds the joint space led.
"""

from __future__ import annotations

import statistics

from benchmarks.common import (
    ROOT,
    Headline,
    choices,
    compression,
    most_compressed,
    run,
    scratch,
    sized,
    spread,
    study,
    table,
)

SPACES = {"pruning only": "pruning_only", "quantization only": "quantization_only",
          "distillation only": "distillation_only", "joint": "default"}
WITHIN = 0.5  # points below the teacher's validation accuracy


def main(size: str = "full") -> Headline:
    trials, seeds = sized(size, full=(40, 5), quick=(10, 1), smoke=(2, 1))
    rows, per_seed = [], {}
    with scratch() as folder:
        for label, space in SPACES.items():
            runs = []
            for seed in range(seeds):
                config = study({"name": f"{space}-{seed}", "seed": seed,
                                "space": str(ROOT / "search_spaces" / f"{space}.yaml"),
                                "objectives": {"accuracy": "max", "memory_bytes": "min"},
                                "budget": {"max_accuracy_drop": WITHIN},
                                "finetune": {"epochs": 8}, "trials": trials}, size=size)
                outcome, wall = run(config, folder / f"{space}-{seed}")
                best = most_compressed(outcome, WITHIN)
                runs.append((compression(outcome, best) if best else 0.0, best, outcome, wall))
            per_seed[label] = [r[0] for r in runs]
            _, best, outcome, _ = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
            drops = [100 * (o.teacher["test_accuracy"] - b.metrics["test_accuracy"])
                     for _, b, o, _ in runs if b is not None]
            rows.append([label, spread(per_seed[label], "{:.1f}x"),
                         f"{100 * best.metrics['test_accuracy']:.2f}%" if best else "-",
                         spread(drops) if drops else "-",
                         f"{best.metrics['memory_bytes'] / 1e3:.1f} kB" if best else "-",
                         choices(best, list(outcome.space.searched))[:60] if best else "-",
                         f"{statistics.median(r[3] for r in runs):.0f}"])
    print(f"member chosen on validation (within {WITHIN} points), test reported; median over "
          f"{seeds} seed(s) (lowest-highest); test acc, size and choices of the median seed")
    print(table(["space", "compression", "test acc", "test drop", "size", "choices",
                 "wall s"], rows))
    medians = {label: statistics.median(v) for label, v in per_seed.items()}
    single_label = max((k for k in medians if k != "joint"), key=medians.get)
    single, joint = medians[single_label], medians["joint"]
    lead = joint / single if single else float("inf")
    led = sum(j > max(per_seed[k][s] for k in per_seed if k != "joint")
              for s, j in enumerate(per_seed["joint"]))
    text = (f"joint space: {joint:.1f}x within {WITHIN} validation points, {lead:.2f}x the "
            f"best single technique ({single_label}, {single:.1f}x); medians of {seeds} "
            f"seed(s), joint ahead in {led}/{seeds}, {trials} trials each")
    print(text)
    figures = {"joint_compression": joint, "best_single_compression": single,
               "seeds_joint_ahead": float(led)}
    if single:
        figures["lead"] = lead
    return Headline("techniques alone and together", text, lead > 1.0, figures)


if __name__ == "__main__":
    main()
