"""The joint search space: which techniques are on and what each parameter may take.

A space is YAML, one section per technique (``student``, ``prune``, ``quantize``, ``distill``)::

    prune:
      ratio: {low: 0.0, high: 0.95}     # a float range (add log: true or step: 0.05)
    quantize:
      bits: [2, 4, 8, 32]               # ordered choices: the sampler sees 2 < 4 < 8 < 32
    student:
      width: {low: 0.3, high: 1.0, per_layer: true}   # one value per hidden layer
    quantize:
      bits: {choices: [4, 8], per_layer: true}         # mixed precision

Each parameter is checked against what its technique declares (:mod:`autocompress.params`); a
parameter left out keeps its default. Ordered numeric choices are sampled as an integer index
(``quantize.bits.index``) so model-based samplers keep their order; the Plan holds the real value.
``per_layer: true`` (for parameters that allow it) becomes one dimension per weight layer of the
teacher, ``<name>.<layer>``, once :meth:`SearchSpace.for_layers` knows the layers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from autocompress.errors import ConfigError, unknown_key_error
from autocompress.files import read_yaml
from autocompress.params import Param
from autocompress.plan import Choice
from autocompress.techniques import parameters, providers


class Suggester(Protocol):
    """What the space needs from a sampler: an ``optuna.Trial`` fits."""

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float: ...

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1,
                    log: bool = False) -> int: ...

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


@dataclass(frozen=True)
class Dimension:
    """One parameter's domain. ``kind``: fixed, float, int, ordinal or categorical."""

    name: str
    kind: str
    values: tuple[Choice, ...] = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    per_layer: bool = False

    def sample(self, suggest: Suggester) -> Choice:
        if self.kind == "fixed":
            return self.values[0]
        if self.kind == "float":
            return suggest.suggest_float(self.name, self.low, self.high, step=self.step,
                                         log=self.log)
        if self.kind == "int":
            return suggest.suggest_int(self.name, int(self.low), int(self.high),
                                       step=int(self.step or 1), log=self.log)
        if self.kind == "ordinal":
            return self.values[suggest.suggest_int(f"{self.name}.index", 0, len(self.values) - 1)]
        return suggest.suggest_categorical(self.name, list(self.values))

    def describe(self) -> str:
        if self.kind == "fixed":
            return f"{self.values[0]!r} (fixed)"
        if self.kind in ("float", "int"):
            extra = " log" if self.log else (f" step {self.step:g}" if self.step else "")
            return f"{self.low:g} .. {self.high:g}{extra}"
        return "{" + ", ".join(map(str, self.values)) + "}"


