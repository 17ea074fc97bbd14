"""Embedding tables quantized per token, and tied weights stored, counted and quantized once."""

from __future__ import annotations

import copy

import pytest
import torch

from autocompress.measure import pack_model, stored_bits, stored_bytes
from autocompress.measure.memory import effective_state_dict
from autocompress.packing import aliases, pack_state_dict, unpack_state_dict
from autocompress.plan import Plan
from autocompress.techniques import quantize
from autocompress.techniques.common import Context, bake

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

VOCAB, HIDDEN, POSITIONS = 1000, 32, 64
WORDS = "bert.embeddings.word_embeddings.weight"
TABLES = {WORDS: (VOCAB, HIDDEN), "bert.embeddings.position_embeddings.weight": (POSITIONS, HIDDEN),
          "bert.embeddings.token_type_embeddings.weight": (2, HIDDEN)}


def context(model: torch.nn.Module, ids: torch.Tensor) -> Context:
    return Context(teacher=model, train_x=ids, train_y=torch.zeros(len(ids), dtype=torch.long),
                   example_input=ids[:1])


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64,
                                     max_position_embeddings=POSITIONS, num_labels=3)
    return transformers.BertForSequenceClassification(config).eval()


@pytest.fixture(scope="module")
def ids():
    return torch.randint(1, VOCAB, (16, 12), generator=torch.Generator().manual_seed(0))


def quantized(model, ids, **plan):
    return quantize.apply(copy.deepcopy(model), Plan({"quantize.bits": 4, **plan}),
                          context(model, ids))


def per_row_4bit(weight: torch.Tensor) -> torch.Tensor:
    """By hand: each row on its own symmetric grid of 15 levels, max |w| at the top."""
    rows = weight.detach().double().flatten(1)
    scale = rows.abs().amax(dim=1, keepdim=True) / 7
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (torch.round(rows / scale).clamp(-7, 7) * scale).reshape(weight.shape).float()


def test_word_embedding_table_is_stored_at_4_bits(bert, ids):
    model = quantized(bert, ids, **{"quantize.embeddings": True})
    assert all(stored_bits(model)[name] == 4 for name in TABLES)
    table = effective_state_dict(model)[WORDS]
    assert quantize.levels_per_channel(table) <= 15  # 4-bit symmetric: -7..7 per token
    record = len(pack_state_dict({WORDS: table}, {WORDS: 4})) - len(pack_state_dict({}))
    header = 2 + len(WORDS) + 1 + len("float32") + 1 + 2 * 4 + 8 + 3 * 4
    # one float32 scale per token, then 1000 x 32 codes of 4 bits, densely packed
    assert record == header + VOCAB * 4 + VOCAB * HIDDEN * 4 // 8 == header + 20_000


def test_quantized_tables_match_a_hand_computed_per_row_rounding(bert, ids):
    model = quantized(bert, ids, **{"quantize.embeddings": True})
    by_hand = copy.deepcopy(bert)
    state = by_hand.state_dict()
    for name in stored_bits(model):  # every weight quantize touched, tables included
        state[name] = per_row_4bit(state[name])
    by_hand.load_state_dict(state)
    with torch.no_grad():
        got, expected = model(ids).logits, by_hand(ids).logits
        tables_float = quantized(bert, ids)(ids).logits
    assert (got - expected).abs().max() < 1e-4
    assert (got - tables_float).abs().max() > 1e-3  # the tables really are rounded


def test_stored_size_shrinks_by_the_tables_saving(bert, ids):
    float_tables = quantized(bert, ids)
    assert not any(name in stored_bits(float_tables) for name in TABLES)  # default: as before
    assert not any(isinstance(m, torch.nn.Embedding) and hasattr(m, "parametrizations")
                   for m in float_tables.modules())
    tables_4bit = quantized(bert, ids, **{"quantize.embeddings": True})
    saving = sum(rows * cols * 4 - rows * 4 - -(-rows * cols * 4 // 8)
                 for rows, cols in TABLES.values())
    assert stored_bytes(float_tables) - stored_bytes(tables_4bit) == saving == 115_128
    baked = bake(copy.deepcopy(tables_4bit))
    assert len(pack_model(baked)) == stored_bytes(tables_4bit)  # measured as if baked
    restored = copy.deepcopy(bert)
    restored.load_state_dict(unpack_state_dict(pack_model(baked)))
    with torch.no_grad():
        assert torch.allclose(restored(ids).logits, baked(ids).logits, atol=1e-5)


def test_post_training_quantization_rounds_the_tables_too(bert, ids):
    model = quantized(bert, ids, **{"quantize.embeddings": True, "quantize.mode": "ptq"})
    table = model.bert.embeddings.word_embeddings
    assert quantize.levels_per_channel(table.weight) > 15  # float while fine-tuning
    quantize.quantize_after_training(model)
    assert quantize.levels_per_channel(table.weight) <= 15


def llama(tied: bool):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=POSITIONS,
                                      tie_word_embeddings=tied)
    return transformers.LlamaForCausalLM(config).eval()


def test_tied_embeddings_are_counted_once():
    tied, untied = llama(True), llama(False)
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    assert untied.lm_head.weight is not untied.model.embed_tokens.weight
    target = "model.embed_tokens.weight"
    assert aliases(effective_state_dict(tied)) == {"lm_head.weight": target}
    # the second copy of the 1000 x 32 float32 table is gone; an alias naming it is left
    assert stored_bytes(untied) - stored_bytes(tied) == VOCAB * HIDDEN * 4 - len(target)
    assert stored_bytes(tied) == len(pack_model(tied))


def test_packing_round_trips_with_the_tie_restored(ids):
    tied = llama(True)
    out = unpack_state_dict(pack_model(tied))
    assert out["lm_head.weight"] is out["model.embed_tokens.weight"]
    fresh = llama(True)
    with torch.no_grad():
        fresh.model.embed_tokens.weight.zero_()
    fresh.load_state_dict(out)
    assert fresh.lm_head.weight is fresh.model.embed_tokens.weight
    with torch.no_grad():
        assert torch.equal(fresh(ids).logits, tied(ids).logits)


def test_a_tied_table_gets_one_quantizer_and_is_stored_once(ids):
    tied = llama(True)
    plan = {"quantize.embeddings": True, "quantize.last_layer_8bit": True}
    model = quantized(tied, ids, **plan)
    head, table = model.lm_head, model.model.embed_tokens
    assert quantize._quantizer(head) is quantize._quantizer(table)
    assert head.weight_bits == table.weight_bits == 8  # the head's 8 bits hold for the table
    assert torch.equal(head.weight, table.weight)
    untied = quantized(llama(False), ids, **plan)
    assert untied.model.embed_tokens.weight_bits == 4 and untied.lm_head.weight_bits == 8
    baked = bake(copy.deepcopy(model))  # each layer now holds its own copy ...
    assert baked.lm_head.weight is not baked.model.embed_tokens.weight
    assert stored_bytes(baked) == stored_bytes(model)  # ... still counted once
    out = unpack_state_dict(pack_model(baked))
    assert out["lm_head.weight"] is out["model.embed_tokens.weight"]
    assert torch.allclose(out["lm_head.weight"], baked.lm_head.weight, atol=1e-6)
    float_table = quantized(tied, ids)  # tables float: the tied head stays float with it
    assert not hasattr(float_table.lm_head, "weight_bits")
    assert stored_bytes(float_table) < stored_bytes(tied)  # the rest is quantized
