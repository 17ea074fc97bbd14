"""A real decoder language model: SmolLM2-135M-Instruct compressed on public-domain books.

    .venv/bin/python -m benchmarks llm [--quick | --smoke]

The teacher and text of ``studies/smollm2.yaml`` (``make install`` fetches both). Three parts,
every figure measured on the built model (perplexity on token sequences of 256 from books split
by document: validation for choosing, test for reporting; decode tokens per second with the KV
cache in torch at 2 threads; bytes of the packed stored form):

1. **Single techniques through our code**, each alone on the teacher: 50% unstructured sparsity by
   magnitude, Wanda and SparseGPT, and 2:4; weight-only round-to-nearest against GPTQ at 3 bits
   in groups of 128, at 4 bits in groups of 128, 64 and 32, and at 2 bits in groups of 32. The
   published ordering to compare with (Sun et al. 2023, Table 3, LLaMA-2-7B on WikiText at 50%:
   dense 5.12, magnitude 14.89, SparseGPT 6.51, Wanda 6.42): magnitude far above the two.
   Caveat for every 4-bit row: SmolLM2's weights were stored as Q4_1 (4-bit, blocks of 32, a
   float scale and a float minimum per block), so 4-bit groups of 32 are the blocks its
   weights were rounded in; our asymmetric grid keeps zero exact (an integer zero point), which
   Q4_1's float minimum does not, so it does not land on Q4_1's grid again (docs/llm.md).
2. **The joint front against single-technique fronts**: the same trials, sampler and seed on the
   joint space and on pruning-only, quantization-only and depth-only spaces; hypervolume
   (perplexity, decode tokens/s, stored bytes; reference: +50% perplexity, the teacher's speed
   and size) of each, and the joint one's ratio to each.
3. **Members within a perplexity budget**, chosen on validation and reported on test, over every
   trial of the searches: the smallest within +10% (target: 4x smaller than the float32
   teacher) and the fastest within +20% (target: 1.3x the teacher's decode tokens per second).

``--quick`` uses 8 sequences per split and fewer trials (about half an hour on 2 cores);
``--smoke`` a tiny random Llama on random tokens (seconds: it only proves the code runs).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

import autocompress
from autocompress.config import MeasureConfig
from autocompress.llm.task import LMTask
from autocompress.llm.trial import measure_lm_teacher, run_lm_trial
from autocompress.pareto import hypervolume, normalise, pareto_front, reference_point
from autocompress.plan import Plan
from benchmarks.common import Headline, choices, scratch, sized, table

PRUNING = {  # label -> plan: each technique alone on the teacher
    "magnitude 50%": {"lm_prune.method": "magnitude", "lm_prune.ratio": 0.5},
    "Wanda 50%": {"lm_prune.method": "wanda", "lm_prune.ratio": 0.5},
    "SparseGPT 50%": {"lm_prune.method": "sparsegpt", "lm_prune.ratio": 0.5},
    "Wanda 2:4": {"lm_prune.method": "wanda", "lm_prune.pattern": "2:4"},
    "SparseGPT 2:4": {"lm_prune.method": "sparsegpt", "lm_prune.pattern": "2:4"},
}
QUANTIZATION = [(3, 128), (4, 128), (4, 64), (4, 32), (2, 32)]  # (bits, group), RTN and GPTQ
JOINT = "search_spaces/llm.yaml"
SINGLE_SPACES = {
    "pruning only": {"lm_prune": {"method": ["magnitude", "wanda", "sparsegpt"],
                                  "pattern": ["unstructured", "2:4"],
                                  "ratio": {"low": 0.0, "high": 0.6}}},
    "quantization only": {"lm_quantize": {"method": ["rtn", "gptq"], "bits": [3, 4, 8, 32],
                                          "group_size": [32, 128], "embeddings": [8, 32]}},
    "depth only": {"lm_student": {"drop_layers": [0, 2, 4, 6],
                                  "layer_choice": ["influence", "last"], "ffn": [0.75, 1.0]},
                   "lm_distill": {"steps": [0, 16]}},
}
OBJECTIVES = {"perplexity": "min", "tokens_per_s": "max", "memory_bytes": "min"}
BUDGET = {"max_perplexity_increase": "50%"}


def _task(size: str) -> LMTask:
    """SmolLM2 on the books (or, in the smoke form, a tiny random Llama on random tokens)."""
    if size == "smoke":
        import transformers

        torch.manual_seed(0)
        config = transformers.LlamaConfig(
            vocab_size=97, hidden_size=32, num_hidden_layers=8, num_attention_heads=4,
            num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
            tie_word_embeddings=True, attn_implementation="eager")
        generator = torch.Generator().manual_seed(1)

        def tokens(n: int) -> torch.Tensor:
            return torch.randint(0, 97, (n, 24), generator=generator)

        return LMTask("smoke", transformers.LlamaForCausalLM(config).eval(), tokens(16),
                      tokens(4), tokens(4), tokens(4))
    from autocompress.config import study_from_dict
    from autocompress.llm.task import builtin_lm_task

    count = sized(size, full=32, quick=8, smoke=4)
    config = study_from_dict({"name": "llm", "task": {
        "kind": "causal_lm", "train_sequences": 8 * count, "calibration_sequences": count,
        "validation_sequences": count, "test_sequences": count}})
    return builtin_lm_task(config, print)


def _measure(size: str) -> MeasureConfig:
    if size == "smoke":
        return MeasureConfig(runtime="torch", threads=1, warmup=1, repeats=3, prompt_length=8,
                             new_tokens=4)
    return MeasureConfig(runtime="torch", threads=2, warmup=1, repeats=3, prompt_length=128,
                         new_tokens=32)


def _increase(metrics: dict[str, float], teacher: dict[str, float], split: str = "") -> float:
    return 100 * (metrics[f"{split}perplexity"] / teacher[f"{split}perplexity"] - 1)


def _single_rows(task: LMTask, measure: MeasureConfig, teacher: dict[str, float]
                 ) -> tuple[list[list[Any]], dict[str, float]]:
    plans = {label: plan for label, plan in PRUNING.items()}
    for bits, group in QUANTIZATION:
        for method in ("rtn", "gptq"):
            plans[f"{method.upper()} {bits}-bit g{group}"] = {
                "lm_quantize.method": method, "lm_quantize.bits": bits,
                "lm_quantize.group_size": group}
    rows, found = [], {}
    for label, choices_ in plans.items():
        result = run_lm_trial(Plan(choices_), task, measure=measure, budget=None,
                              teacher_metrics=teacher)
        if not result.ok:
            rows.append([label, "failed", result.reason[:60], "", "", ""])
            continue
        m = result.metrics
        found[label] = m["test_perplexity"]
        caveat = " (Q4_1 blocks)" if "4-bit g32" in label else ""
        rows.append([label + caveat, f"{m['perplexity']:.2f}", f"{m['test_perplexity']:.2f}",
                     f"{_increase(m, teacher, 'test_'):+.0f}%",
                     f"{teacher['memory_bytes'] / m['memory_bytes']:.2f}x",
                     f"{result.duration_s:.0f}"])
    return rows, found


def _search(task: LMTask, space: Any, trials: int, measure: MeasureConfig, folder: Any
            ) -> autocompress.StudyOutcome:
    fields = {key: getattr(measure, key) for key in ("threads", "warmup", "repeats",
                                                     "prompt_length", "new_tokens")}
    return autocompress.search_lm(
        task.teacher, train=task.train_tokens, calibration=task.calibration,
        val=task.val_tokens, test=task.test_tokens, space=space, trials=trials, seed=0,
        sampler="tpe", objectives=OBJECTIVES, budget=BUDGET, measure=fields, out_dir=folder,
        name="llm", progress=None)


def measured_teacher(size: str) -> tuple[LMTask, MeasureConfig, dict[str, float]]:
    """The task, the measurement settings and the float32 teacher's figures, printed."""
    task, measure = _task(size), _measure(size)
    started = time.perf_counter()
    teacher, _ = measure_lm_teacher(task, measure)
    print(f"teacher (float32, torch): validation perplexity {teacher['perplexity']:.2f}, test "
          f"{teacher['test_perplexity']:.2f}, {teacher['tokens_per_s']:.1f} tokens/s, "
          f"{teacher['memory_bytes'] / 1e6:.1f} MB ({time.perf_counter() - started:.0f} s)")
    return task, measure, teacher


