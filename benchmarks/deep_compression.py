"""Compression against Deep Compression (Han et al., ICLR 2016, Table 1).

    .venv/bin/python -m benchmarks deep_compression [--quick | --smoke]

The paper: LeNet-300-100 shrank 40x (1070 kB to 27 kB) and LeNet-5 39x (1720 kB to 44 kB)
with no accuracy loss, on the full MNIST (60,000 training images). Here each teacher is trained
on mnist5k (3,500 training images), the joint space is searched (NSGA-II on validation accuracy
and stored size, 8 fine-tune epochs, a budget of at most 0.5 points below the teacher on
validation: the paper's "no loss"), and among the front members whose validation accuracy is
within 0.5 points of the teacher's, the largest compression ratio (teacher's stored bytes over
the member's) is reported with that member's **test** accuracy (a split the search and the
selection never saw). Validation and test have 750 images each: one image is 0.13 points.
"""

from __future__ import annotations

from benchmarks.common import (
    ROOT,
    Headline,
    choices,
    compression,
    most_compressed,
    run,
    scratch,
    sized,
    study,
    table,
)

PAPER = {"lenet300": (40.0, 1070e3, 27e3, 98.36), "lenet5": (39.0, 1720e3, 44e3, 99.20)}
# (ratio, bytes before, bytes after, the paper's reference top-1 accuracy in %, Table 1)
SPACES = {"lenet300": "default.yaml", "lenet5": "cnn.yaml"}
EPOCHS = {"lenet300": 8, "lenet5": 5}


def search(teacher: str, trials: int, folder, size: str) -> tuple[list, bool, str, float]:
    config = study({
        "name": f"dc-{teacher}",
        "task": {"dataset": "mnist5k", "teacher": teacher},
        "space": str(ROOT / "search_spaces" / SPACES[teacher]),
        "objectives": {"accuracy": "max", "memory_bytes": "min"},
        "budget": {"max_accuracy_drop": 0.5},
        "finetune": {"epochs": EPOCHS[teacher]},
        "trials": trials, "sampler": "nsga2", "seed": 0,
    }, size=size)
    outcome, wall = run(config, folder / teacher)
    best = most_compressed(outcome, 0.5)
    ratio = compression(outcome, best) if best else 0.0
    target, before, after, paper_acc = PAPER[teacher]
    t = outcome.teacher
    row = [teacher, f"{100 * t['test_accuracy']:.2f}% (paper {paper_acc:.2f}%)",
           f"{t['memory_bytes'] / 1e3:.0f} kB (paper {before / 1e3:.0f})",
           f"{100 * best.metrics['test_accuracy']:.2f}%" if best else "-",
           (f"{best.metrics['memory_bytes'] / 1e3:.1f} kB" if best else "-")
           + f" (paper {after / 1e3:.0f})",
           f"{ratio:.1f}x", f"{target:.0f}x", "yes" if ratio >= target else "no",
           len(outcome.results), f"{wall:.0f}"]
    detail = (f"{teacher} trial {best.number}: " + choices(best, list(outcome.space.searched))
              if best else f"{teacher}: no member within 0.5 validation points")
    return row, ratio >= target, detail, ratio


def main(size: str = "full") -> Headline:
    teachers = sized(size, full=["lenet300", "lenet5"], quick=["lenet300"], smoke=["lenet300"])
    trials = sized(size, full=60, quick=15, smoke=3)
    rows, met, details, ratios = [], [], [], {}
    with scratch() as folder:
        for teacher in teachers:
            row, ok, detail, ratios[teacher] = search(teacher, trials, folder, size)
            rows.append(row)
            met.append(ok)
            details.append(detail)
    print(table(["teacher", "teacher test acc", "teacher size", "member test acc",
                 "member size", "compression", "paper", "met", "trials", "wall s"], rows))
    for line in details:
        print(line)
    text = ("largest compression within 0.5 validation points (test accuracy in the table): "
            + ", ".join(f"{r[0]} {r[5]} (Deep Compression {r[6]})" for r in rows)
            + f", {trials} trials each")
    print(text)
    return Headline("compression vs Deep Compression", text, all(met),
                    {f"compression_{teacher}": ratio for teacher, ratio in ratios.items()})


if __name__ == "__main__":
    main()
