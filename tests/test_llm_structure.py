"""Depth and width reduction of a decoder (autocompress.llm.structure) and text distillation."""

from __future__ import annotations

import copy

import pytest
import torch
from llm_tiny import tiny_llama, token_batch
from torch import nn

from autocompress.errors import ConfigError, TrialError
from autocompress.llm.distill import distill_lm, lm_kl
from autocompress.llm.structure import (
    ablation_importance,
    block_influence,
    choose_layers,
    drop_layers,
    head_importance,
    heads_to_keep,
    neuron_importance,
    prune_heads,
    prune_neurons,
)


class Identity(nn.Module):
    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


class Rotate(nn.Module):
    """Returns its input times a random orthogonal matrix: nearly orthogonal to the input."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(3)
        q, _ = torch.linalg.qr(torch.randn(hidden, hidden, generator=generator))
        self.register_buffer("q", q)

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states @ self.q


@torch.no_grad()
def logits(model, tokens):
    return model(input_ids=tokens, use_cache=False).logits


@torch.no_grad()
def greedy(model, prompt, steps: int, *, cache: bool):
    """Greedy decoding, with the KV cache or by recomputing the whole sequence each step."""
    seq, last, past, outs = prompt, [], None, []
    for _ in range(steps):
        if cache:
            out = model(input_ids=seq if past is None else seq[:, -1:], cache=past, use_cache=True)
            past = out.cache
        else:
            out = model(input_ids=seq, use_cache=False)
        last = out.logits[:, -1]
        outs.append(last)
        seq = torch.cat([seq, last.argmax(-1, keepdim=True)], dim=1)
    return seq, torch.stack(outs)


def assert_cache_consistent(model, prompt, steps: int = 6):
    with_cache, cached_logits = greedy(model, prompt, steps, cache=True)
    without, full_logits = greedy(model, prompt, steps, cache=False)
    assert torch.equal(with_cache, without)
    torch.testing.assert_close(cached_logits, full_logits, atol=1e-5, rtol=1e-4)
    generated = model.generate(prompt, max_new_tokens=steps, do_sample=False, use_cache=True)
    assert generated.shape[1] <= prompt.shape[1] + steps


def reloaded(model, path):
    import transformers

    model.save_pretrained(path)
    return transformers.LlamaForCausalLM.from_pretrained(path, attn_implementation="eager").eval()


def test_block_influence_identity_is_zero_rotation_is_high():
    model = tiny_llama(layers=3)
    model.model.layers[1] = Identity()
    model.model.layers[2] = Rotate(32)
    tokens = token_batch(3, 12)
    influence = block_influence(model, tokens, batch_size=2)
    assert len(influence) == 3
    assert abs(influence[1]) < 1e-5
    assert influence[2] > 0.5 and influence[2] > influence[0]
    ablation = ablation_importance(model, tokens)
    assert ablation[1] == pytest.approx(0.0, abs=1e-6)  # skipping an identity changes nothing
    assert choose_layers(influence, 1, "influence") == [1]


def test_choose_layers_rules():
    scores = [0.5, 0.1, 0.3, 0.1, 0.9]
    assert choose_layers(scores, 2, "ablation") == [1, 3]
    assert choose_layers(scores, 1, "influence") == [3]  # tie: the deeper layer
    assert choose_layers(scores, 2, "last") == [3, 4]
    assert choose_layers(scores, 2, "every_other") == [1, 3]
    assert choose_layers(scores, 1, "every_other") == [3]
    assert choose_layers(scores, 0, "last") == []
    for count, how in ((5, "last"), (3, "every_other"), (-1, "influence"), (1, "random")):
        with pytest.raises(ConfigError):
            choose_layers(scores, count, how)


def test_drop_layers_keeps_kv_cache_and_reloads(tmp_path):
    model = tiny_llama(layers=4)
    prompt = token_batch(2, 5, seed=4)
    assert_cache_consistent(model, prompt)
    drop_layers(model, [1, 2])
    assert model.config.num_hidden_layers == 2 and len(model.model.layers) == 2
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]
    tokens = token_batch(2, 10)
    assert logits(model, tokens).shape == (2, 10, 97)
    assert_cache_consistent(model, prompt)
    again = reloaded(model, tmp_path)
    torch.testing.assert_close(logits(again, tokens), logits(model, tokens), atol=0, rtol=0)
    assert_cache_consistent(again, prompt)
    with pytest.raises(ConfigError):
        drop_layers(model, [0, 1])  # every layer


def mask_heads(model, removed: list[list[int]]):
    """The unpruned model with the removed heads' o_proj input columns zeroed."""
    masked = copy.deepcopy(model)
    for layer, heads in zip(masked.model.layers, removed, strict=True):
        dim = layer.self_attn.head_dim
        with torch.no_grad():
            for h in heads:
                layer.self_attn.o_proj.weight[:, h * dim:(h + 1) * dim] = 0
    return masked


