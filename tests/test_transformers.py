"""Transformer encoders: heads, neurons and blocks removed correctly; block-to-block KD."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from autocompress.plan import Plan
from autocompress.tasks import accuracy
from autocompress.tasks.vit import ViT
from autocompress.techniques import quantize, transformer
from autocompress.techniques.common import Context, weight_layers
from autocompress.techniques.encoder import Encoder
from autocompress.techniques.training import (
    BlockMatch,
    attention_map_loss,
    fit,
    hidden_state_loss,
    task_loss,
)


def small_vit(digits, depth: int = 4) -> ViT:
    torch.manual_seed(0)
    return ViT(digits.input_shape, digits.num_classes, dim=32, depth=depth, heads=4, hidden=64)


def ctx(teacher, digits) -> Context:
    return Context(teacher=teacher, train_x=digits.train.x, train_y=digits.train.y,
                   example_input=digits.train.x[:1])


def test_removing_heads_equals_masking_their_output(digits):
    model = small_vit(digits, depth=2).eval()
    encoder = Encoder.find(model)
    block = encoder.blocks[0]
    masked = copy.deepcopy(model)
    out = Encoder.find(masked).attention(masked.blocks[0]).out
    with torch.no_grad():  # heads 1 and 3 contribute nothing: their output columns are zero
        out.weight[:, transformer.head_rows([1, 3], 8)] = 0.0
    transformer.remove_heads(encoder, block, [0, 2])
    view = encoder.attention(block)
    assert view.module.heads == 2 and view.query.out_features == 16 and view.out.in_features == 16
    x = digits.val.x[:32]
    with torch.no_grad():
        torch.testing.assert_close(model(x), masked(x), atol=1e-5, rtol=1e-5)


def test_removing_ffn_neurons_equals_masking_them(digits):
    model = small_vit(digits, depth=2).eval()
    masked = copy.deepcopy(model)
    with torch.no_grad():
        masked.blocks[1].ffn[2].weight[:, 10:] = 0.0
    encoder = Encoder.find(model)
    transformer.remove_neurons(encoder, encoder.blocks[1], list(range(10)))
    assert encoder.ffn(encoder.blocks[1])[0].out_features == 10
    x = digits.val.x[:32]
    with torch.no_grad():
        torch.testing.assert_close(model(x), masked(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("how, expected", [("first", [0, 1]), ("every_other", [0, 2]),
                                           ("every_other_many", [0, 1, 2, 4, 5])])
def test_block_choices(how, expected):
    if how == "every_other_many":
        assert transformer.choose_blocks(6, 5, "every_other") == expected
    else:
        assert transformer.choose_blocks(4, 2, how) == expected
    assert transformer.choose_blocks(4, 3, "top", [0.1, 0.9, 0.5, 0.7]) == [1, 2, 3]


@pytest.mark.parametrize("how", ["every_other", "top", "first"])
def test_dropping_blocks_with_migration_starts_above_chance(vit_teacher, digits, how):
    # ten classes: chance is 0.1; the teacher reaches about 0.85 on these 8x8 digits
    halves = {"transformer.blocks": 2, "transformer.block_choice": how}
    c = ctx(vit_teacher, digits)
    student = transformer.apply(vit_teacher, Plan(halves), c)
    assert student is not vit_teacher and len(vit_teacher.blocks) == 4  # the teacher is intact
    assert len(student.blocks) == 2 and len(c.registered.block_map) == 2
    migrated = accuracy(student, digits.val)
    assert migrated > 0.4, (how, migrated)
    fresh = transformer.apply(vit_teacher, Plan({**halves, "transformer.migrate": False}),
                              ctx(vit_teacher, digits))
    assert accuracy(fresh, digits.val) < 0.2
    # heads and neurons halved too, still above chance before any fine-tuning
    cut = transformer.apply(vit_teacher, Plan({**halves, "transformer.heads": 0.5,
                                               "transformer.ffn": 0.5}), ctx(vit_teacher, digits))
    assert all(b.attn.heads == 2 and b.ffn[0].out_features == 32 for b in cut.blocks)
    assert accuracy(cut, digits.val) > 0.15


def test_top_blocks_are_the_ones_whose_removal_costs_most(vit_teacher, digits):
    encoder = Encoder.find(copy.deepcopy(vit_teacher))
    calib = torch.randperm(len(digits.train.y), generator=torch.Generator().manual_seed(0))[:512]
    costs = transformer.block_importance(encoder.holder, encoder, digits.train.x[calib],
                                         digits.train.y[calib])  # the plan's seed, 0
    plan = Plan({"transformer.blocks": 2, "transformer.block_choice": "top"})
    c = ctx(vit_teacher, digits)
    transformer.apply(vit_teacher, plan, c)
    expected = sorted(sorted(range(4), key=lambda i: -costs[i])[:2])
    assert list(c.registered.block_map) == expected


def test_hidden_state_and_attention_losses_match_a_hand_computation(vit_teacher, digits):
    plan = Plan({"transformer.blocks": 2, "transformer.block_choice": "every_other",
                 "transformer.heads": 0.5})
    c = ctx(vit_teacher, digits)
    student = transformer.apply(vit_teacher, plan, c)
    assert c.registered.block_map == (0, 2)
    x = digits.val.x[:16]
    match = BlockMatch(student, vit_teacher, c.registered.block_map, hidden_weight=2.0,
                        attention_weight=3.0, example=x[:2])
    try:
        student.train()
        student(x)
        got = match.loss(x)
    finally:
        match.close()

    def states(model):  # each block's output and head-averaged attention map, by hand
        tokens = model.embed(model.patches(x))
        tokens = torch.cat([model.cls.expand(len(x), -1, -1), tokens], dim=1) + model.pos
        outs, maps = [], []
        for block in model.blocks:
            h = block.norm1(tokens)
            a = block.attn
            q = a.query(h).reshape(len(x), -1, a.heads, a.head_dim).transpose(1, 2)
            k = a.key(h).reshape(len(x), -1, a.heads, a.head_dim).transpose(1, 2)
            maps.append((q @ k.transpose(-2, -1) / a.head_dim ** 0.5).softmax(-1).mean(dim=1))
            tokens = block(tokens)
            outs.append(tokens)
        return outs, maps

    with torch.no_grad():
        s_out, s_maps = states(student)
        t_out, t_maps = states(vit_teacher)
    hidden = (F.mse_loss(s_out[0], t_out[0]) + F.mse_loss(s_out[1], t_out[2])) / 2
    maps = (F.mse_loss(s_maps[0], t_maps[0]) + F.mse_loss(s_maps[1], t_maps[2])) / 2
    torch.testing.assert_close(got.detach(), 2.0 * hidden + 3.0 * maps, atol=1e-5, rtol=1e-4)
    assert not any(b.attn.keep_probs for b in vit_teacher.blocks)  # the teacher is left as it was


def test_the_pure_losses_on_known_numbers():
    s = [torch.ones(2, 3, 4), torch.zeros(2, 3, 4)]
    t = [torch.zeros(2, 3, 4), torch.full((2, 3, 4), 2.0)]
    identity = [torch.nn.Identity(), torch.nn.Identity()]
    assert float(hidden_state_loss(s, t, identity)) == pytest.approx((1.0 + 4.0) / 2)
    maps_s = [torch.full((1, 2, 3, 3), 0.5)]
    maps_t = [torch.stack([torch.zeros(3, 3), torch.ones(3, 3)])[None]]  # mean over heads 0.5
    assert float(attention_map_loss(maps_s, maps_t)) == 0.0


def test_patch_embedding_stays_float_unless_asked(vit_teacher, digits):
    for embeddings, expected in ((False, 32), (True, 4)):
        model = copy.deepcopy(vit_teacher)
        plan = Plan({"quantize.bits": 4, "quantize.embeddings": embeddings})
        quantize.apply(model, plan, ctx(vit_teacher, digits))
        bits = {name: getattr(m, "weight_bits", 32) for name, m in weight_layers(model)}
        assert bits["embed"] == expected
        assert all(b == 4 for name, b in bits.items() if name != "embed")


def bert_classifier(transformers, attention: str = "eager"):
    from autocompress.tasks.hf import EncoderClassifier

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=4,
                                     num_attention_heads=4, intermediate_size=64,
                                     max_position_embeddings=16, attn_implementation=attention)
    return EncoderClassifier(transformers.BertModel(config), num_classes=2)


def test_a_small_random_bert_goes_through_a_three_trial_search(tmp_path):
    transformers = pytest.importorskip("transformers")
    import autocompress

    teacher = bert_classifier(transformers)
    ids = torch.randint(1, 60, (600, 12))
    labels = (ids == 7).any(dim=1).long()  # does token 7 occur? learnable from the ids alone
    fit(teacher, ids[:400], labels[:400], epochs=8, batch_size=32)
    teacher.eval()
    outcome = autocompress.search(
        teacher, train=(ids[:400], labels[:400]), val=(ids[400:], labels[400:]),
        space={"transformer": {"blocks": [2, 4], "block_choice": ["every_other", "top"],
                               "heads": {"low": 0.5, "high": 1.0}, "ffn": {"low": 0.5,
                                                                          "high": 1.0}},
               "quantize": {"bits": [8, 32]},
               "distill": {"hidden_weight": [0.0, 1.0], "attention_weight": [1.0]}},
        trials=3, sampler="random", seed=2, finetune_epochs=1,  # ONNX Runtime, int8 at 8 bits
        out_dir=tmp_path, progress=None,
    )
    assert len(outcome.results) == 3
    assert all(r.state != "failed" for r in outcome.results), [r.reason for r in outcome.results]
    assert all(r.metrics["memory_bytes"] <= outcome.teacher["memory_bytes"]
               for r in outcome.results)
    assert outcome.results[0].measurement["latency"]["runtime"].startswith("onnxruntime")
    assert len(teacher.encoder.encoder.layer) == 4  # the user's model is left as it was


def test_attention_maps_of_a_bert_need_eager_attention():
    transformers = pytest.importorskip("transformers")
    from autocompress.errors import TrialError

    teacher = bert_classifier(transformers, attention="sdpa").eval()
    ids = torch.randint(1, 60, (4, 12))
    match = BlockMatch(copy.deepcopy(teacher), teacher, None, hidden_weight=0.0,
                        attention_weight=1.0, example=ids[:2])
    try:
        with pytest.raises(TrialError, match="attn_implementation='eager'"):
            match.loss(ids)
    finally:
        match.close()


def test_an_embedding_bert_is_distilled_towards_the_teachers_embeddings(tmp_path):
    transformers = pytest.importorskip("transformers")
    import autocompress
    from autocompress.tasks.hf import EncoderEmbedder, embedding_similarity, teacher_embeddings

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=4,
                                     num_attention_heads=4, intermediate_size=64,
                                     max_position_embeddings=16)
    teacher = EncoderEmbedder(transformers.BertModel(config)).eval()
    ids = torch.randint(1, 60, (500, 12))
    ids[::3, 9:] = 0  # some padding, masked out of the mean
    targets = teacher_embeddings(teacher, ids)
    # the loss of an embedding task is one minus the cosine similarity to the targets
    assert float(task_loss(targets, targets)) == pytest.approx(0.0, abs=1e-6)
    outcome = autocompress.search(
        teacher, train=(ids[:400], targets[:400]), val=(ids[400:], targets[400:]),
        metric=embedding_similarity,
        space={"transformer": {"blocks": [2], "migrate": [False]},  # starts far from it
               "distill": {"hidden_weight": [1.0]}},
        trials=2, sampler="random", seed=1, runtime="torch", finetune_epochs=3,
        out_dir=tmp_path, progress=None,
    )
    assert outcome.teacher["accuracy"] == pytest.approx(1.0, abs=1e-5)  # the teacher vs itself
    assert all(r.ok for r in outcome.results), [r.reason for r in outcome.results]
    student = copy.deepcopy(teacher)
    c = Context(teacher=teacher, train_x=ids[:400], train_y=targets[:400],
                example_input=ids[:1])
    plan = Plan({"transformer.blocks": 2, "transformer.migrate": False}, seed=outcome.results[0]
                .plan.seed)
    fresh = transformer.apply(student, plan, c)
    start = embedding_similarity(fresh, type("Split", (), {"x": ids[400:], "y": targets[400:]}))
    trained = outcome.results[0].metrics["accuracy"]
    assert trained > start + 0.1, (start, trained)  # distillation pulled it towards the teacher
