"""The fine-tuning loop and the distillation losses, in one place every technique imports.

loss = alpha * KL(softmax(t / T) || softmax(s / T)) * T**2 + (1 - alpha) * task_loss(s, y)
       + feature_weight * MSE(P(student features), teacher features)
       + hidden_weight * mean over matched blocks MSE(P_b(student block out), teacher block out)
       + attention_weight * mean over matched blocks MSE(student map, teacher map)

The T**2 factor keeps the soft term's gradients on the scale of the hard term's (Hinton et al.
2015). The optional feature term matches the inputs of the last weight layer (the penultimate
features), through a learned linear map ``P`` when the student is narrower (FitNets, Romero et
al. 2015); ``P`` is trained with the student and then dropped. The teacher's logits and features
come precomputed in the context, once per study.

For transformers, each student block is matched with the teacher block it was taken from
(``ctx.registered.block_map``; TinyBERT, Jiao et al. 2020, matches blocks the same way): the
hidden-state term compares block outputs (through a learned linear map ``P_b`` where widths
differ), the attention term compares attention maps averaged over heads (head pruning changes
their number).

:func:`train_epochs` is the loop itself, shared by :func:`fit` and by a provider's
:class:`Trainer`; :func:`recipe_for` picks how it optimises a given model (:class:`Recipe`).
This module imports no technique: techniques import it, never the reverse.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from autocompress.errors import TrialError
from autocompress.plan import Plan
from autocompress.techniques.common import weight_layers
from autocompress.techniques.encoder import Encoder

if TYPE_CHECKING:
    from autocompress.techniques.common import Context


@dataclass(frozen=True)
class Distillation:
    """The weights of the loss above for one fine-tune, whichever trainer runs it."""

    temperature: float
    alpha: float
    feature_weight: float = 0.0
    hidden_weight: float = 0.0
    attention_weight: float = 0.0


class Trainer(Protocol):
    """A fine-tuning step that replaces :func:`fit` (a provider's quantizer or distiller).

    A technique registers one with ``ctx.use_trainer``; the distillation technique then runs
    it with its :class:`Distillation`. Two registered trainers must ``combine`` into one (NNI's
    quantizer and distiller wrap the same loop) or raise :class:`TrialError`.
    """

    def __call__(self, model: nn.Module, plan: Plan, ctx: Context,
                 loss: Distillation) -> nn.Module: ...

    def combine(self, other: Trainer) -> Trainer: ...


def is_embedding_target(outputs: torch.Tensor, targets: torch.Tensor) -> bool:
    """Targets that are vectors shaped like the outputs (a teacher's embeddings), not labels."""
    return targets.is_floating_point() and targets.shape == outputs.shape


def task_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The training loss of a task: cross-entropy against class labels (per token for a
    language model's ``(batch, length, vocabulary)`` logits) or, for an embedding model whose
    targets are the teacher's embeddings, one minus their mean cosine similarity."""
    if is_embedding_target(outputs, targets):
        return 1.0 - F.cosine_similarity(outputs, targets, dim=-1).mean()
    return F.cross_entropy(outputs.flatten(0, -2), targets.flatten())


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """The distillation loss above; the task's loss when there is no teacher or alpha is 0.

    For an embedding model the "labels" are the teacher's embeddings: the loss is then one minus
    their cosine similarity (:func:`task_loss`), with no softened term (a softmax over embedding
    dimensions means nothing)."""
    hard = task_loss(student_logits, labels)
    if teacher_logits is None or alpha == 0.0 or is_embedding_target(student_logits, labels):
        return hard
    soft = F.kl_div(  # per example, or per token: rows of (..., classes) logits
        F.log_softmax(student_logits.flatten(0, -2) / temperature, dim=-1),
        F.log_softmax(teacher_logits.flatten(0, -2) / temperature, dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    return alpha * soft * temperature**2 + (1.0 - alpha) * hard


class _FeatureMatch:
    """Captures the student's penultimate features and scores them against the teacher's."""

    def __init__(self, model: nn.Module, target: torch.Tensor) -> None:
        last = weight_layers(model)[-1][1]
        self.target = target
        self.current: torch.Tensor | None = None
        self.handle = last.register_forward_pre_hook(self._capture)
        width = last.weight.shape[1] if isinstance(last, nn.Linear) else None
        same = width == target.shape[1]
        self.projection = nn.Identity() if same else nn.LazyLinear(target.shape[1], bias=False)

    def _capture(self, _: nn.Module, args: tuple) -> None:
        self.current = args[0].flatten(1)

    def loss(self, idx: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self.projection(self.current), self.target[idx])


def hidden_state_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor],
                      projections: Sequence[nn.Module]) -> torch.Tensor:
    """Mean over matched blocks of MSE(P_b(student output), teacher output)."""
    terms = [F.mse_loss(p(s), t) for s, t, p in zip(student, teacher, projections, strict=True)]
    return torch.stack(terms).mean()


def attention_map_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]
                       ) -> torch.Tensor:
    """Mean over matched blocks of MSE between head-averaged attention maps (batch, n, n)."""
    terms = [F.mse_loss(s.mean(dim=1), t.mean(dim=1)) for s, t in zip(student, teacher,
                                                                       strict=True)]
    return torch.stack(terms).mean()


class BlockMatch:
    """Captures matched student and teacher block outputs (and attention maps) per batch."""

    def __init__(self, student: nn.Module, teacher: nn.Module, block_map: Sequence[int] | None,
                 *, hidden_weight: float, attention_weight: float, example: torch.Tensor
                 ) -> None:
        self.teacher = copy.deepcopy(teacher).eval()  # hooks never touch the shared teacher
        mine, theirs = Encoder.find(student), Encoder.find(self.teacher)
        if mine is None or theirs is None:
            raise TrialError("distill.hidden_weight / attention_weight need a transformer "
                             "student and teacher")
        self.map = list(block_map) if block_map is not None else list(range(len(mine.blocks)))
        if len(self.map) != len(mine.blocks) or max(self.map) >= len(theirs.blocks):
            raise TrialError("distill: the student's blocks do not map onto the teacher's")
        self.weights = (hidden_weight, attention_weight)
        self.student_out: dict[int, torch.Tensor] = {}
        self.teacher_out: dict[int, torch.Tensor] = {}
        self.hooks = [block.register_forward_hook(self._keep(self.student_out, i))
                      for i, block in enumerate(mine.blocks)]
        self.hooks += [theirs.blocks[j].register_forward_hook(self._keep(self.teacher_out, j))
                       for j in set(self.map)]
        self.encoders = (mine, theirs)
        self.student_maps: dict[int, torch.Tensor | None] = {}
        self.teacher_maps: dict[int, torch.Tensor | None] = {}
        if attention_weight > 0:
            self.hooks += [mine.keep_attention_maps(block, self.student_maps, i)
                           for i, block in enumerate(mine.blocks)]
            self.hooks += [theirs.keep_attention_maps(theirs.blocks[j], self.teacher_maps, j)
                           for j in set(self.map)]
        with torch.no_grad():
            student.eval()(example)
            self.teacher(example)
        self.projections = nn.ModuleList(
            nn.Identity() if self.student_out[i].shape[-1] == self.teacher_out[j].shape[-1]
            else nn.Linear(self.student_out[i].shape[-1], self.teacher_out[j].shape[-1],
                           bias=False)
            for i, j in enumerate(self.map))

    @staticmethod
    def _keep(store: dict[int, torch.Tensor], index: int):
        def hook(_module, _inputs, output) -> None:
            store[index] = output[0] if isinstance(output, tuple) else output
        return hook

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """After the student's forward on ``x``: the weighted block terms."""
        with torch.no_grad():
            self.teacher(x)
        hidden_weight, attention_weight = self.weights
        total = torch.zeros(())
        if hidden_weight > 0:
            total = total + hidden_weight * hidden_state_loss(
                [self.student_out[i] for i in range(len(self.map))],
                [self.teacher_out[j] for j in self.map], self.projections)
        if attention_weight > 0:
            mine = [self.student_maps[i] for i in range(len(self.map))]
            theirs = [self.teacher_maps[j] for j in self.map]
            if any(m is None for m in mine + theirs):
                raise TrialError("distill.attention_weight: this encoder does not return its "
                                 "attention maps; load it with attn_implementation='eager'")
            total = total + attention_weight * attention_map_loss(mine, theirs)
        return total

    def close(self) -> None:
        for hook in self.hooks:
            hook.remove()
        for encoder in self.encoders:
            encoder.forget_attention_maps()


PRETRAINED_SIZE = 1_000_000  # parameters from which a model is taken to be pretrained


@dataclass(frozen=True)
class Recipe:
    """How a fine-tune optimises, every value resolved; the defaults are the from-scratch one."""

    lr: float = 1e-3
    optimizer: str = "adam"
    schedule: str = "constant"
    warmup: float = 0.0  # share of the steps over which the rate ramps up from 0
    weight_decay: float = 0.0


def recipe_for(model: nn.Module, **chosen: float | str) -> Recipe:
    """The recipe for fine-tuning ``model``: each value in ``chosen`` (``lr``, ``optimizer``,
    ``schedule``, ``warmup``, ``weight_decay``) as given, those ``"auto"`` or missing by its kind.

    Our teachers (MLP, CNN, ViT: small, trained from scratch by this loop at Adam 1e-3) get just
    that: Adam, 1e-3, constant, no warm-up, no decay; their trials are unchanged. A model taken
    to be pretrained (1M parameters or more, an embedding table, or a Hugging Face model) gets
    the usual fine-tuning recipe (Devlin et al. 2019): AdamW, weight decay 0.01, linear decay
    after a 10% warm-up, at ``1e-4 * sqrt(4M / parameters)``, at most 1e-3: 1e-4 at 4M (Turc et
    al. 2019's small BERTs), 1.9e-5 for BERT-base, within BERT's 2e-5..5e-5. Adam moves each
    weight by about ``lr`` a step whatever its gradient, so a wider model needs a smaller rate
    (1 / width under muP, Yang et al. 2021: 1 / sqrt(parameters) at a given depth), and the
    from-scratch rate throws a pretrained one out of its optimum (a pretrained sentence encoder
    fine-tuned towards itself for an epoch kept cosine 0.25 with itself at 1e-3, 0.985 at 1e-4).
    """
    size = sum(p.numel() for p in model.parameters())
    pretrained = size >= PRETRAINED_SIZE or any(
        isinstance(m, nn.Embedding | nn.EmbeddingBag)
        or hasattr(getattr(m, "config", None), "model_type") for m in model.modules())
    rate = min(1e-3, 1e-4 * math.sqrt(4e6 / max(1, size)))
    auto = Recipe(rate, "adamw", "linear", 0.1, 0.01) if pretrained else Recipe()
    return replace(auto, **{k: v for k, v in chosen.items() if v != "auto"})


def lr_factor(step: int, total: int, schedule: str, warmup: float) -> float:
    """The rate's multiplier at optimiser step ``step`` (0-based) of ``total``: a linear ramp
    over the first ``warmup`` share of the steps, then constant, or a cosine or linear decay."""
    ramp = round(warmup * total)
    if step < ramp:
        return (step + 1) / ramp
    done = (step - ramp) / max(1, total - ramp)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * done))
    return 1.0 - done if schedule == "linear" else 1.0


