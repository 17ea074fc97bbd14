"""Checks of single fields and sections of a study file, each raising the one-line ConfigError.

Kept apart from :mod:`autocompress.config` (which assembles a whole study from them) so that
module stays short; nothing here knows the study's dataclasses beyond the class it is handed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from autocompress.budget import Budget
from autocompress.errors import ConfigError, did_you_mean, unknown_key_error
from autocompress.units import parse_bytes, parse_ms

CHOICES = {"runtime": ("onnxruntime", "torch", "torch-int8"), "device": ("cpu", "cuda"),
           "scheduler": ("asha", "fifo")}
OBJECTIVES = {"accuracy": "max", "latency_ms": "min", "memory_bytes": "min",
              "peak_memory_bytes": "min", "perplexity": "min", "tokens_per_s": "max"}
LM_ONLY = ("perplexity", "tokens_per_s")  # objectives only a causal-LM task measures


# Sanity caps of integer fields, named in an error only when broken (below the floor, an error
# still says "an integer >= 1"): each is far past any real setting and well short of the value
# that would exhaust memory or run for ever (a batch of 1e8 samples, 1e9 timing repeats).
CAPS = {"batch_size": 65536, "threads": 1024, "cpus_per_trial": 1024, "gpus_per_trial": 64,
        "max_concurrent": 1024, "max_failures": 100, "warmup": 10_000, "repeats": 100_000,
        "epochs": 10_000, "teacher_epochs": 10_000, "prompt_length": 8192,
        "new_tokens": 8192, "sequence_length": 8192, "train_sequences": 1_000_000,
        "calibration_sequences": 100_000, "validation_sequences": 100_000,
        "test_sequences": 100_000}
TRIALS_CAP = 1_000_000
MAX_ACCURACY_DROP = 100.0  # points: a drop of more than all of it is no limit


FINETUNE_CHOICES = {"optimizer": ("auto", "adam", "adamw", "sgd"),
                    "schedule": ("auto", "constant", "cosine", "linear")}
FINETUNE_RANGES = {  # field: (low, high, low included, high included, what it is)
    "lr": (0.0, math.inf, False, False, "a positive finite rate, e.g. 0.0001"),
    "warmup": (0.0, 1.0, True, False, "a share of the steps in [0, 1), e.g. 0.1"),
    "weight_decay": (0.0, 1.0, True, True, "a decay in [0, 1], e.g. 0.01"),
}


@dataclass(frozen=True)
class FinetuneConfig:
    """How every trial fine-tunes. ``auto`` is resolved per teacher by
    :func:`autocompress.techniques.training.recipe_for` (for our small teachers: Adam at 1e-3,
    constant, as always; for pretrained ones: AdamW at a rate scaled to the size, 10% warm-up,
    linear decay) and the values used are recorded with each trial (``finetune_lr``, ...)."""

    epochs: int = 3
    lr: float | str = "auto"
    batch_size: int = 128
    optimizer: str = "auto"      # adam | adamw | sgd (momentum 0.9)
    schedule: str = "auto"       # constant | cosine | linear (decay to 0 after the warm-up)
    warmup: float | str = "auto"  # share of the steps over which the rate ramps up
    weight_decay: float | str = "auto"  # on weight matrices and kernels, not biases or norms


def _entries(where: str, section: str, data: object, cls: type, what: str
             ) -> list[tuple[str, str, object]]:
    """``(key, section.key, value)`` of a section's mapping (None: empty), its keys checked
    against ``cls``'s fields."""
    if data is None:
        return []
    if not isinstance(data, Mapping):
        raise ConfigError(where, section, data, what)
    allowed = list(cls.__dataclass_fields__)
    for key in data:
        if key not in allowed:
            raise unknown_key_error(where, f"{section}.{key}", [f"{section}.{k}" for k in allowed])
    return [(key, f"{section}.{key}", value) for key, value in data.items()]


def finetune(where: str, data: object) -> FinetuneConfig:
    """Parse ``finetune:``; each field is checked on its own, ``auto`` where it may be."""
    values: dict[str, object] = {}
    for key, name, value in _entries(where, "finetune", data, FinetuneConfig, "a mapping"):
        if key in ("epochs", "batch_size"):
            values[key] = integer(where, name, value, 1, cap=CAPS[key])
        elif key in FINETUNE_CHOICES:
            if value not in FINETUNE_CHOICES[key]:
                hint = did_you_mean(str(value), FINETUNE_CHOICES[key])
                raise ConfigError(where, name, value,
                                  f"one of {', '.join(FINETUNE_CHOICES[key])}{hint}")
            values[key] = value
        else:
            values[key] = value if value == "auto" else _bounded(where, name, value,
                                                                 FINETUNE_RANGES[key])
    return FinetuneConfig(**values)


def _bounded(where: str, name: str, value: object, bounds: tuple) -> float:
    low, high, with_low, with_high, what = bounds
    if not _finite(value) or not (
            (low <= value if with_low else low < value)
            and (value <= high if with_high else value < high)):
        raise ConfigError(where, name, value, f"auto or {what}{_as_text(value)}")
    return float(value)


def _as_text(value: object) -> str:
    """A hint for a number YAML read as text (``1e-4``: YAML 1.1 wants ``1.0e-4``)."""
    if not isinstance(value, str):
        return ""
    try:
        float(value)
    except ValueError:
        return ""
    return f" (YAML reads {value} as text: write it with a dot, 1.0e-4)"


