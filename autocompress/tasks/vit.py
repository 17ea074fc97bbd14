"""A small vision transformer we define and train ourselves: the built-in transformer teacher.

Patch embedding (a linear layer over flattened patches), a class token and learned positions, a
stack of pre-norm encoder blocks (multi-head self-attention with separate query / key / value
projections, then a GELU feed-forward layer, each with a residual), a final layer norm and a
linear classifier on the class token. Every projection is an ``nn.Linear``, so pruning and
quantization see them as weight layers, and head and neuron removal is plain row / column
selection (:mod:`autocompress.techniques.transformer`).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class Attention(nn.Module):
    """Multi-head self-attention; ``keep_probs`` keeps the last attention maps (for KD)."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.query = nn.Linear(dim, heads * head_dim)
        self.key = nn.Linear(dim, heads * head_dim)
        self.value = nn.Linear(dim, heads * head_dim)
        self.out = nn.Linear(heads * head_dim, dim)
        self.keep_probs = False
        self.probs: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(batch, tokens, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        probs = (q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)).softmax(dim=-1)
        if self.keep_probs:
            self.probs = probs
        mixed = (probs @ v).transpose(1, 2).reshape(batch, tokens, self.heads * self.head_dim)
        return self.out(mixed)


class Block(nn.Module):
    """Pre-norm encoder block: x + attn(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, dim: int, heads: int, head_dim: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, head_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class ViT(nn.Module):
    """A vision transformer for small images: ``patch`` x ``patch`` patches, class-token head."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, *, patch: int | None = None,
                 dim: int = 64, depth: int = 8, heads: int = 4, hidden: int = 128) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.patch = patch or (7 if height % 7 == 0 and height >= 14 else 2)
        if height % self.patch or width % self.patch:
            raise ValueError(f"image {height}x{width} does not split into {self.patch}-pixel "
                             "patches")
        tokens = (height // self.patch) * (width // self.patch)
        self.embed = nn.Linear(channels * self.patch * self.patch, dim)
        self.embed.embedding = True  # stays float unless the space quantizes embeddings
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, dim // heads, hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def reset_parameters(self) -> None:
        """The class token and positions afresh (the layers reset themselves)."""
        nn.init.zeros_(self.cls)
        nn.init.normal_(self.pos, std=0.02)

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        p = self.patch
        grid = x.reshape(batch, channels, height // p, p, width // p, p)
        return grid.permute(0, 2, 4, 1, 3, 5).reshape(batch, -1, channels * p * p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(self.patches(x))
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1) + self.pos
        for block in self.blocks:
            tokens = block(tokens)
        return self.head(self.norm(tokens[:, 0]))


def vit_tiny(input_shape: tuple[int, ...], num_classes: int) -> ViT:
    """8 blocks of width 64 (4 heads of 16, feed-forward 128): 0.27 M parameters."""
    return ViT(input_shape, num_classes)
