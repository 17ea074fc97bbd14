"""Weight quantization: per output channel, symmetric or asymmetric, trained or post-training.

* ``quantize.bits``: 2..8 bits, 16 (float16) or 32 (off); globally or per layer
  (``quantize.bits.<layer>``, mixed precision); ``quantize.last_layer_8bit`` keeps the output
  layer at 8 bits whatever the rest use.
* ``quantize.embeddings``: embedding tables (every ``nn.Embedding``: token, position, type) and
  weight layers marked as embeddings (a ViT's patch embedding) are quantized too, a table per
  row (one scale per token). Off by default: they stay float, as before. A pretrained
  transformer's tables are often most of its size, so without them it cannot shrink much.
* ``quantize.scheme``: ``symmetric`` (levels -q..q around an exact zero) or ``asymmetric``
  (levels 0..2**bits-1 with a per-channel integer zero point, so zero stays exact too).
* ``quantize.mode``: ``qat`` passes the weights through ``torch.fake_quantize_per_channel_affine``
  while fine-tuning (forward rounded, backward straight through: quantization-aware
  distillation); ``ptq`` fine-tunes in float and quantizes afterwards, each channel's clipping
  range calibrated to the smallest rounding error. A provider's mode (``nni.qat``, ``nni.lsq``:
  :mod:`autocompress.techniques.providers`) is a trainer: this technique only sets each layer's
  format (symmetric) and registers the trainer on the context, which fine-tunes through it.

Pruned zeros stay exactly zero in both schemes. Each layer keeps its format in ``weight_bits``
and ``weight_scheme`` for the stored-size measurement and the runtime.

Tied weights (a language model's output layer sharing the token-embedding matrix) get one
quantizer and one format for the shared tensor, the widest any of its layers asks for (a table
left float keeps its tied head float; ``last_layer_8bit`` on the head keeps the table at 8 bits),
so both stay equal; the later layer is marked ``weight_tied_to`` (the earlier weight's name) so
the stored size counts the tensor once even after baking gives each layer its own copy. A
provider's trainer wraps weight layers only: with one, tables stay float.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from autocompress.packing import BITS_ATTRIBUTE, SCHEME_ATTRIBUTE, TIED_ATTRIBUTE, qmax
from autocompress.params import Param, Settings
from autocompress.plan import Plan
from autocompress.techniques import providers
from autocompress.techniques.common import WEIGHT_LAYERS, Context, weight_layers

BIT_WIDTHS = (2, 3, 4, 5, 6, 8, 16, 32)
PTQ_CLIPS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5)

PARAMETERS = (
    Param("bits", "choice", 32, "weight bit width (32 = float, off)", values=BIT_WIDTHS,
          per_layer=True),
    Param("scheme", "choice", "symmetric", "integer grid around zero, or with a zero point",
          values=("symmetric", "asymmetric")),
    Param("mode", "choice", "qat",
          "quantize while fine-tuning (qat), after it (ptq), or through a provider's trainer "
          "(nni.qat, nni.lsq: NNI's QAT / LSQ)", values=("qat", "ptq")),
    Param("last_layer_8bit", "bool", False, "keep the output layer at 8 bits"),
    Param("embeddings", "bool", False,
          "quantize embedding tables (per token) and a ViT's patch embedding too (else float)"),
)
setting = Settings("quantize", PARAMETERS)
EMBEDDING_ATTRIBUTE = "embedding"  # set True on a weight layer that embeds the input
EMBEDDING_TABLES = (nn.Embedding, nn.EmbeddingBag)


def _grid(weight: torch.Tensor, bits: int, symmetric: bool, clip: torch.Tensor | float = 1.0):
    """Per-channel (scale, zero_point, qmin, qmax) of the quantization grid."""
    rows = weight.detach().flatten(1)
    if symmetric:
        top = qmax(bits)
        peak = rows.abs().amax(dim=1) * clip
        scale = torch.where(peak > 0, peak / top, torch.ones_like(peak))
        return scale.float(), torch.zeros(len(rows), dtype=torch.int32), -top, top
    levels = 2**bits - 1
    low = torch.clamp(rows.amin(dim=1) * clip, max=0.0)
    high = torch.clamp(rows.amax(dim=1) * clip, min=0.0)
    span = high - low
    scale = torch.where(span > 0, span / levels, torch.ones_like(span))
    zero_point = torch.clamp(torch.round(-low / scale), 0, levels).to(torch.int32)
    return scale.float(), zero_point, 0, levels


def fake_quantize(weight: torch.Tensor, bits: int, symmetric: bool = True,
                  clip: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Round ``weight`` to its per-channel grid; gradients pass straight through."""
    if bits == 16:
        return weight.to(torch.float16).to(weight.dtype)
    scale, zero_point, low, high = _grid(weight, bits, symmetric, clip)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero_point, 0, low, high)


