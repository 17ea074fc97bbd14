"""Calibration statistics and magnitude / Wanda / SparseGPT pruning of decoder linears."""

from __future__ import annotations

import copy

import pytest
import torch
from llm_tiny import tiny_llama, token_batch
from torch import nn

from autocompress.errors import ConfigError
from autocompress.llm.calibrate import InputStats, decoder_layers, linear_inputs, sequential
from autocompress.llm.sparsify import (
    magnitude_scores,
    nm_mask,
    prune_linear,
    sparsegpt_prune,
    sparsify_model,
    unstructured_mask,
    wanda_scores,
)

# A 2x4 layer whose Wanda and magnitude masks differ in row 0.
HAND_W = torch.tensor([[2.5, -2.0, 1.0, 0.6],
                       [0.5, 3.0, -1.0, 2.0]])
HAND_SQ = torch.tensor([1.0, 4.0, 9.0, 16.0], dtype=torch.float64)  # feature norms 1, 2, 3, 4


def _linear(weight: torch.Tensor) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        linear.weight.copy_(weight)
    return linear


def _stats(x: torch.Tensor, *, hessian: bool = True) -> InputStats:
    stats = InputStats.empty(x.shape[-1], hessian=hessian, device=x.device)
    stats.add(x)
    return stats


def _correlated_inputs(rows: int = 256, features: int = 32, seed: int = 0) -> torch.Tensor:
    """Low-rank, unevenly scaled inputs: what makes a Hessian-aware update pay off."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 8, generator=g) @ torch.randn(8, features, generator=g)
    x = x + 0.1 * torch.randn(rows, features, generator=g)
    return x * torch.linspace(0.2, 3.0, features)


def _groups_kept(mask: torch.Tensor, m: int) -> torch.Tensor:
    return mask.reshape(mask.shape[0], -1, m).sum(dim=-1)


# --- masks on a hand case ---

def test_wanda_mask_matches_hand_computation():
    stats = InputStats(count=3, sq_sum=HAND_SQ.clone(), hessian=None)
    # |W| * [1, 2, 3, 4]: row 0 [2.5, 4, 3, 2.4] loses columns 3 and 0; row 1 [0.5, 6, 3, 8]
    # loses columns 0 and 2.
    scores = wanda_scores(HAND_W, stats)
    assert torch.allclose(scores, torch.tensor([[2.5, 4.0, 3.0, 2.4], [0.5, 6.0, 3.0, 8.0]],
                                               dtype=torch.float64))
    expected = torch.tensor([[False, True, True, False], [False, True, False, True]])
    linear = _linear(HAND_W)
    mask = prune_linear(linear, stats, method="wanda", ratio=0.5)
    assert torch.equal(mask, expected)
    assert torch.equal(linear.weight.detach(), HAND_W * expected)  # kept weights unchanged
    # 2:4 on the same scores is the same mask here (one group of four per row).
    assert torch.equal(nm_mask(scores, 2, 4), expected)


def test_magnitude_mask_is_per_row_and_matches_hand_computation():
    # |W| row 0 [2.5, 2, 1, 0.6] loses columns 3 and 2 (Wanda kept column 2: feature norm 3).
    expected = torch.tensor([[True, True, False, False], [False, True, False, True]])
    linear = _linear(HAND_W)
    assert torch.equal(prune_linear(linear, method="magnitude", ratio=0.5), expected)
    assert torch.equal(linear.weight.detach(), HAND_W * expected)
    # Per row, not per layer: a row of tiny weights still keeps its share.
    weight = torch.tensor([[100.0, 200.0, 300.0, 400.0], [0.1, 0.4, 0.2, 0.3]])
    mask = unstructured_mask(magnitude_scores(weight), 0.25)
    assert mask.sum(dim=1).tolist() == [3, 3]
    assert torch.equal(mask[1], torch.tensor([False, True, True, True]))


@pytest.mark.parametrize("ratio, pruned", [(0.3, 10), (0.5, 16), (0.0, 0), (0.9, 29)])
def test_unstructured_ratio_is_exact_per_row(ratio, pruned):
    weight = torch.randn(6, 32, generator=torch.Generator().manual_seed(3))
    stats = _stats(_correlated_inputs())
    for method in ("magnitude", "wanda", "sparsegpt"):
        mask = prune_linear(_linear(weight), stats, method=method, ratio=ratio)
        assert (32 - mask.sum(dim=1)).tolist() == [pruned] * 6, method
    # SparseGPT's per-block counts telescope to the per-row total with blocks of 8 too.
    _, mask = sparsegpt_prune(weight, stats, ratio=ratio, blocksize=8)
    assert (32 - mask.sum(dim=1)).tolist() == [pruned] * 6


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("n, m", [(2, 4), (4, 8)])
def test_nm_masks_keep_exactly_n_of_every_m(method, n, m):
    weight = torch.randn(8, 32, generator=torch.Generator().manual_seed(4))
    linear = _linear(weight)
    mask = prune_linear(linear, _stats(_correlated_inputs()), method=method, n=n, m=m)
    assert torch.equal(_groups_kept(mask, m), torch.full((8, 32 // m), n))
    zero = linear.weight.detach() == 0
    assert torch.equal(zero, ~mask)  # pruned are zero; kept (random, updated) are not


# --- SparseGPT ---

def test_sparsegpt_reconstructs_outputs_better_than_wanda_and_magnitude():
    x = _correlated_inputs()
    weight = torch.randn(16, 32, generator=torch.Generator().manual_seed(5))
    stats = _stats(x)
    errors = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        linear = _linear(weight)
        prune_linear(linear, stats, method=method, ratio=0.5)
        errors[method] = float((x @ weight.T - x @ linear.weight.detach().T).norm())
    assert errors["sparsegpt"] < errors["wanda"] < errors["magnitude"], errors
    assert errors["sparsegpt"] < 0.5 * errors["wanda"], errors


def test_sparsegpt_with_a_diagonal_hessian_is_wanda_without_updates():
    # With H = 2 diag(s) / n + lambda I (lambda = 0.01 mean diag), the upper Cholesky factor of
    # H^-1 is diag(1 / sqrt(H_jj)), so SparseGPT's saliency w^2 / Hinv_jj^2 = w^2 H_jj
    # = w^2 (2 s_j / n + lambda): Wanda's squared score (|w| sqrt(s_j))^2 times 2/n plus the
    # dampening. Here n = 1, H_jj = [2, 8, 18, 32] + 0.15, and the saliencies
    # row 0 [13.4, 32.6, 18.2, 11.6], row 1 [0.54, 73.4, 18.2, 128.6] order as Wanda's.
    # The off-diagonal of Hinv is 0, so pruning a weight moves no other weight.
    stats = InputStats(count=1, sq_sum=HAND_SQ.clone(), hessian=torch.diag(HAND_SQ))
    linear = _linear(HAND_W)
    mask = prune_linear(linear, stats, method="sparsegpt", ratio=0.5)
    wanda = unstructured_mask(wanda_scores(HAND_W, stats), 0.5)
    assert torch.equal(mask, wanda)
    assert torch.equal(linear.weight.detach(), HAND_W * mask)


def _hinv(stats: InputStats) -> torch.Tensor:
    """Upper Cholesky factor of the inverse of H = 2 X^T X / n, dampened by 1% of its mean
    diagonal."""
    h = 2 * stats.hessian / stats.count
    h = h + 0.01 * torch.diagonal(h).mean() * torch.eye(h.shape[0], dtype=h.dtype)
    return torch.linalg.cholesky(torch.linalg.inv(h), upper=True)


def _column_by_column_sparsegpt_nm(weight: torch.Tensor, stats: InputStats, n: int,
                                   m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT's Algorithm 1 for n:m read literally: one column at a time, no lazy blocks."""
    hinv = _hinv(stats)
    w = weight.double().clone()
    keep = torch.ones_like(w, dtype=torch.bool)
    for i in range(w.shape[1]):
        if i % m == 0:  # the group's mask, on weights carrying every earlier column's update
            saliency = w[:, i:i + m].square() / torch.diagonal(hinv)[i:i + m].square()
            keep[:, i:i + m] = nm_mask(saliency, n, m)
        err = w[:, i] * ~keep[:, i] / hinv[i, i]
        w[:, i:] -= torch.outer(err, hinv[i, i:])
    return w * keep, keep


