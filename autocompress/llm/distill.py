"""Fine-tune a compressed decoder towards its teacher on text (logit distillation).

The loss is KL(teacher || student) between next-token distributions softened by a temperature
``T``, times ``T**2`` (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network"), at
every position, plus an optional MSE between the hidden states of mapped layers (student layer
``i`` and the teacher layer it came from). Minitron (Muralidharan et al. 2024, "Compact Language
Models via Pruning and Knowledge Distillation") found logit-only KL the best choice after
depth pruning, so ``hidden_weight`` defaults to 0.

Teacher logits are computed per batch under ``no_grad`` and dropped: caching them for a whole
set costs ``N * L * vocab`` floats (tens of GB for SmolLM2's 49k vocabulary).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from autocompress.errors import ConfigError, TrialError

WARMUP_FRACTION = 0.05  # of the planned steps, at least one, at most MAX_WARMUP
MAX_WARMUP = 100
MIN_LR_RATIO = 0.1  # the cosine decays to this fraction of ``lr``
GRAD_CLIP = 1.0


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _layers(model: nn.Module) -> nn.ModuleList:
    decoder = getattr(model, "model", model)
    return decoder.layers


def token_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
             temperature: float = 1.0) -> torch.Tensor:
    """Mean over positions of KL(teacher || student) at temperature ``T``, times ``T**2`` (so
    gradients keep their scale when ``T`` changes)."""
    vocab = student_logits.shape[-1]
    log_q = F.log_softmax(student_logits.float().reshape(-1, vocab) / temperature, dim=-1)
    log_p = F.log_softmax(teacher_logits.float().reshape(-1, vocab) / temperature, dim=-1)
    kl = F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1)
    return kl.mean() * temperature ** 2


@torch.no_grad()
def lm_kl(student: nn.Module, teacher: nn.Module, tokens: torch.Tensor, *, batch_size: int = 4,
          temperature: float = 1.0) -> float:
    """Mean per-token KL(teacher || student) over ``tokens``: how far the student still is."""
    total, count = 0.0, 0
    for start in range(0, tokens.shape[0], batch_size):
        batch = tokens[start:start + batch_size]
        target = teacher(input_ids=batch.to(_device(teacher)), use_cache=False).logits
        logits = student(input_ids=batch.to(_device(student)), use_cache=False).logits
        kl = token_kl(logits, target.to(logits.device), temperature)
        total += float(kl) * batch.numel()
        count += batch.numel()
    return total / max(count, 1)


def even_layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """Student layer ``i`` -> teacher layer ``round((i + 1) * T / S) - 1``: spread evenly, the
    last onto the last. After :func:`~autocompress.llm.structure.drop_layers` pass the kept
    indices instead (the teacher layer each student layer came from)."""
    return [max(0, round((i + 1) * teacher_layers / student_layers) - 1)
            for i in range(student_layers)]


def _schedule(total: int) -> Callable[[int], float]:
    """Linear warm-up over a few steps, then cosine decay to ``MIN_LR_RATIO``."""
    warmup = max(1, min(MAX_WARMUP, round(WARMUP_FRACTION * total)))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def _masks(student: nn.Module, masks: Mapping[str, torch.Tensor] | None
           ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(parameter, boolean keep mask) pairs, checked against the student's parameters."""
    if not masks:
        return []
    params = dict(student.named_parameters(remove_duplicate=False))
    pairs = []
    for name, mask in masks.items():
        if name not in params:
            raise ConfigError("distill_lm", "masks", name, "names of the student's parameters")
        param = params[name]
        if tuple(mask.shape) != tuple(param.shape):
            raise ConfigError("distill_lm", f"masks[{name}]", tuple(mask.shape),
                              f"the parameter's shape {tuple(param.shape)}")
        pairs.append((param, mask.to(device=param.device, dtype=torch.bool)))
    return pairs


