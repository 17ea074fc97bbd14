"""Measures of a decoder language model: perplexity, prefill latency, decode speed, peak memory.

Measured means measured: the deployed model runs, timed with the conventions of
:mod:`autocompress.measure.latency` (warm-up, fixed threads, batch 1, median, half the IQR); peak
memory is the high-water mark of a fresh process that loads the stored model and generates, as in
:mod:`autocompress.measure.peak`. An int8 deployment's perplexity is that of the int8 model.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autocompress.llm.int8 import DYNAMIC_LINEAR as _DYNAMIC_LINEAR
from autocompress.llm.int8 import int8_dynamic
from autocompress.measure.latency import measure_latency

LM_RUNTIMES = ("torch", "torch-int8")
PROMPT_SEED = 1234  # the prompt's token ids are fixed, so every trial decodes the same text


@dataclass(frozen=True)
class Timing:
    """A timed figure (``ms`` of prefill or decode ``tokens/s``) with how it was measured."""

    median: float
    noise: float  # half the inter-quartile range across the timed repeats
    unit: str
    threads: int
    repeats: int
    prompt_length: int
    new_tokens: int
    device: str = "cpu"

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


# --- calling a Hugging Face causal LM, across transformers versions -------------------------
def _logits(out: Any) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out


def _cache_of(out: Any) -> Any:
    cache = out.get("cache") if "cache" in out else out.get("past_key_values")  # renamed in 5.x
    if cache is None:
        raise RuntimeError("the model returned no KV cache although use_cache=True")
    return cache


def check_cache_layout(model: nn.Module) -> None:
    """Raise if decoder layers and config disagree: the KV cache is indexed by each attention's
    ``layer_idx`` and sized from ``config.num_hidden_layers``; numbers left stale by
    ``del layers[i]`` make decoding fail or, with a lazily grown cache, mix layers silently."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    config = getattr(model, "config", None)
    if layers is None or config is None:
        return
    if len(layers) != config.num_hidden_layers:
        raise ValueError(f"{len(layers)} decoder layers but config.num_hidden_layers is "
                         f"{config.num_hidden_layers}; update the config after dropping layers")
    types = getattr(config, "layer_types", None)
    if types is not None and len(types) != len(layers):
        raise ValueError(f"config.layer_types lists {len(types)} layers for {len(layers)}")
    for position, layer in enumerate(layers):
        index = getattr(getattr(layer, "self_attn", None), "layer_idx", position)
        if index != position:
            raise ValueError(f"decoder layer {position} has attention layer_idx {index}; "
                             "renumber layer_idx after dropping layers")


def fixed_prompt(model: nn.Module, prompt_length: int, device: str = "cpu", *,
                 new_tokens: int = 0) -> torch.Tensor:
    """A seeded ``(1, prompt_length)`` prompt of token ids over the model's vocabulary, checked
    to leave room for ``new_tokens`` within the model's positions."""
    config = model.config
    limit = getattr(config, "max_position_embeddings", None)
    if prompt_length < 1 or new_tokens < 0:
        raise ValueError("prompt_length must be at least 1 and new_tokens not negative")
    if limit is not None and prompt_length + new_tokens > limit:
        raise ValueError(f"{prompt_length} + {new_tokens} tokens exceed the model's {limit} "
                         "positions")
    generator = torch.Generator().manual_seed(PROMPT_SEED)
    prompt = torch.randint(0, config.vocab_size, (1, prompt_length), generator=generator)
    return prompt.to(device)


