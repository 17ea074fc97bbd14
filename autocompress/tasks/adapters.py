"""One tensor in, one logits tensor out: the model every technique, metric and runtime expects.

Training, the metric, the teacher's cached outputs and the ONNX export all call ``model(x)`` on
one tensor and read one tensor back. Two kinds of teacher break that: a Hugging Face model (or
any model) whose forward returns a structured output (``ModelOutput``, a dataclass, a dict, a
tuple), and a model fed several named inputs (``input_ids`` with ``attention_mask``), which
:func:`autocompress.tasks.columns.pack` stacks into one tensor ``x`` of shape ``(N, K, L)``.
:class:`TensorModel` wraps such a teacher: it splits ``x`` back into keyword arguments and
returns the logits (:func:`logits_of`). The inner model is its child ``model``, so its layers
keep their names under ``model.`` (``model.bert.encoder.layer.0...``); it is a module-level class
with no state but the inner model and the key names, so it deep-copies, pickles, traces and
exports to ONNX like the model itself.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from autocompress.outputs import logits_of


class TensorModel(nn.Module):
    """``model`` behind one tensor in and its logits tensor out.

    With ``input_keys`` (e.g. ``("input_ids", "attention_mask")``), ``x[:, i]`` is passed as the
    keyword argument ``input_keys[i]``; without, ``x`` is passed as the one positional input.
    """

    def __init__(self, model: nn.Module, *, input_keys: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.model = model
        self.input_keys = tuple(input_keys)
        self.train(model.training)  # a new module trains; keep the inner model's mode

    def raw(self, x: torch.Tensor) -> Any:
        """The inner model's own output on packed ``x``."""
        if not self.input_keys:
            return self.model(x)
        return self.model(**{key: x[:, i] for i, key in enumerate(self.input_keys)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits_of(self.raw(x))

    def extra_repr(self) -> str:
        return f"input_keys={self.input_keys}" if self.input_keys else ""


def keywords(model: nn.Module) -> frozenset[str] | None:
    """The arguments ``model.forward`` takes by name; None when it takes any (``**kwargs``,
    as Hugging Face models do) or its signature cannot be read."""
    if isinstance(model, TensorModel):
        model = model.model
    try:
        parameters = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return frozenset(p.name for p in parameters if p.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY))


_FAILED = object()


def probe(model: nn.Module, example: torch.Tensor, *, call: Any = None) -> Any:
    """``call(example)`` (default ``model(example)``) with ``model`` in eval mode (its mode is
    restored), or ``_FAILED`` when it raises (``Task.check_forward`` reports that, in context)."""
    training = model.training
    try:
        with torch.inference_mode():
            model.eval()
            return (call or model)(example)
    except Exception:
        return _FAILED
    finally:
        model.train(training)


def adapt(model: nn.Module, *, input_keys: tuple[str, ...], example: torch.Tensor
          ) -> tuple[nn.Module, torch.Tensor | None]:
    """``model`` wrapped in a :class:`TensorModel` when its inputs are packed or its output is
    not a tensor, else itself; and its logits on ``example`` (None when the forward fails).

    Raises :class:`NoLogits` when the output holds no logits.
    """
    if isinstance(model, TensorModel) and model.input_keys == input_keys:
        output = probe(model, example)
        return model, None if output is _FAILED else output
    wrapped = TensorModel(model, input_keys=input_keys)
    output = probe(wrapped, example, call=wrapped.raw)
    if output is _FAILED:
        return (wrapped if input_keys else model), None
    if isinstance(output, torch.Tensor) and not input_keys:
        return model, output
    return wrapped, logits_of(output)

