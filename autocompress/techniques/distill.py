"""Knowledge distillation: fine-tune the student towards the teacher's softened outputs.

The loss and the loop live in :mod:`autocompress.techniques.training`; this technique reads the
``distill.*`` choices into a :class:`~autocompress.techniques.training.Distillation` and runs
the fine-tune. When another technique registered a trainer (``quantize.mode: nni.qat``), or
``distill.method`` is a provider's value (``nni.layerwise``), that trainer runs instead of
:func:`~autocompress.techniques.training.fit`, with the same loss weights.
"""

from __future__ import annotations

from torch import nn

from autocompress.params import Param, Settings
from autocompress.plan import Plan
from autocompress.techniques import providers
from autocompress.techniques.common import Context
from autocompress.techniques.training import Distillation, fit

__all__ = ["PARAMETERS", "apply"]

PARAMETERS = (
    Param("temperature", "float", 4.0, "softening temperature T of both outputs",
          low=1.0, high=20.0),
    Param("alpha", "float", 0.7, "weight of the distillation term against cross-entropy",
          low=0.0, high=1.0),
    Param("feature_weight", "float", 0.0,
          "weight of the penultimate-feature matching loss (0 = off)", low=0.0, high=10.0),
    Param("method", "choice", "kd",
          "kd: the loss above; a provider's value adds its own terms (nni.layerwise: NNI's MSE "
          "between matching layers' outputs)", values=("kd",)),
    Param("hidden_weight", "float", 0.0,
          "transformers: weight of the matched blocks' hidden-state MSE (0 = off)",
          low=0.0, high=10.0),
    Param("attention_weight", "float", 0.0,
          "transformers: weight of the matched blocks' attention-map MSE (0 = off)",
          low=0.0, high=10.0),
)
setting = Settings("distill", PARAMETERS)


def loss_weights(plan: Plan) -> Distillation:
    """The plan's ``distill.*`` loss weights."""
    return Distillation(
        temperature=float(setting(plan, "distill.temperature")),
        alpha=float(setting(plan, "distill.alpha")),
        feature_weight=float(setting(plan, "distill.feature_weight")),
        hidden_weight=float(setting(plan, "distill.hidden_weight")),
        attention_weight=float(setting(plan, "distill.attention_weight")),
    )


def apply(model: nn.Module, plan: Plan, ctx: Context) -> nn.Module:
    """Fine-tune the (narrowed, pruned, fake-quantized) student against the teacher.

    A registered trainer (a provider's: the feature and block terms are then off) runs in
    place of our loop; so do the ``after_training`` hooks, which it runs itself.
    """
    method = setting(plan, "distill.method")
    if providers.provides("distill.method", method):
        ctx.use_trainer(providers.implementation("distill.method", method))
    loss = loss_weights(plan)
    trainer = ctx.registered.trainer
    if trainer is not None:
        return trainer(model, plan, ctx, loss)
    fit(
        model,
        ctx.train_x,
        ctx.train_y,
        teacher_logits=ctx.teacher_logits,
        temperature=loss.temperature,
        alpha=loss.alpha,
        teacher_features=ctx.teacher_features,
        feature_weight=loss.feature_weight,
        epochs=ctx.epochs,
        lr=ctx.lr,
        batch_size=ctx.batch_size,
        optimizer=ctx.optimizer,
        schedule=ctx.schedule,
        warmup=ctx.warmup,
        weight_decay=ctx.weight_decay,
        seed=plan.seed,
        check=ctx.check_time,
        before_epoch=ctx.registered.before_epoch,
        on_epoch=ctx.on_epoch,
        teacher=ctx.teacher,
        block_map=ctx.registered.block_map,
        hidden_weight=loss.hidden_weight,
        attention_weight=loss.attention_weight,
    )
    for hook in ctx.registered.after_training:
        hook(model)
    return model
