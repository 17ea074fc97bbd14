"""Where a transformer keeps its blocks, attention heads and feed-forward layers.

:class:`Encoder` recognises our ViT (:mod:`autocompress.tasks.vit`) and Hugging Face BERT-style
encoders (a module with ``.layer``, a ``ModuleList`` of blocks with ``.attention.self.query``),
bare or inside a wrapper. It is a view, not a technique: the transformer technique cuts through
it, pruning refuses to split heads with it, and distillation matches blocks with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class AttentionView:
    """One block's attention: its projections, head count and where that count lives."""

    module: nn.Module
    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    out: nn.Linear
    heads: int
    head_dim: int


class Encoder:
    """Where a transformer keeps its blocks, heads and feed-forward layers."""

    def __init__(self, holder: nn.Module, kind: str) -> None:
        self.holder, self.kind = holder, kind

    @classmethod
    def find(cls, model: nn.Module) -> Encoder | None:
        for module in model.modules():
            blocks = getattr(module, "blocks", None)
            if (isinstance(blocks, nn.ModuleList) and len(blocks)
                    and hasattr(getattr(blocks[0], "attn", None), "query")):
                return cls(module, "ours")
            layers = getattr(module, "layer", None)
            if (isinstance(layers, nn.ModuleList) and len(layers)
                    and hasattr(getattr(layers[0], "attention", None), "self")):
                return cls(module, "bert")
        return None

    @property
    def blocks(self) -> nn.ModuleList:
        return self.holder.blocks if self.kind == "ours" else self.holder.layer

    def keep_blocks(self, indices: Sequence[int], model: nn.Module, *,
                    source: nn.ModuleList | None = None) -> None:
        """Keep the blocks ``indices`` of ``source`` (the current blocks by default)."""
        source = self.blocks if source is None else source
        kept = nn.ModuleList(source[i] for i in indices)
        if self.kind == "ours":
            self.holder.blocks = kept
            return
        self.holder.layer = kept
        config = getattr(model, "config", None) or getattr(self.holder, "config", None)
        if config is not None:
            config.num_hidden_layers = len(kept)

    def attention(self, block: nn.Module) -> AttentionView:
        if self.kind == "ours":
            a = block.attn
            return AttentionView(a, a.query, a.key, a.value, a.out, a.heads, a.head_dim)
        s = block.attention.self
        return AttentionView(s, s.query, s.key, s.value, block.attention.output.dense,
                             s.num_attention_heads, s.attention_head_size)

    def set_heads(self, view: AttentionView, heads: int) -> None:
        if self.kind == "ours":
            view.module.heads = heads
        else:
            view.module.num_attention_heads = heads
            view.module.all_head_size = heads * view.head_dim

    def keep_attention_maps(self, block: nn.Module, store: dict[int, torch.Tensor | None],
                            index: int):
        """A hook keeping ``block``'s attention probabilities (batch, heads, n, n) in
        ``store[index]`` after each forward (None from a BERT without eager attention)."""
        if self.kind == "ours":
            block.attn.keep_probs = True
            return block.attn.register_forward_hook(
                lambda module, _i, _o: store.__setitem__(index, module.probs))
        return block.attention.self.register_forward_hook(
            lambda _m, _i, output: store.__setitem__(index, output[1]))

    def forget_attention_maps(self) -> None:
        if self.kind == "ours":
            for block in self.blocks:
                block.attn.keep_probs, block.attn.probs = False, None

    def ffn(self, block: nn.Module) -> tuple[nn.Linear, nn.Linear]:
        if self.kind == "ours":
            return block.ffn[0], block.ffn[2]
        return block.intermediate.dense, block.output.dense
