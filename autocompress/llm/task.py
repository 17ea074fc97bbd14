"""The causal-LM task: a decoder language model and its text, as fixed token sequences.

Every trial reads the same four tensors of token ids, shaped ``(sequences, length)``:
``train`` (distillation), ``calibration`` (Wanda's norms, SparseGPT's and GPTQ's Hessians, the
importance of layers, heads and neurons), ``val`` (perplexity the search sees) and ``test``
(perplexity the report shows). The splits come from different documents (see
:mod:`autocompress.llm.text`), so no test text is seen before the report.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from autocompress.errors import ConfigError
from autocompress.tasks.data import Split


@dataclass
class LMTask:
    """A causal language model (a Hugging Face ``*ForCausalLM``) with its token sequences."""

    name: str
    teacher: nn.Module
    train_tokens: torch.Tensor
    calibration: torch.Tensor
    val_tokens: torch.Tensor
    test_tokens: torch.Tensor | None = None
    tokenizer: Any = None
    notes: list[str] = field(default_factory=list)
    kind = "causal_lm"
    student_factory = None

    def __post_init__(self) -> None:
        splits = {"train": self.train_tokens, "calibration": self.calibration,
                  "val": self.val_tokens, "test": self.test_tokens}
        vocabulary = int(getattr(getattr(self.teacher, "config", None), "vocab_size", 0) or 0)
        for name, tokens in splits.items():
            if tokens is None and name == "test":
                continue
            if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or \
                    tokens.dtype != torch.int64 or tokens.numel() == 0 or tokens.shape[1] < 2:
                got = (f"{tokens.dtype} of shape {tuple(tokens.shape)}"
                       if isinstance(tokens, torch.Tensor) else type(tokens).__name__)
                raise ConfigError("causal_lm task", name, got,
                                  "an int64 tensor of token ids, (sequences, length >= 2)")
            if vocabulary and (int(tokens.min()) < 0 or int(tokens.max()) >= vocabulary):
                raise ConfigError("causal_lm task", name, f"token ids up to {int(tokens.max())}",
                                  f"ids in [0, {vocabulary - 1}] (the teacher's vocabulary)")
        self.teacher.eval()

    # The study machinery reads a task's splits as (x, y) pairs: for a language model both are
    # the token ids (the labels are the same ids, one position on).
    @property
    def train(self) -> Split:
        return Split(self.train_tokens, self.train_tokens)

    @property
    def val(self) -> Split:
        return Split(self.val_tokens, self.val_tokens)

    @property
    def test(self) -> Split | None:
        return None if self.test_tokens is None else Split(self.test_tokens, self.test_tokens)

    @property
    def example_input(self) -> torch.Tensor:
        return self.val_tokens[:1]

    def check_forward(self, *, where: str = "task") -> None:
        """The teacher must return next-token logits for a token batch: one line if not."""
        try:
            with torch.inference_mode():
                logits = getattr(self.teacher(self.val_tokens[:1, :8]), "logits", None)
        except Exception as exc:
            detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            raise ConfigError(where, "teacher", f"{type(exc).__name__}: {detail}",
                              "a causal LM whose forward takes input_ids") from None
        if logits is None or logits.ndim != 3:
            raise ConfigError(where, "teacher", type(self.teacher).__name__,
                              "a Hugging Face causal LM returning .logits (batch, length, vocab)")


def is_lm(task: object) -> bool:
    return getattr(task, "kind", "") == "causal_lm"


def builtin_lm_task(config: Any, progress: Callable[[str], None]) -> LMTask:
    """SmolLM2-135M-Instruct on the Gutenberg books, as ``task: causal_lm`` describes."""
    from autocompress.llm.smollm2 import load_smollm2
    from autocompress.llm.text import load_splits

    spec = config.task
    started = time.perf_counter()
    model, tokenizer = load_smollm2()
    progress(f"teacher {spec.teacher}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
             f"parameters, loaded in {time.perf_counter() - started:.1f} s")
    splits = load_splits(tokenizer, spec.sequence_length,
                         max_sequences={"train": spec.train_sequences,
                                        "calibration": spec.calibration_sequences,
                                        "validation": spec.validation_sequences,
                                        "test": spec.test_sequences})
    progress(f"text: {splits.describe()}")
    return LMTask(f"{spec.dataset}/{spec.teacher}", model, splits.train, splits.calibration,
                  splits.validation, splits.test, tokenizer=tokenizer)
