"""One causal-LM trial, for real, speed first: cut, time, distil, prune, quantize, measure.

1. **Cut** the decoder (``lm_student``): drop layers, query heads and MLP neurons, each chosen by
   its importance on the calibration text.
2. **Time** the cut model in the deploy runtime: prefill latency and decode tokens per second do
   not depend on weight values (sparse weights run dense, low-bit weights run as float32 or as
   int8 kernels), so a trial over a speed limit stops here, untrained (constraint first).
3. **Distil** the cut model towards the teacher on the training text (``lm_distill.steps``).
4. **Prune** with calibration (``lm_prune``), then **quantize** the weights (``lm_quantize``);
   pruned weights stay exactly zero through quantization.
5. **Measure** what was built: perplexity on the validation text (and the test text, reported
   only), next-token accuracy, the bytes of the packed model, peak generation memory when asked.

A fault inside a trial never escapes: it comes back as a failed :class:`TrialResult`.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from autocompress.budget import Budget, feasible
from autocompress.config import MeasureConfig
from autocompress.errors import TrialError
from autocompress.llm import measure as lm_measure
from autocompress.llm import sparsify, store, structure, weight_quant
from autocompress.llm.choices import FLOAT_BITS, LINEAR_KINDS, READERS
from autocompress.llm.distill import distill_lm
from autocompress.llm.task import LMTask
from autocompress.plan import Plan
from autocompress.result import COMPLETE, Stop, StopReason, TrialResult

student, distilling = READERS["lm_student"], READERS["lm_distill"]
pruning, quantizing = READERS["lm_prune"], READERS["lm_quantize"]


def cut(model: nn.Module, plan: Plan, calibration: torch.Tensor
        ) -> tuple[dict[str, float], list[int]]:
    """Step 1, in place: layers, heads and neurons removed; returns what was removed and, for
    each layer left, the teacher layer it was (the hidden-state loss pairs them)."""
    removed: dict[str, float] = {}
    drop = int(student(plan, "lm_student.drop_layers"))
    layers = structure_layers(model)
    kept = list(range(len(layers)))
    if drop >= len(layers):
        raise TrialError(f"lm_student.drop_layers {drop} leaves no layer of {len(layers)}")
    if drop:
        how = str(student(plan, "lm_student.layer_choice"))
        scores = (structure.block_influence(model, calibration) if how == "influence" else
                  structure.ablation_importance(model, calibration) if how == "ablation" else
                  [0.0] * len(layers))
        chosen = structure.choose_layers(scores, drop, how)
        structure.drop_layers(model, chosen)
        kept = [i for i in kept if i not in set(chosen)]
        removed["layers_dropped"] = float(drop)
    heads = float(student(plan, "lm_student.heads"))
    if heads < 1.0:
        structure.prune_heads(model, heads, calibration)
        removed["heads_kept"] = heads
    ffn = float(student(plan, "lm_student.ffn"))
    if ffn < 1.0:
        structure.prune_neurons(model, ffn, calibration)
        removed["ffn_kept"] = ffn
    return removed, kept


def structure_layers(model: nn.Module) -> nn.ModuleList:
    from autocompress.llm.calibrate import decoder_layers

    return decoder_layers(model)


def prune(model: nn.Module, plan: Plan, calibration: torch.Tensor) -> dict[str, torch.Tensor]:
    """Step 4a: calibration-based pruning; returns the keep mask of every pruned weight."""
    pattern = str(pruning(plan, "lm_prune.pattern"))
    ratios = {kind: float(pruning(plan, "lm_prune.ratio", layer=kind)) for kind in LINEAR_KINDS}
    if pattern == "unstructured" and not any(ratios.values()):
        return {}
    method = str(pruning(plan, "lm_prune.method"))
    if pattern == "unstructured":
        sparsify.sparsify_model(model, calibration, method=method, ratio=0.0, per_layer=ratios)
    else:
        n, m = (int(part) for part in pattern.split(":"))
        sparsify.sparsify_model(model, calibration, method=method, n=n, m=m)
    return {name: module.weight != 0 for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and name != "lm_head"
            and bool((module.weight == 0).any())}


def quantize(model: nn.Module, plan: Plan, calibration: torch.Tensor,
             masks: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Step 4b: weight-only quantization; pruned weights are set back to exact zeros."""
    bits = {kind: int(quantizing(plan, "lm_quantize.bits", layer=kind)) for kind in LINEAR_KINDS}
    table = int(quantizing(plan, "lm_quantize.embeddings"))
    if all(b == FLOAT_BITS for b in bits.values()) and table == FLOAT_BITS:
        return {}
    group = int(quantizing(plan, "lm_quantize.group_size")) or None
    symmetric = quantizing(plan, "lm_quantize.scheme") == "symmetric"
    per_layer = {kind: None if b == FLOAT_BITS else weight_quant.Format(b, group, symmetric)
                 for kind, b in bits.items()}
    formats = weight_quant.quantize_model(
        model, calibration, method=str(quantizing(plan, "lm_quantize.method")),
        fmt=None, per_layer=per_layer,
        embeddings=weight_quant.Format(table, None, False) if table != FLOAT_BITS else None,
        act_order=bool(quantizing(plan, "lm_quantize.act_order")))
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, keep in masks.items():
            modules[name].weight.mul_(keep)
    return formats


