"""Depth and width reduction of a Hugging Face decoder (``LlamaForCausalLM`` and its kin).

Depth: score each decoder layer, then delete the least useful ones.

* :func:`block_influence` is ShortGPT's Block Influence (Men et al. 2024, "ShortGPT: Layers in
  Large Language Models are More Redundant Than You Expect"): 1 - the mean cosine similarity of
  a layer's input and output hidden states; one forward pass per batch.
* :func:`ablation_importance` is the perplexity increase when a layer alone is skipped; exact
  but it costs one pass over the tokens per layer (30 passes for SmolLM2-135M).

Width, after Minitron (Muralidharan et al. 2024, "Compact Language Models via Pruning and
Knowledge Distillation"): activation-based importance on calibration tokens, then slicing.
Every layer keeps the same number of heads / neurons, so the config describes the new shapes
and ``save_pretrained`` + ``from_pretrained`` reload the pruned model as is. ``head_dim`` and
``hidden_size`` never change (the residual stream, the RoPE tables and the embeddings stay).

Grouped-query attention: query head ``h`` reads KV head ``h // group`` (``repeat_kv``), so
:func:`prune_heads` has two rules. ``mode="query_heads"`` (default) keeps every KV head and the
same number of query heads in each group: the KV cache keeps its size, the least damage.
``mode="kv_groups"`` drops whole groups (a KV head and its query heads), which shrinks the KV
cache too. Keep counts are ``ratio * total`` rounded half up, at least 1 (per group for
``query_heads``, of the KV groups for ``kv_groups``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from autocompress.errors import ConfigError
from autocompress.llm.measure import perplexity

HOW = ("influence", "ablation", "last", "every_other")
HEAD_MODES = ("query_heads", "kv_groups")


def _decoder(model: nn.Module) -> nn.Module:
    """The module holding ``layers`` (``model.model`` of a ``...ForCausalLM``)."""
    for candidate in (getattr(model, "model", None), model):
        if isinstance(getattr(candidate, "layers", None), nn.ModuleList):
            return candidate
    raise ConfigError("llm.structure", "model", type(model).__name__,
                      "a Hugging Face decoder with model.layers (e.g. LlamaForCausalLM)")


def _layers(model: nn.Module) -> nn.ModuleList:
    return _decoder(model).layers


def _configs(model: nn.Module) -> list[Any]:
    """Every distinct config object the model's modules hold (usually one, shared)."""
    found = {id(c): c for m in model.modules() if (c := getattr(m, "config", None)) is not None}
    return list(found.values())