def test_sparsegpt_nm_matches_the_column_by_column_algorithm_whatever_the_block_size():
    weight = torch.randn(8, 32, generator=torch.Generator().manual_seed(6))
    stats = _stats(_correlated_inputs(seed=2))
    reference, reference_mask = _column_by_column_sparsegpt_nm(weight, stats, 2, 4)
    for blocksize in (4, 12, 128):  # 12: blocks of 12 columns, groups of 4 inside each
        new, mask = sparsegpt_prune(weight, stats, n=2, m=4, blocksize=blocksize)
        assert torch.equal(mask, reference_mask), blocksize
        assert torch.allclose(new, reference, atol=1e-9), blocksize
    assert not torch.allclose(new, weight.double() * mask)  # kept weights were updated
    # Choosing the groups on the original weights would have chosen another mask here.
    static = weight.double().square() / torch.diagonal(_hinv(stats)).square()
    assert not torch.equal(mask, nm_mask(static, 2, 4))


def test_sparsegpt_dead_inputs_are_pruned_and_zeroed():
    x = _correlated_inputs()
    x[:, 5] = 0.0
    weight = torch.randn(4, 32, generator=torch.Generator().manual_seed(7))
    new, mask = sparsegpt_prune(weight, _stats(x), ratio=0.25)
    assert torch.isfinite(new).all()
    assert (new[:, 5] == 0).all() and not mask[:, 5].any()


