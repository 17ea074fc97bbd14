"""Students for any traced graph: width by coupled group, depth by whole blocks, no factory.

A user's residual CNN and tiny Hugging Face models (random weights, built from configs) each
get narrower and shallower, keep their output shape and still run (Llama still generates with
its KV cache).
"""

from __future__ import annotations

import pytest
import torch
from helpers import ctx_for
from test_prune_groups import ResidualCNN, widths
from torch import nn

from autocompress.errors import TrialError
from autocompress.outputs import logits_of
from autocompress.plan import Plan
from autocompress.techniques import depth, student
from autocompress.techniques.common import Context, count_parameters
from autocompress.techniques.training import fit

transformers = pytest.importorskip("transformers")


def _images(channels: int, classes: int = 10, n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(n, channels, 32, 32, generator=generator),
            torch.randint(0, classes, (n,), generator=generator))


def _tokens(n: int = 16, length: int = 10) -> torch.Tensor:
    return torch.randint(0, 100, (n, length), generator=torch.Generator().manual_seed(0))


def resnet():
    config = transformers.ResNetConfig(num_channels=1, embedding_size=16, hidden_sizes=[16, 32],
                                       depths=[1, 1], num_labels=10)
    return transformers.ResNetForImageClassification(config), *_images(1)


def mobilenet():
    config = transformers.MobileNetV2Config(num_channels=3, image_size=32, depth_multiplier=0.25,
                                            finegrained_output=False, num_labels=10)
    return transformers.MobileNetV2ForImageClassification(config), *_images(3)


def bert():
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, num_labels=3)
    ids = _tokens()
    return transformers.BertForSequenceClassification(config), ids, ids[:, 0] % 3


def llama():
    config = transformers.LlamaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2,
                                      intermediate_size=64)
    ids = _tokens()
    return transformers.LlamaForCausalLM(config), ids, ids  # targets: the tokens themselves


BUILDERS = {"resnet": resnet, "mobilenet_v2": mobilenet, "bert": bert, "llama": llama}


@pytest.fixture(scope="module", params=list(BUILDERS))
def hf_model(request):
    torch.manual_seed(0)
    model, x, y = BUILDERS[request.param]()
    return request.param, model.eval(), x, y


