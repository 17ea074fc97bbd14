"""Magnitude, Wanda and SparseGPT pruning of a decoder's linears, unstructured or N:M.

* magnitude: score ``|W_ij|``, no data.
* Wanda (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language Models"):
  score ``|W_ij| * ||X_j||_2``, the weight times the l2 norm of its input feature over the
  calibration tokens; no weight update.
* SparseGPT (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately
  Pruned in One-Shot"): Optimal-Brain-Surgeon style pruning with the inverse Hessian of the
  layer-wise reconstruction loss ``||XW^T - XW'^T||^2``; the kept weights of a row are updated to
  compensate for the pruned ones, column by column.

Unstructured masks compare scores within one output row (Wanda's choice, used here for every
method): each row loses exactly ``round(ratio * in_features)`` weights, so ratios are exact per
row. N:M masks keep the N highest scores in every group of M consecutive inputs of a row (2:4 is
what sparse tensor cores run). Masks are boolean, True where a weight is kept.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from autocompress.errors import ConfigError, did_you_mean
from autocompress.llm.calibrate import InputStats, decoder_layers, sequential

MASK_METHODS = ("magnitude", "wanda", "sparsegpt")
LINEAR_KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BLOCKSIZE = 128   # SparseGPT's lazy-update block of columns
PERCDAMP = 0.01   # SparseGPT's dampening, a fraction of the Hessian's mean diagonal


# --- scores and masks: pure functions of a weight (out, in) and its input statistics ---

def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    """``|W|``: the data-free baseline."""
    return weight.detach().abs().to(torch.float64)


def wanda_scores(weight: torch.Tensor, stats: InputStats) -> torch.Tensor:
    """``|W_ij| * sqrt(sq_sum_j)`` (Wanda, eq. 1): a small weight on a large input feature of
    an LLM (they have outlier features) matters more than its magnitude says."""
    norms = stats.sq_sum.to(device=weight.device, dtype=torch.float64).sqrt()
    return magnitude_scores(weight) * norms.unsqueeze(0)


def unstructured_mask(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Keep all but the ``round(ratio * in_features)`` lowest scores of every row."""
    pruned = round(ratio * scores.shape[1])
    mask = torch.ones_like(scores, dtype=torch.bool)
    if pruned:
        lowest = torch.argsort(scores, dim=1, stable=True)[:, :pruned]
        mask.scatter_(1, lowest, False)
    return mask


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` highest scores in every group of ``m`` consecutive inputs of a row."""
    rows, cols = scores.shape
    groups = scores.reshape(rows, cols // m, m)
    mask = torch.ones_like(groups, dtype=torch.bool)
    lowest = torch.argsort(groups, dim=2, stable=True)[:, :, :m - n]
    return mask.scatter_(2, lowest, False).reshape(rows, cols)


def _mask(scores: torch.Tensor, ratio: float | None, n: int | None, m: int | None) -> torch.Tensor:
    return unstructured_mask(scores, ratio) if ratio is not None else nm_mask(scores, n, m)


def _inverse_hessian(hessian: torch.Tensor, count: int,
                     weight: torch.Tensor) -> torch.Tensor:
    """Upper Cholesky factor of ``(2 X^T X / n + damp I)^-1``; dead inputs are fixed in
    ``weight`` (set to 0) and in H (``H_ii = 1``) so that H is invertible."""
    h = hessian.to(device=weight.device, dtype=torch.float64) * (2.0 / max(count, 1))
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    weight[:, dead] = 0.0
    damp = PERCDAMP * torch.diagonal(h).mean()
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    for attempt in range(6):  # a near-singular H: more damping until Cholesky succeeds
        lower, info = torch.linalg.cholesky_ex(h + damp * 10.0 ** attempt * eye)
        if info == 0:
            break
    else:
        raise ValueError("the calibration Hessian is not positive definite even with damping")
    inverse = torch.cholesky_inverse(lower)
    return torch.linalg.cholesky(inverse, upper=True)


def sparsegpt_prune(weight: torch.Tensor, stats: InputStats, *, ratio: float | None = None,
                    n: int | None = None, m: int | None = None,
                    blocksize: int = BLOCKSIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT (Frantar & Alistarh 2023, Algorithm 1): the pruned and updated weight (float64)
    and its mask.

    ``Hinv`` is the upper Cholesky factor of the inverse damped Hessian. Columns are processed in
    blocks; within a block the mask is chosen first (adaptive mask selection, score
    ``w^2 / Hinv_ii^2``, the OBS saliency; for N:M, per group of M columns just before the
    group, on weights already updated), then for each column ``i`` the error of pruning
    ``err = (w_i - q_i) / Hinv_ii`` is spread over the columns to its right, ``W[:, i:] -= err
    Hinv[i, i:]``, within the block at once and to later blocks after it (lazy batch updates).
    Per-row prune counts in each block telescope to exactly ``round(ratio * in_features)``.
    """
    if stats.hessian is None:
        raise ConfigError("sparsegpt", "stats", "no hessian", "InputStats with a hessian")
    w = weight.detach().to(torch.float64).clone()
    cols = w.shape[1]
    hinv = _inverse_hessian(stats.hessian, stats.count, w)
    if m is not None:  # N:M groups must not straddle a block
        blocksize = max(m, blocksize // m * m)
    mask = torch.ones_like(w, dtype=torch.bool)
    for start in range(0, cols, blocksize):
        end = min(start + blocksize, cols)
        block = w[:, start:end].clone()
        hblock = hinv[start:end, start:end]
        diag = torch.diagonal(hblock).unsqueeze(0)
        keep = torch.ones_like(block, dtype=torch.bool)
        if ratio is not None:
            pruned = round(ratio * end) - round(ratio * start)
            saliency = block.square() / diag.square()
            if pruned:
                lowest = torch.argsort(saliency, dim=1, stable=True)[:, :pruned]
                keep.scatter_(1, lowest, False)
        errors = torch.zeros_like(block)
        for i in range(end - start):
            if m is not None and i % m == 0:
                group = block[:, i:i + m].square() / diag[:, i:i + m].square()
                keep[:, i:i + m] = nm_mask(group, n, m)
            column = block[:, i]
            kept = column * keep[:, i]
            err = (column - kept) / hblock[i, i]
            block[:, i:] -= err.unsqueeze(1) * hblock[i, i:].unsqueeze(0)
            block[:, i] = kept  # exactly zero where pruned, exactly the update where kept
            errors[:, i] = err
        w[:, start:end] = block
        mask[:, start:end] = keep
        w[:, end:] -= errors @ hinv[start:end, end:]
    return w, mask


# --- one layer, then a whole decoder ---

def _check(where: str, method: str, ratio: float | None, n: int | None, m: int | None,
           in_features: int | None = None) -> None:
    if method not in MASK_METHODS:
        hint = did_you_mean(str(method), MASK_METHODS)
        raise ConfigError(where, "method", method, f"one of {', '.join(MASK_METHODS)}{hint}")
    if (ratio is None) == (n is None and m is None):
        raise ConfigError(where, "ratio", ratio, "exactly one of ratio or n and m")
    if ratio is not None:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
            raise ConfigError(where, "ratio", ratio, "a number in [0, 1)")
        return
    for field, value in (("n", n), ("m", m)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(where, field, value, "a positive integer (n:m, e.g. 2:4)")
    if n >= m:
        raise ConfigError(where, "n", f"{n}:{m}", "n < m (keep n of every m, e.g. 2:4)")
    if in_features is not None and in_features % m:
        raise ConfigError(where, "m", m, f"a divisor of in_features {in_features}")


def prune_linear(linear: nn.Linear, stats: InputStats | None = None, *, method: str,
                 ratio: float | None = None, n: int | None = None,
                 m: int | None = None) -> torch.Tensor:
    """Prune ``linear`` in place (pruned weights set to 0; SparseGPT also updates the kept ones)
    and return the boolean mask of kept weights. ``stats`` is needed for wanda and sparsegpt."""
    _check("prune_linear", method, ratio, n, m, linear.in_features)
    weight = linear.weight
    if method != "magnitude" and (stats is None or stats.sq_sum.shape != (linear.in_features,)):
        got = None if stats is None else tuple(stats.sq_sum.shape)
        raise ConfigError("prune_linear", "stats", got,
                          f"InputStats of {linear.in_features} input features for {method}")
    with torch.no_grad():
        if method == "sparsegpt":
            new, mask = sparsegpt_prune(weight, stats, ratio=ratio, n=n, m=m)
        else:
            scores = magnitude_scores(weight) if method == "magnitude" else wanda_scores(weight,
                                                                                        stats)
            mask = _mask(scores, ratio, n, m)
            new = weight.detach()
        weight.copy_((new * mask).to(weight.dtype))
    return mask


def _kind(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _block_linears(model: nn.Module) -> dict[str, nn.Linear]:
    names = {id(module): name for name, module in model.named_modules()}
    found: dict[str, nn.Linear] = {}
    for block in decoder_layers(model):
        base = names[id(block)]
        for name, module in block.named_modules():
            if isinstance(module, nn.Linear):
                found[f"{base}.{name}"] = module
    return found


def _layer_ratios(linears: Mapping[str, nn.Linear], ratio: float | None,
                  per_layer: Mapping[str, float] | None, method: str) -> dict[str, float]:
    """The ratio of every linear: its qualified name in ``per_layer``, else its kind, else
    ``ratio`` (0 when only ``per_layer`` was given)."""
    per_layer = dict(per_layer or {})
    known = set(linears) | {_kind(name) for name in linears}
    for key, value in per_layer.items():
        if key not in known:
            raise ConfigError("sparsify_model", "per_layer", key,
                              f"a linear kind ({', '.join(LINEAR_KINDS)}) or qualified name "
                              f"in the decoder blocks{did_you_mean(str(key), known)}")
        _check(f"sparsify_model: per_layer[{key!r}]", method, value, None, None)
    return {name: per_layer.get(name, per_layer.get(_kind(name), ratio or 0.0))
            for name in linears}


def sparsify_model(model: nn.Module, tokens: torch.Tensor | None, *, method: str,
                   ratio: float | None = None, n: int | None = None, m: int | None = None,
                   per_layer: Mapping[str, float] | None = None, batch_size: int = 8,
                   skip: tuple[str, ...] = ("lm_head",)) -> dict[str, float]:
    """Prune every ``nn.Linear`` inside the decoder blocks (never embeddings or the LM head).

    Wanda and SparseGPT gather their statistics block by block with
    :func:`~autocompress.llm.calibrate.sequential` (each block calibrated on the outputs of the
    pruned blocks before it); magnitude needs no data (``tokens`` may be None). ``per_layer``
    maps a kind of linear (``"q_proj"``...) or a qualified name to its ratio, overriding
    ``ratio``; ``skip`` names kinds or qualified names left dense. Returns ``{qualified_name:
    achieved sparsity}`` (the fraction of zero weights) for every pruned linear.
    """
    where = "sparsify_model"
    linears = {name: linear for name, linear in _block_linears(model).items()
               if name not in skip and _kind(name) not in skip}
    ratios: dict[str, float | None]
    if n is None and m is None:
        if ratio is None and not per_layer:
            raise ConfigError(where, "ratio", None, "a ratio in [0, 1), per_layer ratios or n:m")
        _check(where, method, 0.0 if ratio is None else ratio, None, None)
        ratios = dict(_layer_ratios(linears, ratio, per_layer, method))
    else:
        _check(where, method, ratio, n, m)
        if per_layer:
            raise ConfigError(where, "per_layer", per_layer, "no per_layer ratios with n:m")
        for linear in linears.values():  # every layer checked before any is changed
            _check(where, method, None, n, m, linear.in_features)
        ratios = dict.fromkeys(linears)
    if method != "magnitude" and tokens is None:
        raise ConfigError(where, "tokens", None, f"calibration token ids for {method}")

    def compress(name: str, linear: nn.Linear, stats: InputStats | None) -> None:
        if ratios.get(name, 0) == 0:
            return
        prune_linear(linear, stats, method=method, ratio=ratios[name], n=n, m=m)

    if method == "magnitude":
        for name, linear in linears.items():
            compress(name, linear, None)
    else:
        sequential(model, tokens, compress, hessian=method == "sparsegpt", batch_size=batch_size)
    return {name: _sparsity(linear) for name, linear in linears.items()}


def _sparsity(linear: nn.Linear) -> float:
    return float((linear.weight == 0).sum()) / linear.weight.numel()


__all__ = ["LINEAR_KINDS", "MASK_METHODS", "magnitude_scores", "nm_mask", "prune_linear",
           "sparsegpt_prune", "sparsify_model", "unstructured_mask", "wanda_scores"]
