"""SmolLM2 under a user's perplexity budget: the two targets of ``benchmarks/llm.py``, searched for.

    .venv/bin/python -m benchmarks llm_targets [--quick | --smoke]

``benchmarks/llm.py`` searches the whole joint space and reads its two targets off every trial.
A user with a budget searches the part of the space that can meet it, and that is what this
does, on the same teacher, text and measurement:

1. **Smallest within +10% perplexity** (target: 4x smaller than the float32 teacher): stored
   size and perplexity, float runtime, over weight-only quantization (RTN or GPTQ, 5, 6 or 8
   bits, groups of 64 or 128, an 8-bit token table) with mild calibrated pruning (Wanda or
   SparseGPT, up to 20%). Measured alone (RTN, groups of 128, 8-bit table, 8 x 256 tokens):
   6 bits +5.3% validation perplexity at 4.86x smaller, 5 bits +11.6% at 5.53x.
2. **Fastest within +20%** (target: 1.3x the float32 teacher's decode tokens per second):
   decode speed and perplexity in the ``torch-int8`` runtime (dynamic int8 kernels; each MLP's
   ``down_proj`` and the first and last blocks kept float, see ``autocompress/llm/measure.py``),
   over dropping decoder layers (by block influence) with distillation.

Members are chosen on validation perplexity against the float teacher's and reported on test.
The chosen members' speed is measured again beside the teacher's, in turns (teacher, member,
teacher, ...), and the ratio is the median of the turns' ratios: a search's timings drift with
the machine's load, a paired ratio does not. ``--quick``: 8 sequences per split and 6 trials per
search (about 30 minutes on 2 cores); ``--smoke``: a tiny random Llama (seconds).
"""

from __future__ import annotations

import copy
import statistics
from typing import Any

import torch

import autocompress
from autocompress.config import MeasureConfig
from autocompress.llm.measure import decode_speed, deploy_lm
from autocompress.llm.task import LMTask
from autocompress.llm.trial import cut
from benchmarks.common import Headline, choices, scratch, sized, table
from benchmarks.llm import _increase, measured_teacher

SMALL_SPACE = {  # a float32 token table alone is a fifth of the teacher: 8 bits, fixed
    "lm_prune": {"method": ["wanda", "sparsegpt"], "ratio": {"low": 0.0, "high": 0.2}},
    "lm_quantize": {"method": ["rtn", "gptq"], "bits": [5, 6, 8], "group_size": [64, 128],
                    "embeddings": [8]},
}
FAST_SPACE = {
    "lm_student": {"drop_layers": [0, 1, 2, 3, 4], "layer_choice": ["influence"],
                   "ffn": [0.9, 1.0]},
    "lm_distill": {"steps": [0, 8]},
}
SEARCHES = {  # label -> space, objectives, runtime, the budget (percent over the float teacher)
    "smallest": (SMALL_SPACE, {"perplexity": "min", "memory_bytes": "min"}, "torch", 10),
    "fastest": (FAST_SPACE, {"perplexity": "min", "tokens_per_s": "max"}, "torch-int8", 20),
}


def _search(task: LMTask, measure: MeasureConfig, label: str, trials: int, folder: Any
            ) -> autocompress.StudyOutcome:
    space, objectives, runtime, _ = SEARCHES[label]
    fields = {key: getattr(measure, key) for key in ("threads", "warmup", "repeats",
                                                     "prompt_length", "new_tokens")}
    return autocompress.search_lm(
        task.teacher, train=task.train_tokens, calibration=task.calibration,
        val=task.val_tokens, test=task.test_tokens, space=space, trials=trials, seed=0,
        sampler="tpe", objectives=objectives, measure={**fields, "runtime": runtime},
        out_dir=folder / label, name=label, progress=None)


def _searched(space: dict) -> list[str]:
    """The dimensions ``space`` searches (a range, or more than one value)."""
    return [f"{section}.{name}" for section, params in space.items()
            for name, values in params.items()
            if isinstance(values, dict) or (isinstance(values, list) and len(values) > 1)]


def paired_speedup(task: LMTask, member: autocompress.TrialResult, runtime: str,
                   measure: MeasureConfig, rounds: int) -> float:
    """Median over ``rounds`` of (member's decode tokens/s / the float teacher's), each round
    timing the two one after the other. The member is rebuilt to its structure (speed does not
    depend on the weights' values) and deployed in ``runtime``."""
    model = copy.deepcopy(task.teacher)
    cut(model, member.plan, task.calibration)
    deployed = deploy_lm(model, runtime)
    settings = {"prompt_length": measure.prompt_length, "new_tokens": measure.new_tokens,
                "threads": measure.threads, "warmup": 1, "repeats": 3}
    ratios = []
    for _ in range(rounds):
        teacher = decode_speed(task.teacher, **settings).median
        ratios.append(decode_speed(deployed, **settings).median / teacher)
    return statistics.median(ratios)


def main(size: str = "full") -> Headline:
    task, measure, teacher = measured_teacher(size)
    trials = sized(size, full=12, quick=6, smoke=2)
    rows, figures = [], {}
    with scratch() as folder:
        for label, (_, _, runtime, limit) in SEARCHES.items():
            outcome = _search(task, measure, label, trials, folder)
            within = [r for r in outcome.results
                      if r.ok and _increase(r.metrics, teacher) <= limit]
            print(f"{label}: {len(outcome.results)} trials, {len(within)} within +{limit}% "
                  f"on validation ({runtime})")
            pick = (min(within, key=lambda r: r.metrics["memory_bytes"]) if label == "smallest"
                    else max(within, key=lambda r: r.metrics["tokens_per_s"])) if within else None
            if pick is None:
                rows.append([f"{label} within +{limit}%", runtime, "none", "", "", "", ""])
                figures[label] = 0.0
                continue
            m = pick.metrics
            smaller = teacher["memory_bytes"] / m["memory_bytes"]
            faster = paired_speedup(task, pick, runtime, measure,
                                    rounds=sized(size, full=5, quick=5, smoke=1))
            figures[label] = smaller if label == "smallest" else faster
            rows.append([f"{label} within +{limit}%", runtime, f"{_increase(m, teacher):+.1f}%",
                         f"{_increase(m, teacher, 'test_'):+.1f}%",
                         f"{smaller:.2f}x", f"{faster:.2f}x",
                         choices(pick, _searched(SEARCHES[label][0]))])
    print(table(["member (chosen on val)", "runtime", "val ppl", "test ppl", "smaller",
                 "decode (paired)", "choices"], rows))
    smaller, faster = figures["smallest"], figures["fastest"]
    text = (f"SmolLM2 under a budget: smallest within +10% {smaller:.2f}x smaller (target 4x), "
            f"fastest within +20% {faster:.2f}x decode tokens/s, paired with the teacher "
            f"(target 1.3x)")
    print(text)
    return Headline("llm_targets (SmolLM2)", text, smaller >= 4 and faster >= 1.3,
                    {"smaller_within_10pct": smaller, "faster_within_20pct": faster})


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
