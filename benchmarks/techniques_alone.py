"""Each technique alone and together: the best compression within 0.5 points.

    .venv/bin/python -m benchmarks techniques [--quick | --smoke]

LeNet-300-100 on mnist5k, searched with the shipped pruning-only, quantization-only,
distillation-only and joint (default) spaces, same trials, sampler, seed and objectives
(validation accuracy and stored size, at most 0.5 points below the teacher, 8 fine-tune epochs).
Reported: the largest compression ratio among front members whose validation accuracy is within
0.5 points of the teacher's (their test accuracy shown), and the joint space's lead over the best
single technique.
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

SPACES = {"pruning only": "pruning_only", "quantization only": "quantization_only",
          "distillation only": "distillation_only", "joint": "default"}


def main(size: str = "full") -> Headline:
    trials = sized(size, full=40, quick=10, smoke=2)
    rows, ratios = [], {}
    with scratch() as folder:
        for label, space in SPACES.items():
            config = study({"name": space, "space": str(ROOT / "search_spaces" / f"{space}.yaml"),
                            "objectives": {"accuracy": "max", "memory_bytes": "min"},
                            "budget": {"max_accuracy_drop": 0.5}, "finetune": {"epochs": 8},
                            "trials": trials}, size=size)
            outcome, wall = run(config, folder / space)
            best = most_compressed(outcome, 0.5)
            ratios[label] = compression(outcome, best) if best else 0.0
            rows.append([label, f"{ratios[label]:.1f}x",
                         f"{100 * best.metrics['test_accuracy']:.2f}%" if best else "-",
                         f"{best.metrics['memory_bytes'] / 1e3:.1f} kB" if best else "-",
                         choices(best, list(outcome.space.searched))[:70] if best else "-",
                         f"{wall:.0f}"])
    print(table(["space", "compression", "test acc", "size", "choices", "wall s"], rows))
    single = max(v for k, v in ratios.items() if k != "joint")
    lead = ratios["joint"] / single if single else float("inf")
    text = (f"joint space: {ratios['joint']:.1f}x within 0.5 validation points, {lead:.2f}x the "
            f"best single technique ({single:.1f}x), {trials} trials each")
    print(text)
    figures = {"joint_compression": ratios["joint"], "best_single_compression": single}
    if single:
        figures["lead"] = lead
    return Headline("techniques alone and together", text, lead > 1.0, figures)


if __name__ == "__main__":
    main()
