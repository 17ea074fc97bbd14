"""Per-layer input statistics from calibration token sequences, gathered block by block.

Calibration-based compression (Wanda, SparseGPT, GPTQ) needs, for every ``nn.Linear``, the
statistics of the inputs it sees on real text: the squared norm of each input feature (Wanda)
or the full ``X^T X`` (the Hessian of the layer-wise reconstruction loss, SparseGPT and GPTQ).

:func:`sequential` gathers them the way SparseGPT and GPTQ do: one decoder block at a time, on
the outputs of the blocks before it *after* those were compressed, so that each block is fitted
to the inputs it will see in the compressed model and only one block's activations are alive.
:func:`linear_inputs` gathers them in one dense forward pass, for one-shot use and for tests.

Statistics are accumulated in float64: sums over hundreds of thousands of tokens in float32
lose the small features Wanda ranks by, and a float32 ``X^T X`` is often not positive definite.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from autocompress.errors import ConfigError

# Where Hugging Face decoders keep their repeated blocks, tried in order.
_LAYER_PATHS = ("model.layers", "transformer.h", "model.decoder.layers", "gpt_neox.layers",
                "layers")


@dataclass
class InputStats:
    """What one ``nn.Linear`` saw: enough for Wanda (``sq_sum``), SparseGPT and GPTQ
    (``hessian``)."""

    count: int                    # number of input rows (tokens) seen
    sq_sum: torch.Tensor          # (in_features,) float64: sum over tokens of x_j**2
    hessian: torch.Tensor | None  # (in_features, in_features) float64: sum of x x^T, when asked

    @classmethod
    def empty(cls, in_features: int, *, hessian: bool, device: torch.device) -> InputStats:
        """Zero statistics, to be filled by :meth:`add`."""
        square = (torch.zeros(in_features, in_features, dtype=torch.float64, device=device)
                  if hessian else None)
        return cls(0, torch.zeros(in_features, dtype=torch.float64, device=device), square)

    def add(self, x: torch.Tensor) -> None:
        """Accumulate a batch of inputs; every leading dimension is a token."""
        rows = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
        self.count += rows.shape[0]
        self.sq_sum += rows.square().sum(dim=0)
        if self.hessian is not None:
            self.hessian.addmm_(rows.T, rows)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The repeated decoder blocks of a Hugging Face decoder (``model.model.layers`` for Llama,
    ``model.transformer.h`` for GPT-2 style); block-by-block calibration walks these."""
    for path in _LAYER_PATHS:
        found: Any = model
        for part in path.split("."):
            found = getattr(found, part, None)
            if found is None:
                break
        if isinstance(found, nn.ModuleList) and len(found) > 0:
            return found
    raise ValueError(f"{type(model).__name__} has no decoder blocks at any of "
                     f"{', '.join(_LAYER_PATHS)}")


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _batches(tokens: torch.Tensor, batch_size: int, device: torch.device) -> Iterator[torch.Tensor]:
    if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
        raise ConfigError("calibration", "tokens", f"{tuple(tokens.shape)} {tokens.dtype}",
                          "an (N, L) integer tensor of token ids")
    if batch_size < 1:
        raise ConfigError("calibration", "batch_size", batch_size, "a positive integer")
    for start in range(0, tokens.shape[0], batch_size):
        yield tokens[start:start + batch_size].to(device=device, dtype=torch.int64)


@contextmanager
def _eval(model: nn.Module) -> Iterator[None]:
    """Eval mode and no autograd for the duration; the caller's training mode comes back."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


@contextmanager
def _recording(linears: Iterable[tuple[str, nn.Linear]], *,
               hessian: bool) -> Iterator[dict[str, InputStats]]:
    """Forward hooks that add each named linear's inputs to its :class:`InputStats`."""
    stats: dict[str, InputStats] = {}
    handles = []
    for name, linear in linears:
        stats[name] = InputStats.empty(linear.in_features, hessian=hessian,
                                       device=linear.weight.device)

        def hook(module: nn.Module, args: tuple, output: Any, record=stats[name]) -> None:
            record.add(args[0])

        handles.append(linear.register_forward_hook(hook))
    try:
        yield stats
    finally:
        for handle in handles:
            handle.remove()