def _batches(model: nn.Module, tokens: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    if tokens.dim() != 2 or tokens.numel() == 0:
        raise ConfigError("llm.structure", "tokens", tuple(tokens.shape), "a (N, L) tensor")
    device = next(model.parameters()).device
    for start in range(0, tokens.shape[0], batch_size):
        yield tokens[start:start + batch_size].to(device=device, dtype=torch.long)


def _count(ratio: float, total: int, where: str) -> int:
    """``ratio * total`` rounded half up, between 1 and ``total``."""
    if not 0.0 < ratio <= 1.0:
        raise ConfigError(where, "keep_ratio", ratio, "a number in (0, 1]")
    return max(1, min(total, math.floor(ratio * total + 0.5)))


# ----------------------------------------------------------------------------- depth
@torch.no_grad()
def block_influence(model: nn.Module, tokens: torch.Tensor, *, batch_size: int = 8) -> list[float]:
    """ShortGPT Block Influence per decoder layer: ``1 - mean_t cos(x_in[t], x_out[t])`` over
    every token position; low = the layer barely changes its input = removable."""
    layers = _layers(model)
    sums = [0.0] * len(layers)
    counts = [0] * len(layers)

    def hook(index: int):
        def record(_module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            inp = (args[0] if args else kwargs["hidden_states"]).float()
            outp = (out if isinstance(out, torch.Tensor) else out[0]).float()
            cos = F.cosine_similarity(inp, outp, dim=-1)
            sums[index] += float(cos.sum())
            counts[index] += cos.numel()
        return record

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True)
               for i, layer in enumerate(layers)]
    try:
        for batch in _batches(model, tokens, batch_size):
            model(input_ids=batch, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return [1.0 - s / max(c, 1) for s, c in zip(sums, counts, strict=True)]


class _Skip(nn.Module):
    """Stands in for a decoder layer: returns the hidden states it was given."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states


@torch.no_grad()
def ablation_importance(model: nn.Module, tokens: torch.Tensor, *,
                        batch_size: int = 8) -> list[float]:
    """Perplexity increase when each single layer is skipped (its input passed on unchanged).

    Cost: one full pass over ``tokens`` per layer, plus one for the baseline: (layers + 1)
    times :func:`block_influence`'s. Keep the calibration set small (a few thousand tokens).
    """
    layers = _layers(model)
    base = perplexity(model, tokens, batch_size=batch_size)
    scores = []
    for index in range(len(layers)):
        layer = layers[index]
        layers[index] = _Skip()
        try:
            scores.append(perplexity(model, tokens, batch_size=batch_size) - base)
        finally:
            layers[index] = layer
    return scores


def choose_layers(scores: Sequence[float], count: int, how: str = "influence") -> list[int]:
    """The ``count`` layers to drop, ascending.

    Rules: ``influence`` / ``ablation``: the lowest scores (ties: the deeper layer first).
    ``last``: the deepest ``count`` layers (only ``len(scores)`` is used). ``every_other``: odd
    layers (1, 3, 5, ...), the deepest first, at most ``len(scores) // 2``. ``last`` and
    ``every_other`` never drop layer 0; no rule drops every layer.
    """
    n = len(scores)
    if how not in HOW:
        raise ConfigError("choose_layers", "how", how, f"one of {', '.join(HOW)}")
    most = n // 2 if how == "every_other" else n - 1
    if not 0 <= count <= most:
        raise ConfigError("choose_layers", "count", count,
                          f"an integer in [0, {most}] for {n} layers and how={how!r}")
    if how in ("influence", "ablation"):
        order = sorted(range(n), key=lambda i: (float(scores[i]), -i))
        chosen = order[:count]
    elif how == "last":
        chosen = list(range(n - count, n))
    else:
        chosen = sorted(range(1, n, 2), reverse=True)[:count]
    return sorted(chosen)


def drop_layers(model: nn.Module, indices: Sequence[int]) -> nn.Module:
    """Delete decoder layers in place; renumber the rest's ``layer_idx`` (the KV cache slot) and
    update ``num_hidden_layers`` and per-layer lists (``layer_types``) so caching still works."""
    layers = _layers(model)
    n = len(layers)
    drop = sorted(set(int(i) for i in indices))
    if len(drop) != len(indices) or any(not 0 <= i < n for i in drop) or len(drop) >= n:
        raise ConfigError("drop_layers", "indices", list(indices),
                          f"distinct layer indices in [0, {n}), leaving at least one layer")
    keep = [layer for i, layer in enumerate(layers) if i not in drop]
    _decoder(model).layers = nn.ModuleList(keep)
    for new_index, layer in enumerate(keep):
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_index
    for config in _configs(model):
        if getattr(config, "num_hidden_layers", None) == n:
            config.num_hidden_layers = len(keep)
        for name in ("layer_types", "mlp_layer_types"):
            types = getattr(config, name, None)
            if isinstance(types, list) and len(types) == n:
                setattr(config, name, [t for i, t in enumerate(types) if i not in drop])
    return model


# ----------------------------------------------------------------------------- width
@torch.no_grad()
def _mean_input(model: nn.Module, tokens: torch.Tensor, batch_size: int,
                target: Callable[[nn.Module], nn.Module],
                per_token: Callable[[nn.Module, torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
    """Per layer, the mean over token positions of ``per_token(layer, x)`` (a ``(tokens, k)``
    tensor), ``x`` being the input of the module ``target(layer)``."""
    layers = _layers(model)
    sums: list[Any] = [0.0] * len(layers)
    counts = [0] * len(layers)

    def hook(index: int, layer: nn.Module):
        def record(_module: nn.Module, args: tuple) -> None:
            values = per_token(layer, args[0].float().reshape(-1, args[0].shape[-1]))
            sums[index] = sums[index] + values.sum(0).cpu()
            counts[index] += values.shape[0]
        return record

    handles = [target(layer).register_forward_pre_hook(hook(i, layer))
               for i, layer in enumerate(layers)]
    try:
        for batch in _batches(model, tokens, batch_size):
            model(input_ids=batch, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return [s / c for s, c in zip(sums, counts, strict=True)]


def head_importance(model: nn.Module, tokens: torch.Tensor, *,
                    batch_size: int = 8) -> list[torch.Tensor]:
    """Per layer, a ``(num_heads,)`` tensor: the mean over tokens of the L2 norm of each head's
    attention output (the ``o_proj`` input split by head), Minitron's head importance."""
    return _mean_input(
        model, tokens, batch_size, lambda layer: layer.self_attn.o_proj,
        lambda layer, x: x.reshape(x.shape[0], -1, layer.self_attn.head_dim).norm(dim=-1))


def neuron_importance(model: nn.Module, tokens: torch.Tensor, *,
                      batch_size: int = 8) -> list[torch.Tensor]:
    """Per layer, an ``(intermediate_size,)`` tensor: mean |act(gate(x)) * up(x)| over tokens
    (the ``down_proj`` input), Minitron's neuron importance."""
    return _mean_input(model, tokens, batch_size, lambda layer: layer.mlp.down_proj,
                       lambda _layer, x: x.abs())


def _top(scores: Sequence[float], k: int) -> list[int]:
    """Indices of the ``k`` largest scores (ties: the lower index), ascending."""
    return sorted(sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))[:k])