def integer(where: str, name: str, value: object, low: int, high: int | None = None, *,
            cap: int | None = None) -> int:
    """An int in [low, high]; ``cap`` is a sanity bound, named only to a value above it."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    if not ok or (high is not None and value > high):
        bound = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        raise ConfigError(where, name, value, bound)
    if cap is not None and value > cap:
        raise ConfigError(where, name, value, f"an integer in [{low}, {cap}]")
    return value


def positive_float(where: str, name: str, value: object) -> float:
    if not _finite(value) or value <= 0:
        raise ConfigError(where, name, value, "a positive finite number")
    return float(value)


def _finite(value: object) -> bool:
    """A real number that is not inf or NaN (an int too large for a float is not one either)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return abs(value) < 1e300 and math.isfinite(value)


def share(where: str, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise ConfigError(where, name, value, "a share in (0, 1), e.g. 0.3")
    return float(value)


def predictor_switch(where: str, value: object) -> bool:
    """``predictor: on`` / ``off`` (YAML reads both as booleans) or true / false."""
    if isinstance(value, bool):
        return value
    if value in ("on", "off"):
        return value == "on"
    raise ConfigError(where, "predictor", value, "on or off")


def section(where: str, name: str, data: object, cls: type) -> object:
    """Build a small config dataclass from a mapping, checking keys and types."""
    if data is None:
        return cls()
    if not isinstance(data, Mapping):
        raise ConfigError(where, name, data, "a mapping")
    defaults = cls()
    values = {}
    for key, value in data.items():
        if not hasattr(defaults, str(key)):
            allowed = [f"{name}.{k}" for k in defaults.__dataclass_fields__]
            raise unknown_key_error(where, f"{name}.{key}", allowed)
        default = getattr(defaults, key)
        full = f"{name}.{key}"
        if isinstance(default, int):
            values[key] = integer(where, full, value, 0 if key == "gpus_per_trial" else 1,
                                  cap=CAPS.get(key))
        elif isinstance(default, float):
            values[key] = positive_float(where, full, value)
        elif isinstance(default, str) and not isinstance(value, str):
            raise ConfigError(where, full, value, "a string")
        elif key in CHOICES:
            if value not in CHOICES[key]:
                hint = did_you_mean(str(value), CHOICES[key])
                raise ConfigError(where, full, value, f"one of {', '.join(CHOICES[key])}{hint}")
            values[key] = value
        else:
            values[key] = value
    return cls(**values)


def objectives(where: str, data: object) -> dict[str, str]:
    if not isinstance(data, Mapping) or not data:
        raise ConfigError(where, "objectives", data, "a mapping such as {accuracy: max, ...}")
    result = {}
    for name, direction in data.items():
        if name not in OBJECTIVES:
            allowed = [f"objectives.{o}" for o in OBJECTIVES]
            raise unknown_key_error(where, f"objectives.{name}", allowed)
        if direction != OBJECTIVES[name]:
            raise ConfigError(where, f"objectives.{name}", direction, OBJECTIVES[name])
        result[name] = direction
    if not 2 <= len(result) <= 3:
        raise ConfigError(where, "objectives", list(result), "two or three objectives")
    return result


def budget(where: str, data: object) -> Budget:
    """Parse ``budget:``; sizes and times may carry units (``100kB``, ``2ms``)."""
    values: dict[str, object] = {}
    for key, name, value in _entries(where, "budget", data, Budget, "a mapping of limits"):
        try:
            if key == "max_latency_ms":
                values[key] = parse_ms(value)
            elif key in ("max_memory_bytes", "max_peak_memory_bytes"):
                values[key] = parse_bytes(value)
            elif key in ("min_accuracy", "max_accuracy_drop", "max_perplexity"):
                values[key] = float(_number(value))
            elif key == "max_perplexity_increase":
                values[key] = _share_or_percent(value)
            elif key in ("batch_size", "threads"):
                values[key] = integer(where, name, value, 1, cap=CAPS[key])
            else:
                values[key] = value
        except ConfigError:
            raise  # already one line naming the field (a ConfigError is a ValueError too)
        except ValueError as exc:
            raise ConfigError(where, name, value, str(exc).removeprefix("expected ")) from None
        bad_positive = key.startswith("max_") and values[key] <= 0
        if bad_positive:
            raise ConfigError(where, name, value, "a positive limit")
    if "min_accuracy" in values and not 0 < values["min_accuracy"] <= 1:
        raise ConfigError(where, "budget.min_accuracy", data["min_accuracy"],
                          "a share in (0, 1], e.g. 0.95 for 95%")
    if not 0 <= values.get("max_accuracy_drop", 0) <= MAX_ACCURACY_DROP:
        raise ConfigError(where, "budget.max_accuracy_drop", data["max_accuracy_drop"],
                          "points in [0, 100] below the teacher, e.g. 1.0")
    device = values.get("device", "cpu")
    if device not in CHOICES["device"]:
        raise ConfigError(where, "budget.device", device, "cpu or cuda")
    return Budget(**values)


def _share_or_percent(value: object) -> float:
    """``10%`` or ``0.1``: a relative increase, as a share."""
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            value = float(value.strip()[:-1]) / 100.0
        except ValueError:
            raise ValueError("expected a share such as 0.1 or a percentage such as 10%") from None
    return _number(value)


def _number(value: object) -> float:
    if not _finite(value):
        raise ValueError("expected a finite number")
    return float(value)
