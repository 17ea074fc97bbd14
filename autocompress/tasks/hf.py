"""Hugging Face ``transformers`` encoders through the Python API.

A ``BertModel``-style encoder returns hidden states, not class scores; :class:`EncoderClassifier`
puts a linear head on its first token so the search can score, distil and time it like any
classifier. Its input is one LongTensor of token ids (padding id masked out), so a tokenised
dataset is just ``(ids, labels)`` tensors. Nothing here imports ``transformers``: the encoder is
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