class _Generation(nn.Module):
    """Greedy generation in two parts: the prefill as a one-input module (so ``measure_latency``
    can time it) returning the first token and the filled KV cache, then cached decode steps."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        params = inspect.signature(model.forward).parameters  # prefill: last logits only
        self.keep = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self.keyword = "cache" if "cache" in params else "past_key_values"  # renamed in 5.x

    def forward(self, prompt: torch.Tensor) -> tuple[torch.Tensor, Any]:
        out = self.model(input_ids=prompt, use_cache=True, **self.keep)
        return _logits(out)[:, -1:].argmax(-1), _cache_of(out)

    def decode(self, token: torch.Tensor, cache: Any, steps: int) -> list[torch.Tensor]:
        """``steps`` greedy steps, each feeding the last token through the KV cache."""
        tokens = []
        for _ in range(steps):
            out = self.model(input_ids=token, use_cache=True, **{self.keyword: cache})
            cache, token = _cache_of(out), _logits(out)[:, -1:].argmax(-1)
            tokens.append(token)
        return tokens


def greedy_decode(model: nn.Module, prompt: torch.Tensor, new_tokens: int, *,
                  use_cache: bool = True) -> torch.Tensor:
    """The ``(1, new_tokens)`` greedy continuation; without the cache, each step recomputes the
    whole sequence (the reference that validates the cached path)."""
    with torch.no_grad():
        if not use_cache:
            sequence = prompt
            for _ in range(new_tokens):
                logits = _logits(model(input_ids=sequence, use_cache=False))
                sequence = torch.cat([sequence, logits[:, -1:].argmax(-1)], dim=1)
            return sequence[:, prompt.shape[1]:]
        check_cache_layout(model)
        generation = _Generation(model)
        token, cache = generation(prompt)
        return torch.cat([token, *generation.decode(token, cache, new_tokens - 1)], dim=1)


# --- perplexity ------------------------------------------------------------------------------
def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def scores(model: nn.Module, tokens: torch.Tensor, *, batch_size: int = 8
           ) -> tuple[float, float]:
    """Perplexity and next-token accuracy (arg-max equals the next token) in one pass; the loss
    in float32 (float64 logits would double the memory of a 49k vocabulary), summed in float64."""
    if tokens.dim() != 2 or tokens.shape[1] < 2 or tokens.dtype != torch.int64:
        raise ValueError(f"tokens must be int64 (N, L) with L >= 2, got {tuple(tokens.shape)} "
                         f"{tokens.dtype}")
    device = _model_device(model.eval())
    nll, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(tokens), batch_size):
            batch = tokens[start:start + batch_size].to(device)
            logits = _logits(model(input_ids=batch, use_cache=False))[:, :-1].float()
            nll += float(nn.functional.cross_entropy(logits.transpose(1, 2), batch[:, 1:],
                                                     reduction="none").double().sum())
            correct += int((logits.argmax(dim=-1) == batch[:, 1:]).sum())
    count = tokens.shape[0] * (tokens.shape[1] - 1)
    return math.exp(nll / count), correct / count


def perplexity(model: nn.Module, tokens: torch.Tensor, *, batch_size: int = 8) -> float:
    """exp of the mean NLL over all ``N*(L-1)`` predicted positions (sequences share L)."""
    return scores(model, tokens, batch_size=batch_size)[0]


# --- timing ----------------------------------------------------------------------------------
def _spread(values: list[float]) -> tuple[float, float]:
    """Median and half the inter-quartile range, as :class:`~autocompress.measure.Latency`."""
    quartiles = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return statistics.median(values), (quartiles[2] - quartiles[0]) / 2


def _repeat(run: Callable[[], float], *, threads: int, warmup: int, repeats: int,
            max_seconds: float) -> list[float]:
    """``run`` (which times its own measured part) after warm-up, with threads fixed; at least
    five timed runs, then stops after ``max_seconds`` like ``measure_latency``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    times: list[float] = []
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                run()
            deadline = time.perf_counter() + max_seconds
            for i in range(max(repeats, 1)):
                times.append(run())
                if i >= 4 and time.perf_counter() > deadline:
                    break
    finally:
        torch.set_num_threads(previous)
    return times


def _timed(device: torch.device, work: Callable[[], object]) -> float:
    """Seconds ``work`` takes; on a GPU by CUDA events (the host clock sees only launches)."""
    if device.type == "cuda":
        begin, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
        begin.record()
        work()
        end.record()
        torch.cuda.synchronize()
        return begin.elapsed_time(end) / 1e3
    begin_s = time.perf_counter()
    work()
    return time.perf_counter() - begin_s


