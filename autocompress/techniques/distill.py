"""Knowledge distillation: fine-tune the student towards the teacher's softened outputs.

loss = alpha * KL(softmax(t / T) || softmax(s / T)) * T**2 + (1 - alpha) * cross-entropy(s, y)
       + feature_weight * MSE(P(student features), teacher features)
       + hidden_weight * mean over matched blocks MSE(P_b(student block out), teacher block out)
       + attention_weight * mean over matched blocks MSE(student map, teacher map)

The T**2 factor keeps the soft term's gradients on the scale of the hard term's (Hinton et al.
2015). The optional feature term matches the inputs of the last weight layer (the penultimate
features), through a learned linear map ``P`` when the student is narrower (FitNets, Romero et
al. 2015); ``P`` is trained with the student and then dropped. The teacher's logits and features
come precomputed in the context, once per study.

For transformers, each student block is matched with the teacher block it was taken from
(``ctx.block_map``; TinyBERT, Jiao et al. 2020, matches blocks the same way): the hidden-state
term compares block outputs (through a learned linear map ``P_b`` where widths differ), the
attention term compares attention maps averaged over heads (head pruning changes their number).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from autocompress.errors import TrialError
from autocompress.params import Param
from autocompress.plan import Plan
from autocompress.techniques import nni_adapter
from autocompress.techniques.common import Context, weight_layers
from autocompress.techniques.importance import is_embedding_target, task_loss

PARAMETERS = (
    Param("temperature", "float", 4.0, "softening temperature T of both outputs",
          low=1.0, high=20.0),
    Param("alpha", "float", 0.7, "weight of the distillation term against cross-entropy",
          low=0.0, high=1.0),
    Param("feature_weight", "float", 0.0,
          "weight of the penultimate-feature matching loss (0 = off)", low=0.0, high=10.0),
    Param("method", "choice", "kd",
          "kd: the loss above; nni.layerwise: plus NNI's MSE between matching layers' outputs",
          values=("kd", *nni_adapter.DISTILLERS)),
    Param("layer_weight", "float", 1.0, "nni.layerwise: weight of each matched layer's MSE",
          low=0.0, high=10.0),
    Param("hidden_weight", "float", 0.0,
          "transformers: weight of the matched blocks' hidden-state MSE (0 = off)",
          low=0.0, high=10.0),
    Param("attention_weight", "float", 0.0,
          "transformers: weight of the matched blocks' attention-map MSE (0 = off)",
          low=0.0, high=10.0),
)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """The distillation loss above; plain cross-entropy when there is no teacher or alpha is 0.

    For an embedding model the "labels" are the teacher's embeddings: the loss is then one minus
    their cosine similarity (:func:`~autocompress.techniques.importance.task_loss`), with no
    softened term (a softmax over embedding dimensions means nothing)."""
    hard = task_loss(student_logits, labels)
    if teacher_logits is None or alpha == 0.0 or is_embedding_target(student_logits, labels):
        return hard
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return alpha * soft * temperature**2 + (1.0 - alpha) * hard


def penultimate_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The inputs of ``model``'s last weight layer on ``x`` (flattened per example)."""
    last = weight_layers(model)[-1][1]
    captured: list[torch.Tensor] = []
    handle = last.register_forward_pre_hook(lambda _, args: captured.append(args[0].flatten(1)))
    try:
        model.eval()
        with torch.inference_mode():
            for start in range(0, len(x), 1024):
                model(x[start : start + 1024])
    finally:
        handle.remove()
    return torch.cat(captured)


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


class _BlockMatch:
    """Captures matched student and teacher block outputs (and attention maps) per batch."""

    def __init__(self, student: nn.Module, teacher: nn.Module, block_map: Sequence[int] | None,
                 *, hidden_weight: float, attention_weight: float, example: torch.Tensor
                 ) -> None:
        from autocompress.techniques.transformer import Encoder

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


def train_epochs(
    model: nn.Module, n: int, *, loss_of: Callable[[torch.Tensor], torch.Tensor],
    update: Callable[[torch.Tensor], None], epochs: int, batch_size: int,
    generator: torch.Generator, before_epoch: Sequence[Callable[[int, nn.Module], None]] = (),
    on_epoch: Callable[[int, nn.Module], None] | None = None,
    check: Callable[[], None] | None = None,
) -> list[float]:
    """The fine-tuning loop every trial runs (ours, and NNI's wrappers around it): shuffled
    batches of indices into ``n`` examples, ``loss_of(idx)`` then ``update(loss)``; a non-finite
    loss fails the trial; ``before_epoch`` hooks and ``on_epoch`` reports around each epoch.
    Returns the mean loss of each epoch."""
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
    seed: int = 0,
    before_epoch: Sequence[Callable[[int, nn.Module], None]] = (),
    on_epoch: Callable[[int, nn.Module], None] | None = None,
    check: Callable[[], None] | None = None,
    teacher: nn.Module | None = None,
    block_map: Sequence[int] | None = None,
    hidden_weight: float = 0.0,
    attention_weight: float = 0.0,
) -> list[float]:
    """Train ``model`` in place with Adam; returns the mean loss of each epoch.

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
        blocks = _BlockMatch(model, teacher, block_map, hidden_weight=hidden_weight,
                             attention_weight=attention_weight, example=x[:2])
    params = list(model.parameters()) + (list(features.projection.parameters()) if features else [])
    params += list(blocks.projections.parameters()) if blocks else []
    optimiser = torch.optim.Adam(params, lr=lr)

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


def apply(model: nn.Module, plan: Plan, ctx: Context) -> nn.Module:
    """Fine-tune the (narrowed, pruned, fake-quantized) student against the teacher.

    When the plan asks for NNI's quantizer or distiller, NNI wraps the model for the same loop
    (:func:`autocompress.techniques.nni_adapter.finetune`); the feature term is then off.
    """
    if nni_adapter.is_nni(plan.get("quantize.mode")) or nni_adapter.is_nni(
            plan.get("distill.method")):
        return nni_adapter.finetune(model, plan, ctx)
    fit(
        model,
        ctx.train_x,
        ctx.train_y,
        teacher_logits=ctx.teacher_logits,
        temperature=float(plan.get("distill.temperature", 4.0)),
        alpha=float(plan.get("distill.alpha", 0.7)),
        teacher_features=ctx.teacher_features,
        feature_weight=float(plan.get("distill.feature_weight", 0.0)),
        epochs=ctx.epochs,
        lr=ctx.lr,
        batch_size=ctx.batch_size,
        seed=plan.seed,
        check=ctx.check_time,
        before_epoch=ctx.before_epoch,
        on_epoch=ctx.on_epoch,
        teacher=ctx.teacher,
        block_map=ctx.block_map,
        hidden_weight=float(plan.get("distill.hidden_weight", 0.0)),
        attention_weight=float(plan.get("distill.attention_weight", 0.0)),
    )
    for hook in ctx.after_training:
        hook(model)
    return model
