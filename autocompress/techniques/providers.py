"""Optional providers of technique choices (NNI today), behind one lazy registry.

A provider adds values to techniques' choice parameters (``prune.criterion: nni.l1``,
``quantize.mode: nni.qat``, ``distill.method: nni.layerwise``), each prefixed with its name, and
may add parameters of its own (``distill.layer_weight``). :data:`PROVIDERS` maps a provider's
name to its module's import path, as Ray Tune maps search-algorithm names to import functions:
the module is imported only when a declaration or an implementation is asked for, and it imports
its library (``nni``) only inside the functions that use it, so its declarations read without
the library installed. This is the only module that names a provider's module.

A provider module has:

* ``TITLE`` and ``INSTALL``: its library's name in messages, and how to install it;
* ``CHOICES``: the values it adds, by the dotted name of the choice parameter;
* ``PARAMETERS``: extra :class:`~autocompress.params.Param` s, by the dotted name of the choice
  they qualify (they join its section, right after it);
* ``available() -> str | None``: None when its library imports, else why not;
* ``implementation(field, value)``: what the technique owning ``field`` calls for ``value``: a
  :class:`~autocompress.techniques.importance.MaskCriterion` for ``prune.criterion``, a
  :class:`~autocompress.techniques.training.Trainer` for ``quantize.mode`` and
  ``distill.method``.

Techniques ask :func:`provides` and :func:`implementation`; :mod:`autocompress.space` asks
:func:`require` when a space is read; :func:`autocompress.techniques.parameters` merges
:func:`choices` and :func:`parameters` into the techniques' own.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from autocompress.errors import ConfigError
from autocompress.params import Param
from autocompress.plan import Choice

PROVIDERS: dict[str, str] = {"nni": "autocompress.techniques.nni_adapter"}


def load(name: str) -> ModuleType:
    """The module of provider ``name`` (imported on first use; its library is not)."""
    return importlib.import_module(PROVIDERS[name])


def provider_of(value: Choice) -> str | None:
    """The provider whose prefix ``value`` carries (``nni.qat`` -> ``nni``), None for ours."""
    if isinstance(value, str) and "." in value:
        prefix = value.split(".", 1)[0]
        if prefix in PROVIDERS:
            return prefix
    return None


def choices(field: str) -> tuple[str, ...]:
    """The values every provider adds to the choice parameter ``field``, in registry order."""
    return tuple(value for name in PROVIDERS for value in load(name).CHOICES.get(field, ()))


def parameters(field: str) -> tuple[Param, ...]:
    """The parameters providers add after the choice ``field`` (in its section)."""
    return tuple(param for name in PROVIDERS for param in load(name).PARAMETERS.get(field, ()))


def provides(field: str, value: Choice) -> bool:
    """Whether ``value`` of ``field`` is a provider's (and so has an :func:`implementation`)."""
    name = provider_of(value)
    return name is not None and value in load(name).CHOICES.get(field, ())


def implementation(field: str, value: Choice) -> Any:
    """What the technique owning ``field`` calls for a provider's ``value``."""
    if not provides(field, value):
        raise ValueError(f"{field}: {value!r} is not a provider's choice; "
                         f"providers offer {choices(field)}")
    return load(str(provider_of(value))).implementation(field, value)


def installed(name: str) -> bool:
    """Whether provider ``name``'s library imports here."""
    return load(name).available() is None


def require(where: str, field: str, value: Choice) -> None:
    """Refuse a provider's value when its library cannot be imported (when a space is read)."""
    name = provider_of(value)
    if name is not None and not installed(name):
        module = load(name)
        raise ConfigError(where, field, value, f"a choice without the '{name}.' prefix, or "
                                               f"{module.TITLE} installed ({module.INSTALL})")
