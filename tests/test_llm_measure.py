"""Measures of decoder LMs: perplexity by hand, the KV-cache path, timings, int8, peak memory."""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

import pytest
import torch
from llm_tiny import tiny_llama, token_batch
from torch import nn

from autocompress.llm.int8 import int8_dynamic, int8_float_layers
from autocompress.llm.measure import (
    check_cache_layout,
    decode_speed,
    deploy_lm,
    fixed_prompt,
    greedy_decode,
    measure_lm,
    peak_generation_bytes,
    perplexity,
    prefill_latency,
    scores,
)

DYNAMIC_LINEAR = torch.ao.nn.quantized.dynamic.Linear


def drop_layer(model: nn.Module, index: int) -> nn.Module:
    """Drop one decoder layer the way a structure pass must: config and cache indices follow."""
    del model.model.layers[index]
    model.config.num_hidden_layers = len(model.model.layers)
    for position, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = position
    return model


class Oracle(nn.Module):
    """Logits that know the next token (``perfect``) or know nothing (``uniform``)."""

    def __init__(self, vocab: int, perfect: bool) -> None:
        super().__init__()
        self.vocab, self.perfect = vocab, perfect

    def forward(self, input_ids: torch.Tensor, use_cache: bool = False) -> SimpleNamespace:
        logits = torch.zeros(*input_ids.shape, self.vocab)
        if self.perfect:
            logits[:, :-1].scatter_(-1, input_ids[:, 1:, None], 60.0)
        return SimpleNamespace(logits=logits)


def test_perplexity_matches_a_hand_computation():
    model, tokens = tiny_llama(), token_batch(2, 5)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=tokens).logits.double(), dim=-1)
    nll = -logp[:, :-1].gather(-1, tokens[:, 1:, None]).squeeze(-1)  # 2 x 4 predictions
    expected = math.exp(nll.mean().item())
    assert perplexity(model, tokens) == pytest.approx(expected, rel=1e-6)
    assert perplexity(model, tokens, batch_size=1) == pytest.approx(expected, rel=1e-6)
    assert perplexity(model, tokens) == perplexity(model, tokens)  # same tokens, same number
    hits = (model(input_ids=tokens).logits[:, :-1].argmax(-1) == tokens[:, 1:]).float().mean()
    assert scores(model, tokens) == (pytest.approx(expected, rel=1e-6),
                                     pytest.approx(hits.item()))


def test_perplexity_is_one_for_a_perfect_model_and_vocab_for_a_uniform_one():
    tokens = token_batch(3, 12)
    assert perplexity(Oracle(97, perfect=True), tokens) == pytest.approx(1.0, abs=1e-6)
    assert perplexity(Oracle(97, perfect=False), tokens) == pytest.approx(97.0, rel=1e-6)
    with pytest.raises(ValueError, match="int64"):
        perplexity(Oracle(97, perfect=False), tokens[:, :1])


def test_kv_cache_decode_matches_recomputation_also_after_dropping_a_layer():
    model = tiny_llama(layers=3)
    prompt = fixed_prompt(model, 8)
    assert torch.equal(prompt, fixed_prompt(model, 8))
    cached = greedy_decode(model, prompt, 8)
    assert cached.shape == (1, 8)
    assert torch.equal(cached, greedy_decode(model, prompt, 8, use_cache=False))

    del model.model.layers[1]  # stale config and layer_idx: refused, not silently wrong
    with pytest.raises(ValueError, match="num_hidden_layers"):
        check_cache_layout(model)
    model.config.num_hidden_layers = 2
    with pytest.raises(ValueError, match="layer_idx"):
        greedy_decode(model, prompt, 8)
    model.model.layers[1].self_attn.layer_idx = 1
    assert torch.equal(greedy_decode(model, prompt, 8),
                       greedy_decode(model, prompt, 8, use_cache=False))


