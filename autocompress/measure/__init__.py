"""Measurement, kept apart from compression: every figure here is measured, never estimated."""

from __future__ import annotations

from autocompress.measure.latency import Latency, measure_latency
from autocompress.measure.memory import pack_model, stored_bits, stored_bytes

__all__ = ["Latency", "measure_latency", "pack_model", "stored_bits", "stored_bytes"]