def _ctx(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Context:
    return Context(teacher=model, train_x=x, train_y=y, example_input=x[:1])


def _run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return logits_of(model.eval()(x[:2]))


def test_width_halves_every_group_of_a_residual_cnn(digits):
    torch.manual_seed(0)
    teacher = ResidualCNN().eval()
    small = student.apply(teacher, Plan({"student.width": 0.5}), ctx_for(teacher, digits))
    assert widths(small) == {"trunk": 16, "block1": 16, "block2": 16}
    assert widths(teacher) == {"trunk": 32, "block1": 32, "block2": 32}  # the teacher untouched
    assert small(digits.val.x[:3]).shape == (3, 10)
    scratch = student.apply(teacher, Plan({"student.width": 0.5, "student.migrate": False}),
                            ctx_for(teacher, digits))
    assert widths(scratch) == widths(small)


def test_depth_drops_a_users_residual_block(digits):
    teacher = ResidualCNN().eval()
    assert [b.name for b in depth.find_blocks(teacher, digits.train.x[:1])] == ["block1",
                                                                                "block2"]
    small = student.apply(teacher, Plan({"student.drop_layers": 1}), ctx_for(teacher, digits))
    assert isinstance(small.block2, depth.Skip) and isinstance(small.block1, type(teacher.block1))
    assert small(digits.val.x[:3]).shape == (3, 10)
    with pytest.raises(TrialError, match="2 droppable blocks"):
        student.apply(teacher, Plan({"student.drop_layers": 3}), ctx_for(teacher, digits))


class Branches(nn.Module):
    """Residual branches the parent adds: ``x = relu(x + block(x))`` over a ModuleList."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16))
            for _ in range(3))
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor, skip: int | None = None) -> torch.Tensor:
        x = self.stem(x)
        for i, block in enumerate(self.blocks):
            if i != skip:
                x = torch.relu(x + block(x))
        return self.head(x.mean(dim=(2, 3)))


def test_a_dropped_residual_branch_adds_nothing(digits):
    teacher = Branches().eval()
    blocks = depth.find_blocks(teacher, digits.train.x[:1])
    assert [(b.name, b.branch) for b in blocks] == [(f"blocks.{i}", True) for i in range(3)]
    small = student.apply(teacher, Plan({"student.drop_layers": 1}), ctx_for(teacher, digits))
    assert isinstance(small.blocks[2], depth.Skip) and small.blocks[2].zero
    with torch.no_grad():  # exactly the teacher without its last block
        torch.testing.assert_close(small(digits.val.x), teacher(digits.val.x, skip=2))
    assert not any(b.branch for b in depth.find_blocks(ResidualCNN(), digits.train.x[:1]))


def test_width_on_hugging_face_models(hf_model):
    name, teacher, x, y = hf_model
    expected = _run(teacher, x).shape
    small = student.apply(teacher, Plan({"student.width": 0.5}), _ctx(teacher, x, y))
    assert count_parameters(small) < count_parameters(teacher), name
    assert _run(small, x).shape == expected


def test_depth_on_hugging_face_models_removes_exactly_one_block(hf_model):
    name, teacher, x, y = hf_model
    expected = _run(teacher, x).shape
    before = len(depth.find_blocks(teacher, x[:1]))
    small = student.apply(teacher, Plan({"student.drop_layers": 1}), _ctx(teacher, x, y))
    assert len(depth.find_blocks(small, x[:1])) == before - 1, name
    assert count_parameters(small) < count_parameters(teacher)
    assert _run(small, x).shape == expected
    if name == "llama":  # the later layer was renumbered: the KV cache still lines up
        assert small.config.num_hidden_layers == 1
        assert [layer.self_attn.layer_idx for layer in small.model.layers] == [0]
        cached = small.generate(x[:1], max_new_tokens=3, do_sample=False, use_cache=True)
        fresh = small.generate(x[:1], max_new_tokens=3, do_sample=False, use_cache=False)
        assert cached.shape == (1, x.shape[1] + 3) and torch.equal(cached, fresh)


def test_bert_depth_maps_the_kept_blocks_for_block_distillation():
    teacher, x, y = bert()
    ctx = _ctx(teacher.eval(), x, y)
    small = student.apply(teacher, Plan({"student.drop_layers": 1}), ctx)
    assert len(small.bert.encoder.layer) == 1 and ctx.registered.block_map == (0,)


class ThreeBlocks(nn.Module):
    """A residual CNN with three blocks: the hand-built case for ablation."""

    def __init__(self) -> None:
        super().__init__()
        net = ResidualCNN(channels=16)
        self.stem, self.pool, self.fc = net.stem, net.pool, net.fc
        self.block1, self.block2, self.block3 = net.block1, net.block2, type(net.block1)(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.block3(self.block2(self.block1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(h), 1))


@pytest.mark.usefixtures("one_thread")
def test_ablation_drops_the_block_whose_skipping_hurts_least(digits):
    torch.manual_seed(0)
    model = ThreeBlocks()
    with torch.no_grad():  # block1 adds nothing: skipping it cannot change the output
        model.block1.bn2.weight.zero_()
        model.block1.bn2.bias.zero_()
    for p in model.block1.parameters():
        p.requires_grad_(False)
    fit(model, digits.train.x, digits.train.y, epochs=3, batch_size=64)
    model.eval()
    blocks = depth.find_blocks(model, digits.train.x[:1])
    assert [b.name for b in blocks] == ["block1", "block2", "block3"]
    x, y = depth.calibration_batch(digits.train.x, digits.train.y, seed=0)
    losses = depth.losses(depth.skipping_each(model, blocks), x, y)
    assert losses.index(min(losses)) == 0
    assert depth.choose(3, 1, "ablation", losses) == [0]
    assert depth.choose(3, 1, "last") == [2] and depth.choose(3, 1, "every_other") == [1]
    assert depth.choose(5, 3, "every_other") == [1, 3, 4]
    plan = Plan({"student.drop_layers": 1, "student.block_choice": "ablation"})
    small = student.apply(model, plan, ctx_for(model, digits))
    assert isinstance(small.block1, depth.Skip) and not isinstance(small.block3, depth.Skip)
    with torch.no_grad():
        torch.testing.assert_close(small(digits.val.x), model(digits.val.x))


def test_flat_stacks_honour_the_block_choice(mlp_teacher, digits):
    assert student.droppable(mlp_teacher) == [1, 3]
    x, y = depth.calibration_batch(digits.train.x, digits.train.y, seed=0)
    losses = depth.losses((student.drop_layers(mlp_teacher, 1, positions=[p]) for p in (1, 3)),
                          x, y)
    plan = Plan({"student.drop_layers": 1, "student.block_choice": "ablation"})
    small = student.apply(mlp_teacher, plan, ctx_for(mlp_teacher, digits))
    gone = [1, 3][losses.index(min(losses))]
    assert isinstance(small[gone], nn.Identity) and isinstance(small[4 - gone], nn.Linear)
    both = student.drop_layers(mlp_teacher, 2)  # adjacent drops bridge into one layer
    assert [type(m).__name__ for m in both].count("Linear") == 1
    expected = mlp_teacher[5].weight @ mlp_teacher[3].weight @ mlp_teacher[1].weight
    torch.testing.assert_close(both[5].weight, expected)


class Detached(nn.Module):
    """A forward autograd cannot follow: nothing to trace."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU())
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.head(self.body(x))


def test_an_untraceable_teacher_without_a_factory_fails_clearly(digits):
    teacher = Detached()
    with pytest.raises(TrialError, match=r"cannot trace Detached.*student_factory"):
        student.apply(teacher, Plan({"student.width": 0.5}), ctx_for(teacher, digits))
    built = student.apply(teacher, Plan({"student.width": 0.5}), ctx_for(
        teacher, digits, student_factory=lambda plan, t: nn.Sequential(nn.Flatten(),
                                                                        nn.Linear(64, 10))))
    assert built[1].out_features == 10