@pytest.mark.parametrize(("mode", "kept", "heads", "kv"),
                         [("query_heads", [[0, 3], [1, 2]], 2, 2),
                          ("kv_groups", [[2, 3], [0, 1]], 2, 1)])
def test_prune_heads_equals_masking_them(mode, kept, heads, kv, tmp_path):
    model = tiny_llama(heads=4, kv_heads=2)
    importance = [torch.tensor([0.9, 0.1, 0.6, 0.8]), torch.tensor([0.3, 0.9, 0.7, 0.2])]
    assert heads_to_keep(importance, 0.5, 2, mode) == kept
    removed = [[h for h in range(4) if h not in k] for k in kept]
    reference = mask_heads(model, removed)
    tokens = token_batch(3, 12)
    prune_heads(model, 0.5, importance=importance, mode=mode)
    cfg = model.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (heads, kv, 8)
    assert model.model.layers[0].self_attn.q_proj.weight.shape == (heads * 8, 32)
    assert model.model.layers[0].self_attn.k_proj.weight.shape == (kv * 8, 32)
    torch.testing.assert_close(logits(model, tokens), logits(reference, tokens))
    assert_cache_consistent(model, token_batch(2, 5, seed=4))
    again = reloaded(model, tmp_path)
    torch.testing.assert_close(logits(again, tokens), logits(model, tokens), atol=0, rtol=0)


def test_prune_neurons_equals_masking_them(tmp_path):
    model = tiny_llama(heads=4, kv_heads=2)
    tokens = token_batch(3, 12)
    importance = neuron_importance(model, tokens)
    kept = [sorted(torch.topk(s, 40).indices.tolist()) for s in importance]
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for layer, keep in zip(reference.model.layers, kept, strict=True):
            removed = [i for i in range(64) if i not in keep]
            layer.mlp.down_proj.weight[:, removed] = 0
    prune_neurons(model, 40 / 64, tokens)
    assert model.config.intermediate_size == 40
    assert model.model.layers[1].mlp.gate_proj.weight.shape == (40, 32)
    assert model.model.layers[1].mlp.down_proj.weight.shape == (32, 40)
    torch.testing.assert_close(logits(model, tokens), logits(reference, tokens))
    again = reloaded(model, tmp_path)
    torch.testing.assert_close(logits(again, tokens), logits(model, tokens), atol=0, rtol=0)
    assert_cache_consistent(again, token_batch(2, 5, seed=4))