def _is_number(value: object) -> bool:
    """A finite int or float: NaN slips past every comparison, and inf past an open bound."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return abs(value) < 1e300 and math.isfinite(value)


def _dimension(where: str, name: str, spec: object, param: Param) -> Dimension:
    """Parse one YAML value into a Dimension allowed by ``param``, or raise ConfigError."""
    expected = param.allowed()

    def fail() -> ConfigError:
        return ConfigError(where, name, spec, expected)

    def fits(value: object) -> bool:
        if param.kind == "bool":
            return isinstance(value, bool)
        if param.kind == "choice":
            return not isinstance(value, bool) and value in param.values
        if not _is_number(value) or not (param.low <= value <= param.high):
            return False
        return param.kind == "float" or float(value).is_integer()

    if isinstance(spec, Mapping):
        per_layer = spec.get("per_layer", False)
        if not isinstance(per_layer, bool) or (per_layer and not param.per_layer):
            raise ConfigError(where, f"{name}.per_layer", per_layer,
                              "true or false" if param.per_layer else f"{name} is global only")
        if "choices" in spec:
            extra = set(spec) - {"choices", "per_layer"}
            if extra:
                raise unknown_key_error(where, f"{name}.{sorted(extra)[0]}",
                                        (f"{name}.choices", f"{name}.per_layer"))
            return replace(_dimension(where, name, spec["choices"], param), per_layer=per_layer)
        if param.kind not in ("float", "int"):
            raise fail()
        allowed_keys = ("low", "high", "log", "step", "per_layer", "choices")
        for key in spec:
            if key not in allowed_keys:
                allowed = [f"{name}.{k}" for k in allowed_keys]
                raise unknown_key_error(where, f"{name}.{key}", allowed)
        low, high = spec.get("low"), spec.get("high")
        if not (fits(low) and fits(high)) or low > high:
            raise fail()
        log, step = spec.get("log", False), spec.get("step")
        if not isinstance(log, bool):
            raise fail()
        if step is not None:
            _check_step(where, name, step, low, high, whole=param.kind == "int")
        if log and (low <= 0 or step is not None):
            raise ConfigError(where, f"{name}.log", log, "log only with low > 0 and no step")
        kind = "int" if param.kind == "int" else "float"
        return Dimension(name, kind, low=low, high=high, log=log, step=step, per_layer=per_layer)
    if isinstance(spec, list):
        if not spec or not all(fits(v) for v in spec) or len(set(spec)) != len(spec):
            raise fail()
        if len(spec) == 1:
            return Dimension(name, "fixed", values=(spec[0],))
        if all(_is_number(v) for v in spec):
            return Dimension(name, "ordinal", values=tuple(sorted(spec)))
        return Dimension(name, "categorical", values=tuple(spec))
    if not fits(spec):
        raise fail()
    return Dimension(name, "fixed", values=(spec,))


def _check_step(where: str, name: str, step: object, low: float, high: float, *,
                whole: bool) -> None:
    """A step Optuna can use: finite (``.nan`` raised decimal.InvalidOperation inside it),
    positive, whole for an integer parameter, and not wider than the range it steps over."""
    what = "an integer step >= 1" if whole else "a finite step > 0"
    ok = _is_number(step) and step > 0 and (not whole or float(step).is_integer())
    if ok and high > low and step > high - low:
        ok, what = False, f"{what}, at most high - low ({high - low:g})"
    if not ok:
        raise ConfigError(where, f"{name}.step", step, what)


SHIPPED = Path(__file__).resolve().parents[1] / "search_spaces"
LM_PREFIX = "lm_"


def shipped_spaces(folder: Path = SHIPPED) -> list[tuple[str, str]]:
    """(name, first comment line) of every ``*.yaml`` space in ``folder`` (the shipped ones)."""
    found = []
    for path in sorted(Path(folder).glob("*.yaml")):
        first = next((line.lstrip("# ").rstrip() for line in path.read_text().splitlines()
                      if line.startswith("#")), "")
        found.append((path.stem, first))
    return found


class SearchSpace:
    """The dimensions of one search; every technique parameter has one (fixed when not listed)."""

    def __init__(self, dimensions: Mapping[str, Dimension], *, source: str = "<dict>") -> None:
        self.dimensions = dict(dimensions)
        self.source = source

    @classmethod
    def from_dict(cls, data: object, *, where: str = "<dict>") -> SearchSpace:
        known = parameters()
        sections = sorted({name.split(".")[0] for name in known})
        if not isinstance(data, Mapping | None):
            raise ConfigError(where, None, type(data).__name__, "a mapping of technique sections")
        if not data:
            raise ConfigError(where, None, "an empty search space",
                              f"at least one technique section ({', '.join(sections)})")
        dims = {
            name: Dimension(name, "fixed", values=(param.default,))
            for name, param in known.items()
        }
        for section, body in data.items():
            if section not in sections:
                raise unknown_key_error(where, str(section), sections)
            if not isinstance(body, Mapping):
                raise ConfigError(where, section, body, "a mapping of parameters")
            for key, spec in body.items():
                name = f"{section}.{key}"
                if name not in known:
                    allowed = [n.split(".", 1)[1] for n in known if n.startswith(section + ".")]
                    raise unknown_key_error(where, name, [f"{section}.{a}" for a in allowed])
                dims[name] = _dimension(where, name, spec, known[name])
                for value in dims[name].values:  # a provider's choices only where it imports
                    providers.require(where, name, value)
        # A language model's space (lm_* sections) and a classifier's do not mix: each holds
        # its own family's parameters only, so neither's plans carry the other's defaults.
        lm = [str(s) for s in data if str(s).startswith(LM_PREFIX)]
        if lm and len(lm) < len(data):
            other = next(str(s) for s in data if not str(s).startswith(LM_PREFIX))
            raise ConfigError(where, other, "beside lm_* sections",
                              "the sections of one kind of task: lm_* for task: causal_lm, "
                              "the others for classifiers")
        dims = {name: dim for name, dim in dims.items()
                if name.startswith(LM_PREFIX) == bool(lm)}
        return cls(dims, source=where)

    @property
    def for_language_models(self) -> bool:
        """Whether this is a causal-LM space (``lm_*`` sections)."""
        return any(name.startswith(LM_PREFIX) for name in self.dimensions)

    @classmethod
    def from_yaml(cls, path: str | Path) -> SearchSpace:
        return cls.from_dict(read_yaml(path, what="search space YAML file"), where=str(path))

    def sample(self, suggest: Suggester) -> dict[str, Choice]:
        """Every parameter's value for one trial, asking ``suggest`` for the searched ones."""
        return {name: dim.sample(suggest) for name, dim in self.dimensions.items()}

    def for_layers(self, layers: list[str]) -> SearchSpace:
        """This space with every per-layer dimension split into one per named weight layer."""
        dims: dict[str, Dimension] = {}
        for name, dim in self.dimensions.items():
            if not dim.per_layer:
                dims[name] = dim
                continue
            for layer in layers:
                dims[f"{name}.{layer}"] = replace(dim, name=f"{name}.{layer}", per_layer=False)
        return SearchSpace(dims, source=self.source)

    @property
    def searched(self) -> dict[str, Dimension]:
        return {n: d for n, d in self.dimensions.items() if d.kind != "fixed"}

    def describe(self) -> str:
        width = max(len(n) for n in self.dimensions)
        return "\n".join(f"  {n:<{width}}  {d.describe()}" for n, d in self.dimensions.items())