class FakeQuantize(nn.Module):
    """Parametrization applying :func:`fake_quantize`; off until ``enabled`` (for PTQ)."""

    def __init__(self, bits: int, symmetric: bool = True, enabled: bool = True) -> None:
        super().__init__()
        self.bits, self.symmetric, self.enabled = bits, symmetric, enabled
        self.register_buffer("clip", torch.tensor(1.0))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return weight
        clip = self.clip if self.clip.dim() == 0 else self.clip.to(weight.dtype)
        return fake_quantize(weight, self.bits, self.symmetric, clip)

    def calibrate(self, weight: torch.Tensor) -> None:
        """Per channel, the clipping ratio with the smallest squared rounding error."""
        if self.bits >= 16:
            return
        rows = weight.detach().flatten(1)
        errors = torch.stack([
            ((fake_quantize(weight.detach(), self.bits, self.symmetric, c).flatten(1) - rows) ** 2
             ).sum(dim=1)
            for c in PTQ_CLIPS
        ])
        self.clip = torch.tensor(PTQ_CLIPS)[errors.argmin(dim=0)]


def layer_bits(plan: Plan, name: str, is_last: bool) -> int:
    bits = int(setting(plan, "quantize.bits", layer=name))
    if is_last and setting(plan, "quantize.last_layer_8bit"):
        bits = 8
    return bits


def _quantizer(module: nn.Module) -> FakeQuantize | None:
    if parametrize.is_parametrized(module, "weight"):
        for p in module.parametrizations.weight:
            if isinstance(p, FakeQuantize):
                return p
    return None


def quantizable(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Weight layers and embedding tables, in definition order."""
    kinds = (*WEIGHT_LAYERS, *EMBEDDING_TABLES)
    return [(name, m) for name, m in model.named_modules() if isinstance(m, kinds)]


def tied_groups(layers: list[tuple[str, nn.Module]]) -> list[list[tuple[str, nn.Module]]]:
    """``layers`` grouped by the weight they hold: a group of two or more is a tie."""
    groups: dict[int, list[tuple[str, nn.Module]]] = {}
    for name, module in layers:
        weight = module._parameters.get("weight")  # None once parametrized (masked): its own
        groups.setdefault(id(weight) if weight is not None else id(module), []).append(
            (name, module))
    return list(groups.values())


def _bits(plan: Plan, name: str, module: nn.Module, *, is_last: bool, by_trainer: bool) -> int:
    table = isinstance(module, EMBEDDING_TABLES)
    if table and by_trainer:
        return 32
    if (table or getattr(module, EMBEDDING_ATTRIBUTE, False)) and not setting(
            plan, "quantize.embeddings"):
        return 32
    return layer_bits(plan, name, is_last)


def _key(name: str) -> str:
    return f"{name}.weight" if name else "weight"


def apply(model: nn.Module, plan: Plan, ctx: Context) -> nn.Module:
    mode = setting(plan, "quantize.mode")
    by_trainer = providers.provides("quantize.mode", mode)  # it wraps the layers while training
    if by_trainer:
        ctx.use_trainer(providers.implementation("quantize.mode", mode))
    symmetric = by_trainer or setting(plan, "quantize.scheme") == "symmetric"
    scheme = "symmetric" if symmetric else "asymmetric"
    post_training = mode == "ptq"
    layers = weight_layers(model)
    last = layers[-1][1] if layers else None
    quantized = False
    for group in tied_groups(quantizable(model)):
        bits = max(_bits(plan, name, module, is_last=module is last, by_trainer=by_trainer)
                   for name, module in group)
        if bits >= 32:
            continue
        quantizer = None if by_trainer else FakeQuantize(bits, symmetric,
                                                         enabled=not post_training)
        for name, module in group:
            if quantizer is not None:  # else only the format: the trainer quantizes
                parametrize.register_parametrization(module, "weight", quantizer)
            setattr(module, BITS_ATTRIBUTE, bits)
            setattr(module, SCHEME_ATTRIBUTE, scheme)
            if name != group[0][0]:
                setattr(module, TIED_ATTRIBUTE, _key(group[0][0]))
        quantized = quantized or quantizer is not None
    if post_training and quantized:
        ctx.add_after_training(quantize_after_training)
    return model


def quantize_after_training(model: nn.Module) -> None:
    """PTQ: calibrate each layer's clipping on its trained float weight, then quantize it."""
    for _, module in quantizable(model):
        quantizer = _quantizer(module)
        if quantizer is not None and not quantizer.enabled:  # a tie's quantizer: only once
            quantizer.calibrate(module.weight)  # the float weight, masks applied
            quantizer.enabled = True


def levels_per_channel(weight: torch.Tensor) -> int:
    """The most distinct values any output channel holds (at most 2**bits after quantization)."""
    rows = weight.detach().flatten(1)
    return max(int(torch.unique(row).numel()) for row in rows)