def sparsity(model: nn.Module) -> float:
    """Share of zero weights over the decoder's linear layers (the LM head excluded)."""
    zeros = total = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name != "lm_head":
            zeros += int((module.weight == 0).sum())
            total += module.weight.numel()
    return zeros / max(1, total)


def _left(timeout_s: float | None, started: float) -> float | None:
    """Seconds of the trial's time limit not yet spent (distillation stops cleanly there)."""
    return None if timeout_s is None else max(0.0, timeout_s - (time.perf_counter() - started))


def speed(model: nn.Module, measure: MeasureConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Prefill latency and decode tokens per second of ``model`` as ``measure.runtime`` runs it.

    Neither depends on weight values (zeros are multiplied like any weight; weights stored at a
    few bits run as float32, or as int8 under ``torch-int8``), so the cut model times as the
    finished one will."""
    deployed = lm_measure.deploy_lm(model, measure.runtime, threads=measure.threads,
                                    device=measure.device)
    prefill = lm_measure.prefill_latency(deployed, measure.prompt_length,
                                         threads=measure.threads, warmup=measure.warmup,
                                         repeats=measure.repeats)
    decode = lm_measure.decode_speed(deployed, prompt_length=measure.prompt_length,
                                     new_tokens=measure.new_tokens, threads=measure.threads,
                                     warmup=measure.warmup, repeats=measure.repeats)
    metrics = {"latency_ms": prefill.median, "latency_noise_ms": prefill.noise,
               "tokens_per_s": decode.median, "tokens_per_s_noise": decode.noise}
    weights = getattr(deployed, "quantization", "float32")
    measurement = {"latency": {
        "runtime": measure.runtime, "weights": weights, "device": measure.device,
        "threads": measure.threads, "batch_size": 1,
        "prefill": f"time to first token of a {measure.prompt_length}-token prompt, median of "
                   f"{prefill.repeats}",
        "decode": f"{measure.new_tokens} greedy tokens with the KV cache, median of "
                  f"{decode.repeats} runs"},
        "memory": "packed stored form (bit-packed codes, float16 scales, sparse bitmaps, "
                  "tied tables once), bytes"}
    if measure.runtime == "torch":
        measurement["note"] = ("sparse and low-bit weights run as dense float32 in torch: "
                               "they shrink the stored model, not the time")
    return metrics, measurement


def quality(model: nn.Module, task: LMTask, measure: MeasureConfig, *,
            need_peak: bool = False) -> tuple[dict[str, float], dict[str, Any]]:
    """Perplexity and next-token accuracy of the deployed model on the validation text (the
    test text too, for the report), and peak generation memory in a fresh process if asked."""
    deployed = lm_measure.deploy_lm(model, measure.runtime, threads=measure.threads,
                                    device=measure.device)
    metrics: dict[str, float] = {}
    splits = {"": task.val_tokens, "test_": task.test_tokens}
    before = torch.get_num_threads()
    torch.set_num_threads(measure.threads)
    try:
        for prefix, tokens in splits.items():
            if tokens is not None:
                ppl, accuracy = lm_measure.scores(deployed, tokens)
                metrics[f"{prefix}perplexity"], metrics[f"{prefix}accuracy"] = ppl, accuracy
    finally:
        torch.set_num_threads(before)
    for name, value in metrics.items():
        if not math.isfinite(value):
            raise TrialError(f"measured {name} is {value}")
    described: dict[str, Any] = {"perplexity": (
        f"exp mean next-token NLL over {tuple(task.val_tokens.shape)} validation tokens "
        f"(test: {tuple(task.test_tokens.shape) if task.test_tokens is not None else 'none'})")}
    if need_peak:
        metrics["peak_memory_bytes"] = float(lm_measure.peak_generation_bytes(
            deployed, prompt_length=measure.prompt_length, new_tokens=measure.new_tokens,
            threads=measure.threads))
        described["peak_memory"] = "fresh process: VmHWM - VmRSS around load + generation"
    return metrics, described


def run_lm_trial(plan: Plan, task: LMTask, *, measure: MeasureConfig, budget: Budget | None,
                 teacher_metrics: Mapping[str, float] | None = None, need_peak: bool = False,
                 timeout_s: float | None = None) -> TrialResult:
    """Build, time, distil, prune, quantize and measure the model of ``plan``."""
    from autocompress.trial import _alarm, failed

    budget = budget or Budget()
    teacher_metrics = dict(teacher_metrics or {})
    started = time.perf_counter()

    def result(state: str, metrics: dict, measurement: dict, *,
               stop: StopReason | None = None) -> TrialResult:
        constraints = budget.constraints(metrics, teacher_metrics.get("accuracy"),
                                         teacher_perplexity=teacher_metrics.get("perplexity"))
        return TrialResult(plan, state, metrics, measurement, constraints=constraints,
                           duration_s=time.perf_counter() - started, stop=stop)

    torch.manual_seed(plan.seed)
    try:
        with _alarm(timeout_s):
            model = copy.deepcopy(task.teacher)
            removed, kept = cut(model, plan, task.calibration)
            metrics, measurement = speed(model, measure)
            metrics.update(removed)
            metrics["parameters"] = float(sum(p.numel() for p in model.parameters()))
            if not feasible(budget.constraints(metrics)):
                return result(COMPLETE, metrics, measurement, stop=StopReason(Stop.STRUCTURE))
            steps = int(distilling(plan, "lm_distill.steps"))
            if removed and steps:
                done = distill_lm(
                    model, task.teacher, task.train_tokens, max_steps=steps,
                    lr=float(distilling(plan, "lm_distill.lr")),
                    temperature=float(distilling(plan, "lm_distill.temperature")),
                    hidden_weight=float(distilling(plan, "lm_distill.hidden_weight")),
                    layer_map=kept, time_limit_s=_left(timeout_s, started), seed=plan.seed)
                metrics["distill_steps"] = float(done["steps"])
            masks = prune(model, plan, task.calibration)
            formats = quantize(model, plan, task.calibration, masks)
            packed = store.pack(model, formats)
            metrics["memory_bytes"] = float(len(packed))
            metrics["sparsity"] = sparsity(model)
            found, described = quality(model, task, measure, need_peak=need_peak)
            metrics.update(found)
            measurement.update(described)
    except Exception as exc:  # a trial's fault is recorded; the study goes on
        return failed(plan, exc, started)
    finished = result(COMPLETE, metrics, measurement)
    finished.packed = packed
    return finished


def measure_lm_teacher(task: LMTask, measure: MeasureConfig, *, need_peak: bool = False
                       ) -> tuple[dict[str, float], dict[str, Any]]:
    """The teacher's figures, measured as every trial's are."""
    metrics, measurement = speed(task.teacher, measure)
    metrics["parameters"] = float(sum(p.numel() for p in task.teacher.parameters()))
    metrics["memory_bytes"] = float(len(store.pack(task.teacher, {})))
    metrics["sparsity"] = sparsity(task.teacher)
    found, described = quality(task.teacher, task, measure, need_peak=need_peak)
    metrics.update(found)
    measurement.update(described)
    return metrics, measurement
