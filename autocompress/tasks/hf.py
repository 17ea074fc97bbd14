"""Hugging Face ``transformers`` encoders through the Python API.

A ``BertModel``-style encoder returns hidden states, not class scores; :class:`EncoderClassifier`
puts a linear head on its first token so the search can score, distil and time it like any
classifier. :class:`EncoderEmbedder` returns sentence embeddings instead: give the teacher's
embeddings as the targets (``y``) and :func:`embedding_similarity` as the metric, and the student
is trained and scored on how close its embeddings stay to the teacher's. The input of both is
one LongTensor of token ids (padding id masked out), so a tokenised dataset is just
``(ids, labels)`` tensors. Nothing here imports ``transformers``: the encoder is
the user's object (``autocompress[transformers]`` installs the library).
"""

from __future__ import annotations

import torch
from torch import nn


class EncoderClassifier(nn.Module):
    """``encoder`` (e.g. ``transformers.BertModel``) with a linear classifier on token 0.

    >>> from transformers import BertConfig, BertModel          # doctest: +SKIP
    >>> bert = BertModel(BertConfig(hidden_size=64, num_hidden_layers=4,
    ...                             num_attention_heads=4, intermediate_size=128))
    >>> model = EncoderClassifier(bert, num_classes=2)           # doctest: +SKIP
    >>> model(torch.randint(1, 100, (8, 16))).shape              # doctest: +SKIP
    torch.Size([8, 2])
    """

    def __init__(self, encoder: nn.Module, num_classes: int, *, pad_id: int = 0) -> None:
        super().__init__()
        self.encoder = encoder
        self.pad_id = pad_id
        self.classifier = nn.Linear(encoder.config.hidden_size, num_classes)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = (input_ids != self.pad_id).long()
        hidden = self.encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
        return self.classifier(hidden[:, 0])


class EncoderEmbedder(nn.Module):
    """``encoder``'s sentence embedding: the mean of its last hidden states over real tokens
    (``pooling="mean"``) or the first token's (``"cls"``)."""

    def __init__(self, encoder: nn.Module, *, pooling: str = "mean", pad_id: int = 0) -> None:
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling: got {pooling!r}, expected 'mean' or 'cls'")
        self.encoder, self.pooling, self.pad_id = encoder, pooling, pad_id

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = (input_ids != self.pad_id).long()
        hidden = self.encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def teacher_embeddings(teacher: nn.Module, ids: torch.Tensor, *, batch_size: int = 256
                       ) -> torch.Tensor:
    """The targets of an embedding task: the teacher's embeddings of ``ids``."""
    teacher.eval()
    with torch.no_grad():
        return torch.cat([teacher(ids[i : i + batch_size]) for i in range(0, len(ids),
                                                                         batch_size)])


def embedding_similarity(model: nn.Module, split, *, batch_size: int = 256) -> float:
    """Mean cosine similarity between ``model``'s embeddings of ``split.x`` and ``split.y`` (the
    teacher's); 1.0 is a perfect copy. Maximised, like accuracy."""
    model.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(split.x), batch_size):
            mine = model(split.x[i : i + batch_size])
            total += float(torch.nn.functional.cosine_similarity(
                mine, split.y[i : i + batch_size], dim=-1).sum())
    return total / max(1, len(split.x))