# --- calibration, block by block ---

def _block_linear_names(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and ".layers." in name]


def test_sequential_block0_stats_match_a_dense_pass_and_sees_every_linear_once_in_order():
    model, tokens = tiny_llama(), token_batch(6, 16)
    dense = linear_inputs(model, tokens, ["model.layers.0.self_attn.q_proj"], hessian=True)
    seen: list[str] = []
    caught: dict[str, InputStats] = {}

    def record(name: str, linear: nn.Linear, stats: InputStats) -> None:
        seen.append(name)
        caught[name] = stats

    sequential(model, tokens, record, hessian=True, batch_size=4)  # batches of 4 and 2
    assert seen == _block_linear_names(model) and len(seen) == 14
    block0, reference = caught["model.layers.0.self_attn.q_proj"], dense[
        "model.layers.0.self_attn.q_proj"]
    assert block0.count == reference.count == 6 * 16
    assert torch.allclose(block0.sq_sum, reference.sq_sum, rtol=1e-5)
    assert torch.allclose(block0.hessian, reference.hessian, rtol=1e-5, atol=1e-8)
    assert torch.allclose(torch.diagonal(block0.hessian), block0.sq_sum)
    # The MLP's down_proj sees the intermediate width.
    assert caught["model.layers.1.mlp.down_proj"].sq_sum.shape == (64,)


def test_sequential_calibrates_each_block_on_the_compressed_blocks_before_it():
    model, tokens = tiny_llama(), token_batch(6, 16)
    name = "model.layers.1.self_attn.q_proj"
    dense = linear_inputs(model, tokens, [name])[name]
    caught: dict[str, InputStats] = {}

    def prune(qualified: str, linear: nn.Linear, stats: InputStats) -> None:
        caught[qualified] = stats
        prune_linear(linear, stats, method="magnitude", ratio=0.5)

    sequential(model, tokens, prune, hessian=False, batch_size=8)
    after = linear_inputs(model, tokens, [name])[name]  # block 0 pruned, block 1's norm unchanged
    assert torch.allclose(caught[name].sq_sum, after.sq_sum, rtol=1e-5)
    assert not torch.allclose(caught[name].sq_sum, dense.sq_sum, rtol=1e-3)


def test_decoder_layers_finds_llama_blocks_and_refuses_other_models():
    model = tiny_llama(layers=3)
    assert decoder_layers(model) is model.model.layers
    with pytest.raises(ValueError, match="no decoder blocks"):
        decoder_layers(nn.Sequential(nn.Linear(2, 2)))


# --- whole decoders ---

def _untouched(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()
            if "_proj." not in name}


