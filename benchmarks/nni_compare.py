"""NNI's techniques against ours, one swap at a time, on the quickstart study.

    .venv/bin/python -m benchmarks nni [--quick | --smoke]

LeNet-300-100 on mnist5k under the quickstart budget and objectives. Every row searches the same
joint space (student width, pruning ratio and kind, bits, distillation temperature and alpha)
with the same sampler, seeds and trial count; only one choice differs from the first row: the
pruning criterion, the quantization method or the distillation loss. 5 seeds of 24 TPE trials
per row (quick and smoke: 1). Reported per row, as the median over the seeds with the spread:
the largest compression among front members within 1 point of the teacher's *validation*
accuracy (chosen on validation; that member's test accuracy and size, from the median seed,
are only reported), the feasible trials, the failed trials (summed), the mean seconds per trial
and the wall time of one search. There is no target: this is the comparison ``docs/nni.md``
quotes.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import yaml

from benchmarks.common import (
    Headline,
    compression,
    most_compressed,
    run,
    scratch,
    sized,
    spread,
    study,
    table,
)

BASE = {
    "student": {"width": {"low": 0.3, "high": 1.0}},
    "prune": {"ratio": {"low": 0.0, "high": 0.95}, "kind": ["unstructured", "structured"],
              "criterion": "magnitude"},
    "quantize": {"bits": [2, 4, 8, 32], "mode": "qat", "last_layer_8bit": True},
    "distill": {"temperature": {"low": 1.0, "high": 8.0}, "alpha": {"low": 0.0, "high": 1.0},
                "method": "kd"},
}
ROWS = {  # label: (section, parameter, value) swapped into BASE
    "ours (magnitude, qat, kd)": None,
    "ours, taylor criterion": ("prune", "criterion", "taylor"),
    "nni.level pruner": ("prune", "criterion", "nni.level"),
    "nni.l1 pruner": ("prune", "criterion", "nni.l1"),
    "nni.fpgm pruner": ("prune", "criterion", "nni.fpgm"),
    "nni.taylor pruner": ("prune", "criterion", "nni.taylor"),
    "nni.qat quantizer": ("quantize", "mode", "nni.qat"),
    "nni.lsq quantizer": ("quantize", "mode", "nni.lsq"),
    "nni.layerwise distiller": ("distill", "method", "nni.layerwise"),
}


def space_file(folder: Path, label: str, swap: tuple[str, str, str] | None) -> Path:
    space = {section: dict(body) for section, body in BASE.items()}
    if swap is not None:
        section, name, value = swap
        space[section][name] = value
    path = folder / f"space-{len(list(folder.glob('space-*.yaml')))}.yaml"
    path.write_text(f"# {label}\n" + yaml.safe_dump(space, sort_keys=False))
    return path


# the smoke form: ours and one NNI row of each kind (pruner, quantizer, distiller)
SMOKE_ROWS = ("ours (magnitude, qat, kd)", "nni.l1 pruner", "nni.qat quantizer",
              "nni.layerwise distiller")


def main(size: str = "full") -> Headline:
    trials, seeds = sized(size, full=(24, 5), quick=(6, 1), smoke=(2, 1))
    chosen = sized(size, full=ROWS, quick=ROWS, smoke={k: ROWS[k] for k in SMOKE_ROWS})
    rows, ratios = [], {}
    with scratch() as folder:
        for i, (label, swap) in enumerate(chosen.items()):
            space = str(space_file(folder, label, swap))
            runs = []
            for seed in range(seeds):
                config = study({"name": f"nni{i}-{seed}", "space": space, "trials": trials,
                                "sampler": "tpe", "seed": seed}, size=size)
                outcome, wall = run(config, folder / f"run{i}-{seed}")
                best = most_compressed(outcome, 1.0)
                runs.append((compression(outcome, best) if best else 0.0, best, outcome, wall))
            runs.sort(key=lambda r: r[0])
            ratio, best, _, _ = runs[len(runs) // 2]
            ratios[label] = ratio
            results = [r for run_ in runs for r in run_[2].results]
            feasible = [sum(r.feasible for r in run_[2].results) for run_ in runs]
            rows.append([label, spread([r[0] for r in runs], "{:.1f}x") if best else "-",
                         f"{100 * best.metrics['test_accuracy']:.2f}%" if best else "-",
                         f"{best.metrics['memory_bytes'] / 1e3:.1f} kB" if best else "-",
                         f"{statistics.median(feasible):.0f}",
                         sum(r.state == "failed" for r in results),
                         f"{sum(r.duration_s for r in results) / len(results):.2f}",
                         f"{statistics.median(run_[3] for run_ in runs):.0f}"])
    print(f"member chosen on validation (within 1 point), test reported; median over {seeds} "
          "seed(s) (lowest-highest); test acc and size of the median seed's member")
    print(table(["variant", "compression", "test acc", "size", "feasible", "failed",
                 "s/trial", "wall s"], rows))
    ours = ratios["ours (magnitude, qat, kd)"]
    best_nni = max((v, k) for k, v in ratios.items() if k.startswith("nni."))
    text = (f"best NNI row {best_nni[1]}: {best_nni[0]:.1f}x within 1 validation point vs ours "
            f"{ours:.1f}x (median of {seeds} seed(s), {trials} trials each, TPE)")
    print(text)
    return Headline("NNI against ours", text, None,
                    {"best_nni_compression": best_nni[0], "our_compression": ours})


if __name__ == "__main__":
    main()
