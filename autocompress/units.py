"""Human-style units in study files: ``2ms``, ``100kB``, ``1.5MB``, ``10min``.

Sizes use decimal prefixes (1 kB = 1000 bytes) and binary ones (1 KiB = 1024 bytes) as written.
"""

from __future__ import annotations

import math
import re

_NUMBER = r"\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*"

_BYTES = {
    "": 1, "b": 1, "byte": 1, "bytes": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
MAX_BYTES = 2**63  # sizes are stored as 64-bit integers

_MS = {"": 1.0, "ms": 1.0, "s": 1000.0, "us": 1e-3, "µs": 1e-3}
_SECONDS = {"": 1.0, "s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0}


def _parse(value: object, table: dict[str, float], what: str) -> float:
    """The value in the table's base unit; never inf or NaN (``.inf``, ``1e400kB``), which would
    pass every comparison with a limit, or fail each one, silently."""
    number = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value) if abs(value) < 1e300 else math.inf  # float(10**400) raises
    elif isinstance(value, str) and len(value) <= 100:
        match = re.fullmatch(_NUMBER + r"([A-Za-zµ]*)\s*", value)
        if match and match.group(2).lower() in table:
            number = float(match.group(1)) * table[match.group(2).lower()]
    if number is None or not math.isfinite(number):
        raise ValueError("expected " + (what if number is None else
                                         what.replace("a ", "a finite ", 1)))
    return number


def parse_bytes(value: object) -> int:
    """``"100kB"`` -> 100000; plain numbers are bytes (at most 2**63 - 1: what storage holds)."""
    what = "a size such as 100kB, 1.5MB or 2048"
    size = _parse(value, _BYTES, what)
    if abs(size) >= MAX_BYTES:
        raise ValueError(f"expected {what}, below 2**63 bytes (8 EiB)")
    return round(size)


def parse_ms(value: object) -> float:
    """``"2ms"`` -> 2.0, ``"1s"`` -> 1000.0; plain numbers are milliseconds."""
    return _parse(value, _MS, "a time such as 2ms, 0.5s or 1.5")


def parse_seconds(value: object) -> float:
    """``"10min"`` -> 600.0, ``"90s"`` -> 90.0; plain numbers are seconds."""
    return _parse(value, _SECONDS, "a duration such as 90s, 10min or 1h")


def format_bytes(n: float) -> str:
    """1234567 -> '1.23 MB' (decimal prefixes, as in the Deep Compression paper)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"
