"""Transformer encoders: keep k of the teacher's blocks, remove attention heads and FFN neurons.

* ``transformer.blocks``: how many encoder blocks the student keeps (0 = all), chosen by
  ``transformer.block_choice``: ``every_other`` (blocks 0, 2, 4, ... as DistilBERT did, spread
  evenly when more than half are kept), ``top`` (the k blocks whose removal costs the most
  calibration loss, kept in order) or ``first``. With ``transformer.migrate`` the kept blocks
  keep the teacher's weights; without, the student is re-initialised.
* ``transformer.heads``: the share of each block's attention heads kept; a head's query, key and
  value rows and its columns of the output projection go together, so attention stays correct.
* ``transformer.ffn``: the share of each block's feed-forward neurons kept (rows of the first
  linear layer, columns of the second).
* ``transformer.criterion`` ranks heads and neurons: ``magnitude`` (sum of |w| over the unit's
  weights), ``gradient`` or ``taylor`` (summed over calibration batches, as for pruning).

Any model an :class:`Encoder` recognises works: our ViT (:mod:`autocompress.tasks.vit`) and
Hugging Face BERT-style encoders (a module with ``.layer``, a ``ModuleList`` of blocks with
``.attention.self.query``), bare or inside a wrapper. The kept blocks' teacher indices go to
``ctx.map_blocks`` for block-to-block distillation (:mod:`autocompress.techniques.training`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from autocompress.errors import TrialError
from autocompress.params import Param, Settings
from autocompress.plan import Plan
from autocompress.techniques.common import Context
from autocompress.techniques.encoder import Encoder
from autocompress.techniques.importance import accumulate_gradients, criterion
from autocompress.techniques.training import task_loss

UNIT_CRITERIA = ("magnitude", "gradient", "taylor")

PARAMETERS = (
    Param("blocks", "int", 0, "encoder blocks the student keeps (0 = all)", low=0, high=64),
    Param("block_choice", "choice", "every_other", "which blocks are kept",
          values=("every_other", "top", "first")),
    Param("heads", "float", 1.0, "share of each block's attention heads kept", low=0.05,
          high=1.0),
    Param("ffn", "float", 1.0, "share of each block's feed-forward neurons kept", low=0.05,
          high=1.0),
    Param("criterion", "choice", "magnitude", "importance of heads and neurons",
          values=UNIT_CRITERIA),
    Param("migrate", "bool", True, "keep the teacher's weights in the kept blocks"),
)
setting = Settings("transformer", PARAMETERS)


def _keep_rows(layer: nn.Linear, idx: torch.Tensor) -> None:
    layer.weight = nn.Parameter(layer.weight.detach()[idx].clone())
    if layer.bias is not None:
        layer.bias = nn.Parameter(layer.bias.detach()[idx].clone())
    layer.out_features = len(idx)


def _keep_columns(layer: nn.Linear, idx: torch.Tensor) -> None:
    layer.weight = nn.Parameter(layer.weight.detach()[:, idx].clone())
    layer.in_features = len(idx)


def head_rows(heads: Sequence[int], head_dim: int) -> torch.Tensor:
    """The projection rows (or output columns) of the given heads, in order."""
    return torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in heads]).long()


def remove_heads(encoder: Encoder, block: nn.Module, keep: Sequence[int]) -> None:
    """Keep only the heads ``keep`` (sorted indices) of ``block``'s attention."""
    view = encoder.attention(block)
    rows = head_rows(sorted(keep), view.head_dim)
    for layer in (view.query, view.key, view.value):
        _keep_rows(layer, rows)
    _keep_columns(view.out, rows)
    encoder.set_heads(view, len(keep))


def remove_neurons(encoder: Encoder, block: nn.Module, keep: Sequence[int]) -> None:
    first, second = encoder.ffn(block)
    idx = torch.tensor(sorted(keep)).long()
    _keep_rows(first, idx)
    _keep_columns(second, idx)


def _scores(weight: torch.Tensor, grads: dict[int, torch.Tensor], name: str) -> torch.Tensor:
    return criterion(name).weight_scores(weight, grads.get(id(weight)))


def head_scores(encoder: Encoder, block: nn.Module, name: str,
                grads: dict[int, torch.Tensor]) -> torch.Tensor:
    view = encoder.attention(block)
    rows = sum(_scores(layer.weight, grads, name).sum(dim=1)
               for layer in (view.query, view.key, view.value))
    cols = _scores(view.out.weight, grads, name).sum(dim=0)
    return (rows + cols).reshape(view.heads, view.head_dim).sum(dim=1)


