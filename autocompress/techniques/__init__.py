"""One module per technique, each with one face (:class:`~.common.Technique`): ``PARAMETERS``
and ``apply(model, plan, ctx)``.

:data:`PIPELINE` is the order a trial applies them in: build the student (for transformers:
keep blocks, remove heads and feed-forward neurons), attach pruning masks, attach fake
quantization (together :data:`STRUCTURAL`), then fine-tune with distillation. Optional providers
(NNI) add choices to these parameters through :mod:`autocompress.techniques.providers`.
"""

from __future__ import annotations

from dataclasses import replace

from autocompress.params import Param
from autocompress.techniques import distill, providers, prune, quantize, student, transformer
from autocompress.techniques.common import Technique

STRUCTURAL: tuple[Technique, ...] = (student, transformer, prune, quantize)
PIPELINE: tuple[Technique, ...] = (*STRUCTURAL, distill)

SECTIONS: dict[str, Technique] = {"student": student, "transformer": transformer,
                                  "prune": prune, "quantize": quantize, "distill": distill}


def parameters() -> dict[str, Param]:
    """Every searchable parameter by its dotted name, e.g. ``prune.ratio``, providers' included.

    A provider's values extend the choice they belong to, and its own parameters follow that
    choice in its section, so the order (and with it a sampler's) is fixed by the declarations.
    """
    found: dict[str, Param] = {}
    for section, module in SECTIONS.items():
        for param in module.PARAMETERS:
            name = f"{section}.{param.name}"
            added = providers.choices(name)
            found[name] = replace(param, values=param.values + added) if added else param
            for extra in providers.parameters(name):
                found[f"{section}.{extra.name}"] = extra
    from autocompress.llm.choices import SECTIONS as LM_SECTIONS  # a causal LM's own steps

    for section, params in LM_SECTIONS.items():
        found.update({f"{section}.{param.name}": param for param in params})
    return found