def heads_to_keep(importance: Sequence[torch.Tensor], keep_ratio: float, num_kv_heads: int,
                  mode: str = "query_heads") -> list[list[int]]:
    """Per layer, the query heads to keep (ascending), by the rules in the module docstring."""
    if mode not in HEAD_MODES:
        raise ConfigError("prune_heads", "mode", mode, f"one of {', '.join(HEAD_MODES)}")
    kept = []
    for scores in importance:
        scores = [float(s) for s in scores]
        group = len(scores) // num_kv_heads
        members = [list(range(j * group, (j + 1) * group)) for j in range(num_kv_heads)]
        if mode == "query_heads":
            per = _count(keep_ratio, group, "prune_heads")
            layer = [m[i] for m in members for i in _top([scores[h] for h in m], per)]
        else:
            groups = _count(keep_ratio, num_kv_heads, "prune_heads")
            chosen = _top([sum(scores[h] for h in m) for m in members], groups)
            layer = [h for j in chosen for h in members[j]]
        kept.append(sorted(layer))
    return kept


def neurons_to_keep(importance: Sequence[torch.Tensor], keep_ratio: float) -> list[list[int]]:
    """Per layer, the MLP neurons to keep (ascending): the most important ``ratio`` of them."""
    return [_top(s.tolist(), _count(keep_ratio, len(s), "prune_neurons")) for s in importance]


@torch.no_grad()
def _sliced(old: nn.Linear, rows: torch.Tensor | None = None,
            cols: torch.Tensor | None = None) -> nn.Linear:
    """A new ``nn.Linear`` holding ``old``'s weight restricted to ``rows`` (outputs) and
    ``cols`` (inputs); the bias follows the rows."""
    weight = old.weight if rows is None else old.weight[rows.to(old.weight.device)]
    weight = weight if cols is None else weight[:, cols.to(old.weight.device)]
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=old.bias is not None,
                    device=weight.device, dtype=weight.dtype)
    new.weight.copy_(weight)
    if old.bias is not None:
        new.bias.copy_(old.bias if rows is None else old.bias[rows.to(old.bias.device)])
    new.weight.requires_grad_(old.weight.requires_grad)
    return new


def _units(indices: Sequence[int], size: int) -> torch.Tensor:
    """Row indices of whole units (heads) of ``size`` rows."""
    return torch.tensor([u * size + r for u in indices for r in range(size)], dtype=torch.long)