def prefill_latency(model: nn.Module, prompt_length: int, *, threads: int = 1, warmup: int = 3,
                    repeats: int = 10, max_seconds: float = 5.0) -> Timing:
    """Time to first token: one cached forward over a fixed prompt (batch 1), median in ms."""
    check_cache_layout(model)
    device = _model_device(model)
    prompt = fixed_prompt(model, prompt_length, str(device))
    generation = _Generation(model.eval())
    if device.type == "cpu":
        timed = measure_latency(generation, prompt, threads=threads, warmup=warmup,
                                repeats=repeats, max_seconds=max_seconds)
        median, noise, count = timed.median_ms, timed.noise_ms, timed.repeats
    else:
        times = _repeat(lambda: _timed(device, lambda: generation(prompt)) * 1e3,
                        threads=threads, warmup=warmup, repeats=repeats, max_seconds=max_seconds)
        (median, noise), count = _spread(times), len(times)
    return Timing(median, noise, "ms", threads, count, prompt_length, 0, device.type)


def decode_speed(model: nn.Module, *, prompt_length: int = 128, new_tokens: int = 32,
                 threads: int = 1, warmup: int = 1, repeats: int = 5,
                 max_seconds: float = 30.0) -> Timing:
    """Greedy decode speed in tokens/s: after an untimed prefill of a fixed prompt, ``new_tokens``
    decode steps through the KV cache are timed (each makes one token; no stop on EOS)."""
    check_cache_layout(model)
    if new_tokens < 1:
        raise ValueError("new_tokens must be at least 1")
    device = _model_device(model)
    prompt = fixed_prompt(model, prompt_length, str(device), new_tokens=new_tokens)
    generation = _Generation(model.eval())

    def run() -> float:
        token, cache = generation(prompt)
        return new_tokens / _timed(device, lambda: generation.decode(token, cache, new_tokens))

    speeds = _repeat(run, threads=threads, warmup=warmup, repeats=repeats, max_seconds=max_seconds)
    median, noise = _spread(speeds)
    return Timing(median, noise, "tokens/s", threads, len(speeds), prompt_length, new_tokens,
                  device.type)


# --- peak memory, in a fresh process -----------------------------------------------------------
_CHILD = r"""
import inspect, json, sys
def rss(field):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(field))
args = json.loads(sys.argv[1])
import torch, transformers
torch.set_num_threads(args["threads"])
cls = getattr(transformers, args["cls"], transformers.AutoModelForCausalLM)  # imports its module
generator = torch.Generator().manual_seed(args["seed"])
prompt = torch.randint(0, args["vocab"], (1, args["prompt_length"]), generator=generator)
base, cuda = rss("VmRSS"), args["device"] == "cuda"
if args["kind"] == "pretrained":
    model = cls.from_pretrained(args["path"], dtype=getattr(torch, args["dtype"]),
                                attn_implementation=args["attn"])
else:
    model = torch.load(args["path"], weights_only=False)
if cuda:
    model, prompt = model.to("cuda"), prompt.to("cuda")
cache_of = lambda out: out["cache"] if "cache" in out else out["past_key_values"]
keyword = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
with torch.inference_mode():
    model.eval()
    out = model(input_ids=prompt, use_cache=True, logits_to_keep=1)
    cache, token = cache_of(out), out.logits[:, -1:].argmax(-1)
    for _ in range(args["new_tokens"]):
        out = model(input_ids=token, use_cache=True, **{keyword: cache})
        cache, token = cache_of(out), out.logits[:, -1:].argmax(-1)
peak = torch.cuda.max_memory_allocated() if cuda else rss("VmHWM") - base
print(json.dumps({"peak": peak}))
"""


