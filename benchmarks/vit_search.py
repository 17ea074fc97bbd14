"""The transformer target: a 30-trial search on ``studies/vit_mnist5k.yaml``.

    .venv/bin/python -m benchmarks vit [--quick | --smoke]

The study as shipped (vit_tiny, 8 blocks, on mnist5k; blocks, heads, FFN width, pruning, bits and
block-to-block distillation; budget 1 point below the teacher; latency at batch 1 on 1 thread in
ONNX Runtime). Reported: every front member's compression and speed-up against the teacher,
measured in the same run, and the headline: the most compressed member that is at least 2x
faster, within 1 validation point of the teacher (target: at least 4x smaller and 2x faster).
``--quick`` runs 10 trials, ``--smoke`` 2 on the 8x8 digits.
"""

from __future__ import annotations

import autocompress
from benchmarks.common import ROOT, Headline, compression, run, scratch, shrink, sized, table


def main(size: str = "full") -> Headline:
    config = autocompress.load_study(ROOT / "studies" / "vit_mnist5k.yaml")
    config = config.with_overrides(trials=sized(size, full=30, quick=10, smoke=2), name="vit",
                                   space=str(ROOT / config.space), where="benchmark vit")
    config = shrink(config, size)
    with scratch() as folder:
        outcome, wall = run(config, folder / "vit")
    teacher = outcome.teacher
    rows, hits = [], []
    for member in sorted(outcome.front, key=lambda m: m.metrics["memory_bytes"]):
        smaller = compression(outcome, member)
        faster = teacher["latency_ms"] / member.metrics["latency_ms"]
        within = member.metrics["accuracy"] >= teacher["accuracy"] - 0.01 - 1e-9
        rows.append([member.number, f"{100 * member.metrics['accuracy']:.2f}%",
                     f"{100 * member.metrics['test_accuracy']:.2f}%",
                     f"{member.metrics['latency_ms']:.4f}", f"{faster:.2f}x",
                     f"{member.metrics['memory_bytes'] / 1e3:.1f} kB", f"{smaller:.1f}x"])
        if within and faster >= 2.0:
            hits.append((smaller, faster, member.number))
    print(f"teacher: {100 * teacher['accuracy']:.2f}% val, {100 * teacher['test_accuracy']:.2f}% "
          f"test, {teacher['latency_ms']:.4f} ms, {teacher['memory_bytes'] / 1e3:.0f} kB; "
          f"search {wall:.0f} s")
    print(table(["trial", "val acc", "test acc", "latency ms", "faster", "size", "smaller"],
                rows))
    best = max(hits, default=None)
    figures = {"front_members": float(len(rows))}
    if best is None:
        text = "no front member within 1 point is 2x faster"
        met = False
    else:
        figures.update(smaller=best[0], faster=best[1])
        text = (f"trial {best[2]}: {best[0]:.1f}x smaller and {best[1]:.2f}x faster within "
                f"1 validation point ({config.trials} trials)")
        met = best[0] >= 4.0
    print(text)
    return Headline("transformer (vit_mnist5k)", text, met, figures)


if __name__ == "__main__":
    main()