def linear_inputs(model: nn.Module, tokens: torch.Tensor, names: Iterable[str], *,
                  hessian: bool = False, batch_size: int = 8) -> dict[str, InputStats]:
    """Input statistics of the named linears from one forward pass of the model as it is."""
    modules = dict(model.named_modules())
    chosen = []
    for name in names:
        if not isinstance(modules.get(name), nn.Linear):
            raise ConfigError("linear_inputs", "names", name,
                              "the qualified name of an nn.Linear in the model")
        chosen.append((name, modules[name]))
    device = _device(model)
    with _eval(model), _recording(chosen, hessian=hessian) as stats:
        for batch in _batches(tokens, batch_size, device):
            model(input_ids=batch, use_cache=False)
    return stats


class _Captured(Exception):
    """Raised by the pre-hook on block 0: the inputs are caught, the rest of the forward is
    skipped (no later block, no LM head)."""


def _block_inputs(model: nn.Module, first: nn.Module, tokens: torch.Tensor,
                  batch_size: int) -> list[tuple[tuple, dict[str, Any]]]:
    """(args, kwargs) with which the model calls its first block, one pair per batch: position
    embeddings, the causal mask and the like are computed once by the model itself."""
    calls: list[tuple[tuple, dict[str, Any]]] = []

    def catch(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        calls.append((args, dict(kwargs)))
        raise _Captured

    handle = first.register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for batch in _batches(tokens, batch_size, _device(model)):
            try:
                model(input_ids=batch, use_cache=False)
            except _Captured:
                continue
            raise RuntimeError(f"{type(model).__name__} never called its first decoder block")
    finally:
        handle.remove()
    return calls


def _hidden(args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _run_block(block: nn.Module, args: tuple, kwargs: dict[str, Any],
               hidden: torch.Tensor) -> torch.Tensor:
    """The block on new hidden states with the rest of its original call; its hidden output."""
    if args:
        out = block(hidden, *args[1:], **kwargs)
    else:
        out = block(**{**kwargs, "hidden_states": hidden})
    return out[0] if isinstance(out, (tuple, list)) else out


def sequential(model: nn.Module, tokens: torch.Tensor,
               compress: Callable[[str, nn.Linear, InputStats], None], *,
               hessian: bool, batch_size: int = 8) -> None:
    """Compress a decoder block by block, each block on the outputs of the compressed ones before.

    For block i: its linears' input statistics are gathered in one pass on the current inputs,
    ``compress(qualified_name, linear, stats)`` is called for each linear (in
    ``named_modules()`` order), and the now compressed block is run again to give the inputs of
    block i+1. Every linear of a block sees the block's inputs before any of the block was
    compressed, as in SparseGPT's and GPTQ's reference loop. Only ``nn.Linear`` is seen (GPT-2's
    ``Conv1D`` is not), and every block is called with block 0's keyword arguments: right for
    Llama-style models, not for ones whose blocks get different masks (alternating sliding
    windows). The hidden states of all calibration sequences are held at once, one block's worth.
    """
    layers = decoder_layers(model)
    prefix = {id(module): name for name, module in model.named_modules()}
    with _eval(model):
        calls = _block_inputs(model, layers[0], tokens, batch_size)
        hiddens = [_hidden(args, kwargs) for args, kwargs in calls]
        for block in layers:
            base = prefix[id(block)]
            linears = [(f"{base}.{name}", module) for name, module in block.named_modules()
                       if isinstance(module, nn.Linear)]
            with _recording(linears, hessian=hessian) as stats:
                for (args, kwargs), hidden in zip(calls, hiddens, strict=True):
                    _run_block(block, args, kwargs, hidden)
            for name, linear in linears:
                compress(name, linear, stats[name])
            del stats
            hiddens = [_run_block(block, args, kwargs, hidden)
                       for (args, kwargs), hidden in zip(calls, hiddens, strict=True)]