def slice_heads(model: nn.Module, keep: Sequence[Sequence[int]]) -> nn.Module:
    """Keep only the query heads ``keep[layer]`` (in place), and the KV heads they read.

    Every kept KV group must keep the same number of query heads, and every layer the same
    counts (so one config describes them). Slices ``q_proj``/``k_proj``/``v_proj`` rows and
    ``o_proj`` columns, sets ``num_key_value_groups`` on each attention module and
    ``num_attention_heads`` / ``num_key_value_heads`` / ``head_dim`` in the config.
    """
    layers = _layers(model)
    if len(keep) != len(layers):
        raise ConfigError("slice_heads", "keep", len(keep), f"one list per layer ({len(layers)})")
    shapes = set()
    plans = []
    for attn, heads in zip((layer.self_attn for layer in layers), keep, strict=True):
        group, head_dim = attn.num_key_value_groups, attn.head_dim
        total = attn.q_proj.out_features // head_dim
        heads = sorted(set(int(h) for h in heads))
        if not heads or heads[0] < 0 or heads[-1] >= total:
            raise ConfigError("slice_heads", "keep", list(heads), f"head indices in [0, {total})")
        kv = sorted({h // group for h in heads})
        per = {j: sum(1 for h in heads if h // group == j) for j in kv}
        if len(set(per.values())) != 1:
            raise ConfigError("slice_heads", "keep", heads,
                              "the same number of query heads in every kept KV group")
        shapes.add((len(kv), per[kv[0]]))
        plans.append((attn, heads, kv, head_dim))
    if len(shapes) != 1:
        raise ConfigError("slice_heads", "keep", sorted(shapes),
                          "the same (KV heads, query heads per group) in every layer")
    (num_kv, per_group), = shapes
    for attn, heads, kv, head_dim in plans:
        q_rows, kv_rows = _units(heads, head_dim), _units(kv, head_dim)
        attn.q_proj = _sliced(attn.q_proj, rows=q_rows)
        attn.k_proj = _sliced(attn.k_proj, rows=kv_rows)
        attn.v_proj = _sliced(attn.v_proj, rows=kv_rows)
        attn.o_proj = _sliced(attn.o_proj, cols=q_rows)
        attn.num_key_value_groups = per_group
        for name in ("num_heads", "num_attention_heads"):  # older / other attention classes
            if isinstance(getattr(attn, name, None), int):
                setattr(attn, name, num_kv * per_group)
        if isinstance(getattr(attn, "num_key_value_heads", None), int):
            attn.num_key_value_heads = num_kv
    head_dim = plans[0][3]
    for config in _configs(model):
        if hasattr(config, "num_attention_heads"):
            config.num_attention_heads = num_kv * per_group
            config.num_key_value_heads = num_kv
            config.head_dim = head_dim  # explicit: hidden_size // heads no longer holds
    return model


def slice_neurons(model: nn.Module, keep: Sequence[Sequence[int]]) -> nn.Module:
    """Keep only the MLP neurons ``keep[layer]`` (in place; the same count in every layer):
    ``gate_proj`` / ``up_proj`` rows, ``down_proj`` columns, ``config.intermediate_size``."""
    layers = _layers(model)
    if len(keep) != len(layers) or len({len(set(k)) for k in keep}) != 1:
        raise ConfigError("slice_neurons", "keep", [len(k) for k in keep],
                          f"one list per layer ({len(layers)}), all of the same length")
    for layer, neurons in zip(layers, keep, strict=True):
        mlp = layer.mlp
        total = mlp.down_proj.in_features
        index = torch.tensor(sorted(set(int(i) for i in neurons)), dtype=torch.long)
        if index.numel() == 0 or index[0] < 0 or index[-1] >= total:
            raise ConfigError("slice_neurons", "keep", list(neurons), f"indices in [0, {total})")
        mlp.gate_proj = _sliced(mlp.gate_proj, rows=index)
        mlp.up_proj = _sliced(mlp.up_proj, rows=index)
        mlp.down_proj = _sliced(mlp.down_proj, cols=index)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = index.numel()
    width = len(set(keep[0]))
    for config in _configs(model):
        if hasattr(config, "intermediate_size"):
            config.intermediate_size = width
    return model


def prune_heads(model: nn.Module, keep_ratio: float, tokens: torch.Tensor | None = None, *,
                importance: Sequence[torch.Tensor] | None = None, mode: str = "query_heads",
                batch_size: int = 8) -> nn.Module:
    """Drop the least important attention heads in place (Minitron): :func:`head_importance`
    on calibration ``tokens`` (or a given ``importance``), :func:`heads_to_keep`,
    :func:`slice_heads`. ``mode``: see the module docstring."""
    if importance is None:
        if tokens is None:
            raise ConfigError("prune_heads", "tokens", None, "calibration tokens or importance")
        importance = head_importance(model, tokens, batch_size=batch_size)
    attn = _layers(model)[0].self_attn
    num_kv = attn.q_proj.out_features // attn.head_dim // attn.num_key_value_groups
    return slice_heads(model, heads_to_keep(importance, keep_ratio, num_kv, mode))


def prune_neurons(model: nn.Module, keep_ratio: float, tokens: torch.Tensor | None = None, *,
                  importance: Sequence[torch.Tensor] | None = None,
                  batch_size: int = 8) -> nn.Module:
    """Drop the least important MLP neurons in place (Minitron): :func:`neuron_importance` on
    calibration ``tokens`` (or a given ``importance``), :func:`neurons_to_keep`,
    :func:`slice_neurons`."""
    if importance is None:
        if tokens is None:
            raise ConfigError("prune_neurons", "tokens", None, "calibration tokens or importance")
        importance = neuron_importance(model, tokens, batch_size=batch_size)
    return slice_neurons(model, neurons_to_keep(importance, keep_ratio))