@pytest.mark.parametrize("kwargs", [dict(method="wanda", ratio=0.5),
                                    dict(method="sparsegpt", n=2, m=4)])
def test_sparsify_model_exact_sparsity_and_embeddings_untouched(kwargs):
    model, tokens = tiny_llama(), token_batch(8, 16)
    before = _untouched(model)
    achieved = sparsify_model(model, tokens, **kwargs, batch_size=4)
    assert sorted(achieved) == sorted(_block_linear_names(model))
    assert set(achieved.values()) == {0.5}
    modules = dict(model.named_modules())
    if "m" in kwargs:
        for name in achieved:
            kept = modules[name].weight.detach() != 0
            assert (_groups_kept(kept, 4) == 2).all(), name
    for name, value in _untouched(model).items():  # embeddings, norms, tied LM head
        assert torch.equal(value, before[name]), name
    assert model.lm_head.weight is model.model.embed_tokens.weight
    with torch.no_grad():
        logits = model(tokens).logits
    assert logits.shape == (8, 16, 97) and torch.isfinite(logits).all()


def test_sparsify_model_per_layer_ratios_and_skip():
    model = tiny_llama()
    achieved = sparsify_model(model, None, method="magnitude", ratio=0.5,
                              per_layer={"down_proj": 0.25,
                                         "model.layers.0.self_attn.q_proj": 0.75},
                              skip=("lm_head", "v_proj"))
    assert achieved["model.layers.0.self_attn.q_proj"] == 0.75
    assert achieved["model.layers.1.self_attn.q_proj"] == 0.5
    assert achieved["model.layers.0.mlp.down_proj"] == 0.25
    assert "model.layers.0.self_attn.v_proj" not in achieved
    assert (model.model.layers[0].self_attn.v_proj.weight != 0).all()


def test_wanda_and_sparsegpt_stay_closer_to_the_dense_model_than_magnitude():
    # A random model's loss on random tokens is about log(97) whatever is pruned, so the
    # measure is the distance of the logits from the dense model's. A few embedding
    # dimensions are made outliers (as LLMs have them): Wanda's input norms protect them.
    dense = tiny_llama(seed=0)
    with torch.no_grad():
        dense.model.embed_tokens.weight[:, :4] *= 8
    tokens = token_batch(8, 32, seed=5)
    with torch.no_grad():
        reference = dense(tokens).logits
    error = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        model = copy.deepcopy(dense)
        sparsify_model(model, tokens, method=method, ratio=0.5)
        with torch.no_grad():
            error[method] = float((model(tokens).logits - reference).square().mean())
    assert error["sparsegpt"] < error["wanda"] < error["magnitude"], error


@pytest.mark.parametrize("kwargs, field", [
    (dict(method="obs", ratio=0.5), "method"),
    (dict(method="wanda", ratio=1.0), "ratio"),
    (dict(method="wanda", ratio=-0.1), "ratio"),
    (dict(method="wanda"), "ratio"),
    (dict(method="wanda", ratio=0.5, n=2, m=4), "ratio"),
    (dict(method="sparsegpt", n=4, m=4), "n"),
    (dict(method="sparsegpt", n=2, m=5), "m"),
    (dict(method="magnitude", ratio=0.5, per_layer={"qproj": 0.1}), "per_layer"),
    (dict(method="magnitude", per_layer={"q_proj": 1.5}), "ratio"),
])
def test_bad_arguments_raise_one_line_config_errors_before_any_change(kwargs, field):
    model = tiny_llama()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    with pytest.raises(ConfigError) as info:
        sparsify_model(model, token_batch(2, 8), **kwargs)
    assert info.value.field == field and "\n" not in str(info.value)
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name
    if kwargs.get("per_layer") == {"qproj": 0.1}:
        assert "did you mean 'q_proj'" in str(info.value)


def test_prune_linear_needs_statistics_for_data_driven_methods():
    with pytest.raises(ConfigError, match="stats"):
        prune_linear(_linear(HAND_W), None, method="wanda", ratio=0.5)
    with pytest.raises(ConfigError, match="hessian"):
        prune_linear(_linear(HAND_W), InputStats(1, HAND_SQ, None), method="sparsegpt", ratio=0.5)