def test_pruning_keeps_the_most_active_units():
    tokens = token_batch(3, 12)
    model = tiny_llama(heads=4, kv_heads=2)
    with torch.no_grad():
        model.model.layers[0].mlp.gate_proj.weight[5] = 0  # silu(0) * up = 0: a dead neuron
        model.model.layers[1].self_attn.v_proj.weight[:8] = 0  # KV head 0: heads 0, 1 dead
    neurons = neuron_importance(model, tokens)
    assert neurons[0][5] == 0 and neurons[0].argmin() == 5
    prune_neurons(model, 63 / 64, tokens)  # drops exactly the least active neuron per layer
    assert model.config.intermediate_size == 63
    heads = head_importance(model, tokens)
    assert heads[1][:2].max() == 0 and heads[1][2:].min() > 0
    assert heads_to_keep(heads, 0.5, 2, "kv_groups")[1] == [2, 3]
    by_hand = [torch.zeros(4) for _ in range(2)]  # the measure, by hand: norms of o_proj inputs

    def record(index):
        def hook(_module, args):
            norms = args[0].reshape(-1, 4, 8).norm(dim=-1)
            by_hand[index] += norms.sum(0) / norms.shape[0]
        return hook

    handles = [layer.self_attn.o_proj.register_forward_pre_hook(record(i))
               for i, layer in enumerate(model.model.layers)]
    logits(model, tokens)
    for handle in handles:
        handle.remove()
    for measured, manual in zip(heads, by_hand, strict=True):
        torch.testing.assert_close(measured, manual)
    mha = tiny_llama(heads=4, kv_heads=4)  # one head per group: a single dead head
    with torch.no_grad():
        mha.model.layers[0].self_attn.v_proj.weight[8:16] = 0
    prune_heads(mha, 0.75, tokens, mode="kv_groups")
    assert mha.config.num_attention_heads == 3
    assert heads_to_keep(head_importance(tiny_llama(heads=4, kv_heads=4), tokens), 1.0, 4,
                         "kv_groups")[0] == [0, 1, 2, 3]


def pattern_tokens(n: int = 16, length: int = 24, period: int = 7, vocab: int = 97):
    """A repeated pattern of ``period`` tokens, each row starting at another phase."""
    cycle = torch.randperm(vocab, generator=torch.Generator().manual_seed(5))[:period]
    index = (torch.arange(n)[:, None] + torch.arange(length)[None, :]) % period
    return cycle[index]


def test_distill_lm_closes_the_gap_and_keeps_masks(one_thread):
    tokens = pattern_tokens()
    teacher = tiny_llama(layers=4)
    optimizer = torch.optim.Adam(teacher.parameters(), lr=3e-3)
    teacher.train()
    for _ in range(40):  # a teacher that predicts the pattern: sharp, structured targets
        loss = teacher(input_ids=tokens, labels=tokens, use_cache=False).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    teacher.eval()
    student = drop_layers(copy.deepcopy(teacher), [1, 2])
    masks = {}
    with torch.no_grad():
        for name, param in student.named_parameters():
            if name.endswith("mlp.up_proj.weight"):
                masks[name] = param.abs() > param.abs().median()
                param.mul_(masks[name])
    zeros = sum(int((p == 0).sum()) for p in student.parameters())
    before = lm_kl(student, teacher, tokens)
    result = distill_lm(student, teacher, tokens, max_steps=40, lr=3e-3, batch_size=4,
                        temperature=2.0, masks=masks)  # 40 steps: 10 passes over 16 rows
    after = lm_kl(student, teacher, tokens)
    assert result["steps"] == 40 and result["stopped"] == "done"
    assert after < 0.5 * before, (before, after)
    assert sum(int((p == 0).sum()) for p in student.parameters()) == zeros
    assert not student.training
    seen = []
    short = distill_lm(student, teacher, tokens, epochs=3, batch_size=8, hidden_weight=0.1,
                       layer_map=[0, 3], on_step=lambda step, loss: seen.append(loss) or step == 2)
    assert short["steps"] == 2 and short["stopped"] == "on_step" and len(seen) == 2
    assert distill_lm(student, teacher, tokens, time_limit_s=0)["steps"] == 0
    with torch.no_grad():
        student.model.norm.weight[0] = float("nan")
    with pytest.raises(TrialError):
        distill_lm(student, teacher, tokens, max_steps=1)