def peak_generation_bytes(model: nn.Module, *, prompt_length: int = 128, new_tokens: int = 32,
                          threads: int = 1, timeout_s: float = 300.0) -> int:
    """Peak bytes of loading the stored model and generating, in a fresh process: ``VmHWM``
    minus ``VmRSS`` after imports (on a GPU, ``max_memory_allocated``). A float model is stored
    by ``save_pretrained`` (safetensors, its pruned config included), an int8 one, which has no
    safetensors form, by ``torch.save``."""
    check_cache_layout(model)
    config = model.config
    args: dict[str, Any] = {
        "threads": threads, "prompt_length": prompt_length, "new_tokens": new_tokens,
        "seed": PROMPT_SEED, "vocab": config.vocab_size, "device": _model_device(model).type,
        "cls": type(model).__name__, "attn": getattr(config, "_attn_implementation", None)}
    fixed_prompt(model, prompt_length, new_tokens=new_tokens)  # validates the lengths
    with tempfile.TemporaryDirectory() as tmp:
        if any(isinstance(m, _DYNAMIC_LINEAR) for m in model.modules()):
            args.update(kind="pickle", path=str(Path(tmp) / "model.pt"))
            torch.save(model, args["path"])
        else:
            args.update(kind="pretrained", path=tmp,
                        dtype=str(next(model.parameters()).dtype).removeprefix("torch."))
            model.save_pretrained(tmp, safe_serialization=True)
        done = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(args)],
                              capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"peak generation memory measurement failed: {last}")
    return int(json.loads(done.stdout.strip().splitlines()[-1])["peak"])


# --- deployment and the whole measurement ------------------------------------------------------
def deploy_lm(model: nn.Module, runtime: str = "torch", *, threads: int = 1,
              device: str = "cpu") -> nn.Module:
    """The model as ``runtime`` runs it: ``torch`` is the float model itself, ``torch-int8`` a
    dynamically quantized copy (CPU only). ``threads`` is unused: set per measurement."""
    if runtime not in LM_RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; expected one of {LM_RUNTIMES}")
    if device != "cpu":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device")
        if runtime == "torch-int8":
            raise ValueError("torch-int8 uses CPU int8 kernels; it cannot run on a GPU")
        if _model_device(model).type != torch.device(device).type:
            model = copy.deepcopy(model).to(device)
        return model.eval()
    if runtime == "torch-int8":
        return int8_dynamic(model)
    return model.eval()


def measure_lm(model: nn.Module, *, val_tokens: torch.Tensor,
               test_tokens: torch.Tensor | None = None, runtime: str = "torch",
               threads: int = 1, prompt_length: int = 128, new_tokens: int = 32,
               warmup: int = 1, repeats: int = 5, peak: bool = False, device: str = "cpu",
               batch_size: int = 8) -> dict[str, Any]:
    """Every figure of one trial, all measured on the deployed model in ``runtime``."""
    deployed = deploy_lm(model, runtime, threads=threads, device=device)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        result: dict[str, Any] = {
            "perplexity": perplexity(deployed, val_tokens, batch_size=batch_size)}
        if test_tokens is not None:
            result["test_perplexity"] = perplexity(deployed, test_tokens, batch_size=batch_size)
    finally:
        torch.set_num_threads(previous)
    prefill = prefill_latency(deployed, prompt_length, threads=threads, warmup=warmup,
                              repeats=repeats)
    decode = decode_speed(deployed, prompt_length=prompt_length, new_tokens=new_tokens,
                          threads=threads, warmup=warmup, repeats=repeats)
    result.update(latency_ms=prefill.median, latency_noise_ms=prefill.noise,
                  tokens_per_s=decode.median, tokens_per_s_noise=decode.noise)
    if peak:
        result["peak_memory_bytes"] = peak_generation_bytes(
            deployed, prompt_length=prompt_length, new_tokens=new_tokens, threads=threads)
    dtype = str(next(deployed.parameters(), torch.empty(0)).dtype).removeprefix("torch.")
    result["measurement"] = {
        "runtime": runtime, "weights": getattr(deployed, "quantization", dtype),
        "device": device, "threads": threads, "batch_size": 1, "prompt_length": prompt_length,
        "new_tokens": new_tokens, "warmup": warmup, "prefill_repeats": prefill.repeats,
        "decode_repeats": decode.repeats,
        "perplexity_sequences": [len(val_tokens), val_tokens.shape[1]],
        "prompt": f"{prompt_length} random token ids, seed {PROMPT_SEED}",
        "decode": "greedy, KV cache, no stop on EOS; tokens/s = new_tokens / decode steps' time",
    }
    return result
