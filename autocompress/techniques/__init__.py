"""One module per technique, each with one face: ``PARAMETERS`` and ``apply(model, plan, ctx)``.

:data:`PIPELINE` is the order a trial applies them in: build the student (for transformers:
keep blocks, remove heads and feed-forward neurons), attach pruning masks, attach fake
quantization, then fine-tune with distillation.
"""

from __future__ import annotations

from autocompress.params import Param
from autocompress.techniques import distill, prune, quantize, student, transformer

PIPELINE = (student, transformer, prune, quantize, distill)

SECTIONS = {"student": student, "transformer": transformer, "prune": prune,
            "quantize": quantize, "distill": distill}


def parameters() -> dict[str, Param]:
    """Every searchable parameter by its dotted name, e.g. ``prune.ratio``."""
    return {
        f"{section}.{param.name}": param
        for section, module in SECTIONS.items()
        for param in module.PARAMETERS
    }