def main(size: str = "full") -> Headline:
    task, measure, teacher = measured_teacher(size)
    rows, single = _single_rows(task, measure, teacher)
    print(table(["technique alone", "val ppl", "test ppl", "test increase", "smaller", "s"], rows))
    trials = sized(size, full=16, quick=6, smoke=2)
    single_trials = sized(size, full=8, quick=3, smoke=1)
    outcomes: dict[str, autocompress.StudyOutcome] = {}
    with scratch() as folder:
        outcomes["joint"] = _search(task, autocompress.config.PROJECT_ROOT / JOINT, trials,
                                    measure, folder / "joint")
        for label, space in SINGLE_SPACES.items():
            outcomes[label] = _search(task, space, single_trials, measure,
                                      folder / label.replace(" ", "_"))
    budget = autocompress.Budget(max_perplexity_increase=0.5)
    reference = reference_point(OBJECTIVES, teacher, budget)
    volumes, front_rows = {}, []
    for label, outcome in outcomes.items():
        front = pareto_front(outcome.results, OBJECTIVES, teacher, budget)
        points = normalise([m.metrics for m in front.members], OBJECTIVES, reference)
        volumes[label] = (hypervolume(points, np.ones(len(OBJECTIVES))) if len(points)
                          else 0.0)
        front_rows.append([label, len(outcome.results), len(front.members),
                           f"{volumes[label]:.4f}"])
    joint = volumes["joint"]
    for row, label in zip(front_rows, outcomes, strict=True):
        row.append("-" if label == "joint" else
                   f"{joint / volumes[label]:.2f}x" if volumes[label] else "inf")
    print(table(["space", "trials", "front", "hypervolume", "joint / this"], front_rows))
    everyone = [r for o in outcomes.values() for r in o.results if r.ok]
    smallest = min((r for r in everyone if _increase(r.metrics, teacher) <= 10),
                   key=lambda r: r.metrics["memory_bytes"], default=None)
    fastest = max((r for r in everyone if _increase(r.metrics, teacher) <= 20),
                  key=lambda r: r.metrics["tokens_per_s"], default=None)
    picks = []
    for label, member in (("smallest within +10% (val)", smallest),
                          ("fastest within +20% (val)", fastest)):
        if member is None:
            picks.append([label, "none", "", "", "", ""])
            continue
        m = member.metrics
        picks.append([label, f"{_increase(m, teacher):+.1f}%",
                      f"{_increase(m, teacher, 'test_'):+.1f}%",
                      f"{teacher['memory_bytes'] / m['memory_bytes']:.2f}x",
                      f"{m['tokens_per_s'] / teacher['tokens_per_s']:.2f}x",
                      choices(member, list(member.plan.choices))[:90]])
    print(table(["member", "val ppl", "test ppl", "smaller", "decode", "choices"], picks))
    smaller = teacher["memory_bytes"] / smallest.metrics["memory_bytes"] if smallest else 0.0
    faster = fastest.metrics["tokens_per_s"] / teacher["tokens_per_s"] if fastest else 0.0
    best_single = max((v for k, v in volumes.items() if k != "joint"), default=0.0)
    lead = joint / best_single if best_single else float("inf")
    order = (single.get("magnitude 50%", 0) > single.get("Wanda 50%", 0)
             and single.get("magnitude 50%", 0) > single.get("SparseGPT 50%", 0))
    text = (f"SmolLM2: within +10% perplexity {smaller:.1f}x smaller (target 4x), within +20% "
            f"{faster:.2f}x decode tokens/s (target 1.3x); joint hypervolume {lead:.2f}x the "
            f"best single technique's; magnitude {'above' if order else 'NOT above'} Wanda "
            f"and SparseGPT at 50%")
    print(text)
    figures = {"smaller_within_10pct": smaller, "faster_within_20pct": faster,
               "joint_hypervolume": joint}
    if best_single:
        figures["joint_lead"] = lead
    return Headline("llm (SmolLM2)", text, smaller >= 4 and faster >= 1.3, figures)


if __name__ == "__main__":
    main()
