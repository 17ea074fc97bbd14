"""Latency: the median of timed forward passes of the real model, after warm-up.

Threads and batch size are fixed for the measurement (and restored after), every pass is timed
on its own with ``perf_counter_ns``, and the spread is reported with the median so a reader can
tell a real difference from noise.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Latency:
    """A latency figure with how it was measured."""

    median_ms: float
    noise_ms: float  # half the inter-quartile range of the timed passes
    batch_size: int
    threads: int
    repeats: int
    runtime: str = "torch"

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def measure_latency(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    batch_size: int = 1,
    threads: int = 1,
    warmup: int = 10,
    repeats: int = 50,
    max_seconds: float = 5.0,
    min_warmup_seconds: float = 0.05,
) -> Latency:
    """Time ``model`` on a batch of ``batch_size`` copies of ``example_input[:1]``.

    Warm-up runs ``warmup`` passes and at least ``min_warmup_seconds`` (caches, thread pools and
    the allocator settle; the first measurement after training was seen 1.6x slow without it).
    Stops early after ``max_seconds`` of timed passes (at least 5 passes are always taken), so a
    slow model cannot stall a search.
    """
    batch = example_input[:1].expand(batch_size, *example_input.shape[1:]).contiguous()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    model.eval()
    times: list[float] = []
    try:
        with torch.inference_mode():
            warm_until = time.perf_counter() + min_warmup_seconds
            done = 0
            while done < warmup or time.perf_counter() < warm_until:
                model(batch)
                done += 1
            deadline = time.perf_counter() + max_seconds
            for i in range(repeats):
                start = time.perf_counter_ns()
                model(batch)
                times.append((time.perf_counter_ns() - start) / 1e6)
                if i >= 4 and time.perf_counter() > deadline:
                    break
    finally:
        torch.set_num_threads(previous)
    quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return Latency(
        median_ms=statistics.median(times),
        noise_ms=(quartiles[2] - quartiles[0]) / 2,
        batch_size=batch_size,
        threads=threads,
        repeats=len(times),
    )