@torch.no_grad()
def _apply(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for param, mask in pairs:
        param.masked_fill_(~mask, 0)


def _capture(layers: Sequence[nn.Module], store: dict[int, torch.Tensor]) -> list[Any]:
    """Forward hooks that keep each layer's output hidden states in ``store[position]``."""
    def hook(index: int):
        def record(_module: nn.Module, _args: tuple, out: Any) -> None:
            store[index] = out if isinstance(out, torch.Tensor) else out[0]
        return record
    return [layer.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]


def _check(tokens: torch.Tensor, epochs: int, max_steps: int | None, batch_size: int, lr: float,
           temperature: float, hidden_weight: float) -> None:
    checks = [("max_steps", max_steps, max_steps is None or max_steps >= 0, "None or >= 0"),
              ("tokens", tuple(tokens.shape), tokens.dim() == 2 and tokens.numel() > 0,
               "a non-empty (N, L) tensor of token ids"),
              ("epochs", epochs, epochs >= 1, "an integer >= 1"),
              ("batch_size", batch_size, batch_size >= 1, "an integer >= 1"),
              ("lr", lr, lr > 0, "a number > 0"),
              ("temperature", temperature, temperature > 0, "a number > 0"),
              ("hidden_weight", hidden_weight, hidden_weight >= 0, "a number >= 0")]
    for field, got, ok, expected in checks:
        if not ok:
            raise ConfigError("distill_lm", field, got, expected)


def distill_lm(student: nn.Module, teacher: nn.Module, tokens: torch.Tensor, *,
               epochs: int = 1, max_steps: int | None = None, lr: float = 1e-4,
               batch_size: int = 4, temperature: float = 1.0, hidden_weight: float = 0.0,
               layer_map: Sequence[int] | None = None,
               masks: Mapping[str, torch.Tensor] | None = None,
               time_limit_s: float | None = None,
               on_step: Callable[[int, float], bool | None] | None = None,
               seed: int = 0) -> dict[str, Any]:
    """Train ``student`` in place towards ``teacher`` on ``tokens`` (N, L); return
    ``{"steps", "final_loss", "seconds", "stopped"}``.

    AdamW (no weight decay; gradients clipped to norm 1) with a short linear warm-up and
    cosine decay, on batches shuffled anew (``seed``) at each pass over ``tokens``. It runs
    ``epochs`` passes, or exactly ``max_steps`` steps when given (as many passes as that takes;
    it overrides ``epochs``, as in Hugging Face's Trainer), stopping early after
    ``time_limit_s`` seconds (checked before each step) or when ``on_step(step, loss)`` returns
    True. ``stopped`` says which: "done", "time_limit" or "on_step".
    ``hidden_weight`` > 0 adds the MSE between student layer ``i``'s output and teacher layer
    ``layer_map[i]``'s (default :func:`even_layer_map`; needs equal hidden sizes; hidden states
    can be large, so keep the weight small). ``masks`` (parameter name -> boolean keep mask)
    are applied before training and after every optimizer step, so pruned weights stay zero.
    Raises :class:`TrialError` when the loss is not finite.
    """
    _check(tokens, epochs, max_steps, batch_size, lr, temperature, hidden_weight)
    start_time = time.monotonic()
    per_epoch = math.ceil(tokens.shape[0] / batch_size)
    planned = epochs * per_epoch if max_steps is None else max_steps
    pairs = _masks(student, masks)
    _apply(pairs)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(max(planned, 1)))
    generator = torch.Generator().manual_seed(seed)

    student_hidden: dict[int, torch.Tensor] = {}
    teacher_hidden: dict[int, torch.Tensor] = {}
    handles: list[Any] = []
    if hidden_weight > 0:
        s_layers, t_layers = _layers(student), _layers(teacher)
        layer_map = list(layer_map or even_layer_map(len(s_layers), len(t_layers)))
        if len(layer_map) != len(s_layers) or any(not 0 <= t < len(t_layers) for t in layer_map):
            raise ConfigError("distill_lm", "layer_map", layer_map,
                              f"{len(s_layers)} teacher layer indices in [0, {len(t_layers)})")
        handles = (_capture(s_layers, student_hidden)
                   + _capture([t_layers[t] for t in layer_map], teacher_hidden))

    was_training, teacher_training = student.training, teacher.training
    student.train()
    teacher.eval()
    steps, final_loss, stopped = 0, None, "done"
    order, position = torch.arange(0), tokens.shape[0]
    try:
        while steps < planned:
            if time_limit_s is not None and time.monotonic() - start_time >= time_limit_s:
                stopped = "time_limit"
                break
            if position >= tokens.shape[0]:  # a new epoch: a new shuffle
                order, position = torch.randperm(tokens.shape[0], generator=generator), 0
            batch = tokens[order[position:position + batch_size]]
            position += batch_size
            with torch.no_grad():
                target = teacher(input_ids=batch.to(_device(teacher)), use_cache=False).logits
            logits = student(input_ids=batch.to(_device(student)), use_cache=False).logits
            loss = token_kl(logits, target.to(logits.device), temperature)
            del target
            if hidden_weight > 0:
                mse = torch.stack([
                    F.mse_loss(student_hidden[i].float(),
                               teacher_hidden[i].float().to(student_hidden[i].device))
                    for i in range(len(student_hidden))]).mean()
                loss = loss + hidden_weight * mse
            if not torch.isfinite(loss):
                value = float(loss.detach())
                raise TrialError(f"distill_lm: the loss became {value} at step {steps}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
            optimizer.step()
            scheduler.step()
            _apply(pairs)
            steps += 1
            final_loss = float(loss.detach())
            student_hidden.clear()
            teacher_hidden.clear()
            if on_step is not None and on_step(steps, final_loss):
                stopped = "on_step"
                break
    finally:
        for handle in handles:
            handle.remove()
        student.train(was_training)
        teacher.train(teacher_training)
        optimizer.zero_grad(set_to_none=True)
    return {"steps": steps, "final_loss": final_loss,
            "seconds": time.monotonic() - start_time, "stopped": stopped}