def neuron_scores(encoder: Encoder, block: nn.Module, name: str,
                  grads: dict[int, torch.Tensor]) -> torch.Tensor:
    first, second = encoder.ffn(block)
    return (_scores(first.weight, grads, name).sum(dim=1)
            + _scores(second.weight, grads, name).sum(dim=0))


def block_importance(model: nn.Module, encoder: Encoder, x: torch.Tensor,
                     y: torch.Tensor) -> list[float]:
    """Per block, how much the calibration loss rises when that block alone is skipped."""
    everything = list(range(len(encoder.blocks)))
    model.eval()
    losses = []
    with torch.no_grad():
        base = float(task_loss(model(x), y))
        for i in everything:
            blocks = encoder.blocks
            encoder.keep_blocks([j for j in everything if j != i], model)
            try:
                losses.append(float(task_loss(model(x), y)) - base)
            finally:
                encoder.keep_blocks(everything, model, source=blocks)
    return losses


def choose_blocks(n: int, k: int, how: str, importance: Sequence[float] | None = None
                  ) -> list[int]:
    """Indices of the ``k`` blocks of ``n`` kept, in order."""
    if k <= 0 or k >= n:
        return list(range(n))
    if how == "first":
        return list(range(k))
    if how == "top":
        if importance is None:
            raise ValueError("block_choice top needs block importance")
        return sorted(sorted(range(n), key=lambda i: -importance[i])[:k])
    every_other = list(range(0, n, 2))
    if k <= len(every_other):
        return every_other[:k]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def _reinitialise(model: nn.Module) -> None:
    for module in model.modules():
        if module is not model and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    if hasattr(model, "reset_parameters"):
        model.reset_parameters()


def apply(model: nn.Module, plan: Plan, ctx: Context) -> nn.Module:
    blocks_kept = int(setting(plan, "transformer.blocks"))
    heads = float(setting(plan, "transformer.heads"))
    ffn = float(setting(plan, "transformer.ffn"))
    migrate = bool(setting(plan, "transformer.migrate"))
    if blocks_kept == 0 and heads >= 1.0 and ffn >= 1.0 and migrate:
        return model
    encoder = Encoder.find(model)
    if encoder is None:
        raise TrialError("transformer.*: the model has no transformer encoder blocks this "
                         "technique recognises (our ViT, or a BERT-style .layer list)")
    if model is ctx.teacher:
        model = copy.deepcopy(model)
        encoder = Encoder.find(model)
    n = len(encoder.blocks)
    how = str(setting(plan, "transformer.block_choice"))
    importance = None
    if how == "top" and 0 < blocks_kept < n:
        calib = torch.randperm(len(ctx.train_y),
                               generator=torch.Generator().manual_seed(plan.seed))[:512]
        importance = block_importance(model, encoder, ctx.train_x[calib], ctx.train_y[calib])
    kept = choose_blocks(n, blocks_kept, how, importance)
    encoder.keep_blocks(kept, model)
    ctx.map_blocks(kept)
    name = str(setting(plan, "transformer.criterion"))
    grads: dict[int, torch.Tensor] = {}
    if criterion(name).needs_gradients and (heads < 1.0 or ffn < 1.0):
        by_name = accumulate_gradients(model, ctx.train_x, ctx.train_y, seed=plan.seed)
        modules = dict(model.named_modules())
        grads = {id(modules[k].weight): g for k, g in by_name.items()}
    for block in encoder.blocks:
        view = encoder.attention(block)
        if heads < 1.0:
            keep = max(1, round(heads * view.heads))
            order = torch.argsort(head_scores(encoder, block, name, grads), descending=True,
                                  stable=True)
            remove_heads(encoder, block, order[:keep].tolist())
        if ffn < 1.0:
            width = encoder.ffn(block)[0].out_features
            keep = max(1, round(ffn * width))
            order = torch.argsort(neuron_scores(encoder, block, name, grads), descending=True,
                                  stable=True)
            remove_neurons(encoder, block, order[:keep].tolist())
    if not migrate:
        torch.manual_seed(plan.seed)
        _reinitialise(model)
    ctx.note({"blocks_kept": float(len(kept)), "blocks_teacher": float(n)})
    return model