def test_timings_are_finite_and_tokens_per_second_counts_only_decode_steps():
    model = tiny_llama()
    threads = torch.get_num_threads()
    prefill = prefill_latency(model, 8, threads=1, warmup=1, repeats=5)
    assert 0 < prefill.median < 1e4 and math.isfinite(prefill.noise) and prefill.unit == "ms"
    assert torch.get_num_threads() == threads  # restored

    # A known cost per pass: 0.2 s per prefill, 0.02 s per decode step. Counting the prefill
    # would give at most 4 / 0.28 = 14 tokens/s; decode alone at most 4 / 0.08 = 50.
    def sleep(_module, args):
        time.sleep(0.2 if args[0].shape[1] > 1 else 0.02)
    model.model.norm.register_forward_pre_hook(sleep)
    decode = decode_speed(model, prompt_length=8, new_tokens=4, threads=1, warmup=0, repeats=3)
    assert decode.unit == "tokens/s" and decode.repeats == 3 and decode.new_tokens == 4
    assert 25 < decode.median <= 50 and math.isfinite(decode.noise)
    assert prefill_latency(model, 8, threads=1, warmup=0, repeats=1).median >= 200


@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")  # torch.load of packed int8
def test_torch_int8_replaces_linear_layers_and_stays_close(tmp_path):
    model, tokens = tiny_llama(layers=3), token_batch(4, 16)
    deployed = deploy_lm(model, "torch-int8", threads=1)
    last = len(model.model.layers) - 1
    floats = {name for name, m in deployed.named_modules() if type(m) is nn.Linear}
    assert floats == set(int8_float_layers(model)) and floats == (
        {f"model.layers.{i}.mlp.down_proj" for i in range(last + 1)}
        | {f"model.layers.{i}.{part}" for i in (0, last) for part in (
            "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "mlp.gate_proj", "mlp.up_proj")})
    assert isinstance(deployed.model.layers[1].mlp.up_proj, DYNAMIC_LINEAR)
    assert isinstance(deployed.lm_head, DYNAMIC_LINEAR)
    every = int8_dynamic(model, keep_float=[])
    assert not any(type(m) is nn.Linear for m in every.modules())
    assert deployed.lm_head.weight().qscheme() in (torch.per_channel_affine,
                                                   torch.per_channel_symmetric)
    assert type(model.lm_head) is nn.Linear  # the float model is left as it was
    assert deploy_lm(model, "torch") is model
    assert perplexity(deployed, tokens) == pytest.approx(perplexity(model, tokens), rel=0.03)

    torch.save(deployed, tmp_path / "int8.pt")  # the stored form the peak measurement loads
    loaded = torch.load(tmp_path / "int8.pt", weights_only=False)
    assert perplexity(loaded, tokens) == perplexity(deployed, tokens)

    result = measure_lm(model, val_tokens=tokens, test_tokens=token_batch(2, 16, seed=2),
                        runtime="torch-int8", threads=1, prompt_length=8, new_tokens=4,
                        warmup=1, repeats=3)
    assert result["perplexity"] == pytest.approx(perplexity(deployed, tokens), rel=1e-9)
    assert {"test_perplexity", "latency_ms", "latency_noise_ms", "tokens_per_s",
            "tokens_per_s_noise"} <= result.keys()
    assert "peak_memory_bytes" not in result
    assert result["measurement"]["weights"].startswith("int8 dynamic per-channel")
    assert result["measurement"]["threads"] == 1
    with pytest.raises(ValueError, match="unknown runtime"):
        deploy_lm(model, "tensorrt")


def test_pruned_model_round_trips_and_peak_generation_memory_is_measured(tmp_path):
    model = drop_layer(tiny_llama(layers=3), 1)
    tokens = token_batch(2, 10)
    model.save_pretrained(tmp_path, safe_serialization=True)
    loaded = type(model).from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert len(loaded.model.layers) == 2
    assert perplexity(loaded, tokens) == pytest.approx(perplexity(model, tokens), rel=1e-6)

    peak = peak_generation_bytes(model, prompt_length=8, new_tokens=4, threads=1, timeout_s=120)
    assert 0 < peak < 2**31


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_path_times_with_events_and_matches_cpu():
    model, tokens = tiny_llama(), token_batch(4, 16)
    result = measure_lm(model, val_tokens=tokens, runtime="torch", threads=1, prompt_length=8,
                        new_tokens=4, warmup=1, repeats=3, device="cuda")
    assert result["perplexity"] == pytest.approx(perplexity(model, tokens), rel=1e-3)
    assert result["latency_ms"] > 0 and result["tokens_per_s"] > 0
    assert result["measurement"]["device"] == "cuda"
    gpu = deploy_lm(model, "torch", device="cuda")
    prompt = fixed_prompt(gpu, 8, "cuda")
    assert torch.equal(greedy_decode(gpu, prompt, 6).cpu(),
                       greedy_decode(model, prompt.cpu(), 6))