def make_optimizer(params: list[nn.Parameter], name: str, lr: float,
                   weight_decay: float) -> torch.optim.Optimizer:
    """Adam, AdamW (decoupled weight decay) or SGD with momentum 0.9. Decay applies to weight
    matrices and kernels only: biases and normalisation scales (1-D) are left undecayed, as
    BERT's recipe and Hugging Face's Trainer do (shrinking a LayerNorm scale towards 0 is not
    regularisation)."""
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9)
    return {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name](groups, lr=lr)


def train_epochs(
    model: nn.Module, n: int, *, loss_of: Callable[[torch.Tensor], torch.Tensor],
    update: Callable[[torch.Tensor], None], epochs: int, batch_size: int,
    generator: torch.Generator, before_epoch: Sequence[Callable[[int, nn.Module], None]] = (),
    on_epoch: Callable[[int, nn.Module], None] | None = None,
    check: Callable[[], None] | None = None,
) -> list[float]:
    """The fine-tuning loop every trial runs (ours, and a provider's wrappers around it):
    shuffled batches of indices into ``n`` examples, ``loss_of(idx)`` then ``update(loss)``; a
    non-finite loss fails the trial; ``before_epoch`` hooks and ``on_epoch`` reports around
    each epoch. Returns the mean loss of each epoch."""
    history = []
    for epoch in range(epochs):
        for hook in before_epoch:
            hook(epoch, model)
        model.train()
        order = torch.randperm(n, generator=generator)
        total, batches = 0.0, 0
        for start in range(0, n, batch_size):
            if check is not None:
                check()
            loss = loss_of(order[start : start + batch_size])
            if not math.isfinite(loss.item()):
                raise TrialError(f"non-finite loss {loss.item()} at epoch {epoch + 1}")
            update(loss)
            total += loss.item()
            batches += 1
        history.append(total / max(1, batches))
        model.eval()
        if on_epoch is not None:
            on_epoch(epoch + 1, model)
    return history


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    teacher_logits: torch.Tensor | None = None,
    temperature: float = 4.0,
    alpha: float = 0.0,
    teacher_features: torch.Tensor | None = None,
    feature_weight: float = 0.0,
    epochs: int = 3,
    lr: float = 1e-3,
    batch_size: int = 128,
    optimizer: str = "adam",
    schedule: str = "constant",
    warmup: float = 0.0,
    weight_decay: float = 0.0,
    seed: int = 0,
    before_epoch: Sequence[Callable[[int, nn.Module], None]] = (),
    on_epoch: Callable[[int, nn.Module], None] | None = None,
    check: Callable[[], None] | None = None,
    teacher: nn.Module | None = None,
    block_map: Sequence[int] | None = None,
    hidden_weight: float = 0.0,
    attention_weight: float = 0.0,
) -> list[float]:
    """Train ``model`` in place; returns the mean loss of each epoch.

    ``optimizer``, ``schedule``, ``warmup`` and ``weight_decay`` are a :class:`Recipe`'s; the
    defaults (Adam, constant rate) are how teachers are trained: without a teacher this is plain
    training on the task's loss.
    Raises :class:`TrialError` on a non-finite loss, so a diverging trial fails with a reason.
    ``check()`` runs before every batch (a trial's time limit raises from it).
    """
    generator = torch.Generator().manual_seed(seed)
    features = None
    if teacher_features is not None and feature_weight > 0:
        features = _FeatureMatch(model, teacher_features)
        with torch.no_grad():
            model(x[:2])
            features.projection(features.current)  # materialise a lazy projection
    blocks = None
    if teacher is not None and (hidden_weight > 0 or attention_weight > 0):
        blocks = BlockMatch(model, teacher, block_map, hidden_weight=hidden_weight,
                            attention_weight=attention_weight, example=x[:2])
    params = list(model.parameters()) + (list(features.projection.parameters()) if features else [])
    params += list(blocks.projections.parameters()) if blocks else []
    optimiser = make_optimizer(params, optimizer, lr, weight_decay)
    total, step = epochs * -(-len(y) // batch_size), 0

    def loss_of(idx: torch.Tensor) -> torch.Tensor:
        logits = model(x[idx])
        soft = teacher_logits[idx] if teacher_logits is not None else None
        loss = kd_loss(logits, soft, y[idx], temperature=temperature, alpha=alpha)
        if features is not None:
            loss = loss + feature_weight * features.loss(idx)
        if blocks is not None:
            loss = loss + blocks.loss(x[idx])
        return loss

    def update(loss: torch.Tensor) -> None:
        nonlocal step
        if schedule != "constant" or warmup > 0:
            for group in optimiser.param_groups:
                group["lr"] = lr * lr_factor(step, total, schedule, warmup)
        step += 1
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    try:
        return train_epochs(model, len(y), loss_of=loss_of, update=update, epochs=epochs,
                            batch_size=batch_size, generator=generator,
                            before_epoch=before_epoch, on_epoch=on_epoch, check=check)
    finally:
        if features is not None:
            features.handle.remove()
        if blocks is not None:
            blocks.close()
