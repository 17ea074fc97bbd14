"""NNI 3.0 as a technique provider, behind this one module and never in the core path.

The registry (:mod:`autocompress.techniques.providers`) reads the declarations below
(:data:`CHOICES`, :data:`PARAMETERS`) without NNI installed; NNI itself is imported only here,
lazily, and only when a Plan asks for one of its choices:

* ``prune.criterion: nni.l1 | nni.l2 | nni.fpgm | nni.taylor | nni.level``: NNI's pruner computes
  the masks on a copy of the model. ``prune.kind: unstructured`` keeps them as masks (what NNI
  does without its ``ModelSpeedup``); ``structured`` hands them to our torch-pruning removal, which
  takes out exactly the units NNI zeroed (``ModelSpeedup`` fails in NNI's tracer on torch 2.13).
  NNI applies a ratio to each layer alike, so a global ``prune.ratio`` is one share per layer
  here, not one ranking over all layers as with our own criteria.
* ``quantize.mode: nni.qat | nni.lsq``: NNI's QAT or LSQ quantizer (symmetric, one scale per
  output channel) fake-quantizes the weights while fine-tuning; afterwards each weight is
  rounded with NNI's calibrated scales, then onto the per-channel grid our packer stores.
* ``distill.method: nni.layerwise``: NNI's ``DynamicLayerwiseDistiller`` adds an MSE between
  the outputs of student and teacher layers that share a name and an output shape (weight
  ``distill.layer_weight`` each) to our distillation loss.

The fine-tuning loop stays ours (:class:`Finetune`, around
:func:`~autocompress.techniques.training.train_epochs`): NNI's compressors only wrap the modules
and the optimiser, as NNI's ``TorchEvaluator`` expects. Without NNI installed, a space asking for
any of these is refused when it is read (``providers.require``). What works and what does not on
current torch: ``docs/nni.md``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from autocompress.errors import TrialError
from autocompress.packing import BITS_ATTRIBUTE, SCHEME_ATTRIBUTE, qmax
from autocompress.params import Param, Settings
from autocompress.plan import Choice, Plan
from autocompress.techniques.common import Context, bake, weight_layers
from autocompress.techniques.quantize import fake_quantize
from autocompress.techniques.training import Distillation, Trainer, kd_loss, train_epochs

PRUNERS = {"nni.l1": "L1NormPruner", "nni.l2": "L2NormPruner", "nni.fpgm": "FPGMPruner",
           "nni.taylor": "TaylorPruner", "nni.level": "LevelPruner"}
CHANNEL_PRUNERS = ("nni.l1", "nni.l2", "nni.fpgm", "nni.taylor")  # zero whole output units
QUANTIZERS = {"nni.qat": "QATQuantizer", "nni.lsq": "LsqQuantizer"}
DISTILLERS = {"nni.layerwise": "DynamicLayerwiseDistiller"}
TAYLOR_STEPS = 4  # calibration batches whose gradients NNI's Taylor pruner accumulates

TITLE = "NNI"
INSTALL = "pip install 'autocompress[nni]'"
CHOICES = {"prune.criterion": tuple(PRUNERS), "quantize.mode": tuple(QUANTIZERS),
           "distill.method": tuple(DISTILLERS)}
PARAMETERS = {"distill.method": (
    Param("layer_weight", "float", 1.0, "nni.layerwise: weight of each matched layer's MSE",
          low=0.0, high=10.0),
)}
setting = Settings("distill", PARAMETERS["distill.method"])


def implementation(field: str, value: Choice) -> Pruner | Finetune:
    """NNI's pruner for a ``prune.criterion``; the fine-tune through its quantizer or
    distiller for a ``quantize.mode`` or ``distill.method``."""
    if value not in CHOICES.get(field, ()):
        raise ValueError(f"{field}: NNI offers {CHOICES.get(field, ())}, not {value!r}")
    if field == "prune.criterion":
        return Pruner(str(value))
    if field == "quantize.mode":
        return Finetune(quantizer=str(value))
    return Finetune(distiller=str(value))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """NNI 3.0 warns on import (torch pytree API) and on every backward (``saved_variables``)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*already registered as pytree.*")
        yield


@functools.cache
def _nni() -> SimpleNamespace:
    with _quiet():
        import nni
        from nni.compression import TorchEvaluator, distillation, pruning, quantization
    return SimpleNamespace(trace=nni.trace, TorchEvaluator=TorchEvaluator, pruning=pruning,
                           quantization=quantization, distillation=distillation)


def available() -> str | None:
    """None when NNI's compression package imports, else why not."""
    try:
        _nni()
    except Exception as exc:  # ImportError, or NNI failing on this torch
        return f"{type(exc).__name__}: {exc}"
    return None


def _load() -> SimpleNamespace:
    problem = available()
    if problem is not None:
        raise TrialError(f"NNI is needed for this plan and does not import ({problem}); {INSTALL}")
    return _nni()


def _evaluator(model: nn.Module, training_func: Callable, training_step: Callable, lr: float):
    lib = _nni()
    optimiser = lib.trace(torch.optim.Adam)(model.parameters(), lr=lr)
    return lib.TorchEvaluator(training_func, optimiser, training_step)


def _steps(optimizers) -> list:
    return optimizers if isinstance(optimizers, list | tuple) else [optimizers]


# ---------------------------------------------------------------- pruning

def pruning_masks(
    model: nn.Module, ratios: dict[str, float], method: str, *, x: torch.Tensor,
    y: torch.Tensor, seed: int = 0,
) -> dict[str, torch.Tensor]:
    """0/1 weight masks from NNI's pruner ``method`` at ``ratios`` (layer name -> share).

    Computed on a baked copy, so the model itself (and any masks on it) is untouched.
    """
    lib = _load()
    work = bake(copy.deepcopy(model))
    config = [{"op_names": [name], "sparse_ratio": float(r)} for name, r in ratios.items()
              if r > 0]
    layers = dict(weight_layers(work))
    masks = {name: torch.ones_like(layers[name].weight) for name in ratios}
    if not config:
        return masks
    pruner_class = getattr(lib.pruning, PRUNERS[method])
    with _quiet():
        if method == "nni.taylor":
            generator = torch.Generator().manual_seed(seed)

            def training_func(model, optimizers, training_step, lr_schedulers=None,
                              max_steps=None, max_epochs=None):
                for _ in range(max_steps or TAYLOR_STEPS):
                    idx = torch.randint(0, len(y), (min(128, len(y)),), generator=generator)
                    loss = training_step((x[idx], y[idx]), model)
                    for opt in _steps(optimizers):
                        opt.zero_grad()
                    loss.backward()  # NNI's Taylor hooks collect the gradients
                    for opt in _steps(optimizers):
                        opt.step()  # NNI counts steps here; at lr 0 no weight moves

            def training_step(batch, model):
                return F.cross_entropy(model(batch[0]), batch[1])

            pruner = pruner_class(work, config, _evaluator(work, training_func, training_step,
                                                           0.0), training_steps=TAYLOR_STEPS)
        else:
            pruner = pruner_class(work, config)
        try:
            _, found = pruner.compress()
        finally:
            pruner.unwrap_model()
    for name, entry in found.items():
        if name in masks:
            masks[name] = (entry["weight"].detach() != 0).to(masks[name].dtype)
    return masks


@dataclass(frozen=True)
class Pruner:
    """NNI's pruner ``method`` as a ``prune.criterion``: masks from calibration data."""

    method: str

    @property
    def whole_units(self) -> bool:
        return self.method in CHANNEL_PRUNERS

    def masks(self, model: nn.Module, ratios: dict[str, float], *,
              calibration: tuple[torch.Tensor, torch.Tensor],
              seed: int) -> dict[str, torch.Tensor]:
        return pruning_masks(model, ratios, self.method, x=calibration[0], y=calibration[1],
                             seed=seed)


# ---------------------------------------------------------------- fine-tuning

def _mask_of(module: nn.Module) -> torch.Tensor | None:
    if parametrize.is_parametrized(module, "weight"):
        for p in module.parametrizations.weight:
            if hasattr(p, "mask"):
                return p.mask.detach().clone()
    return None


def _shapes(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Size]:
    shapes: dict[str, torch.Size] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, out, n=name: shapes.__setitem__(n, out.shape))
             for name, m in weight_layers(model)]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


def matched_layers(student: nn.Module, teacher: nn.Module, x: torch.Tensor) -> list[str]:
    """Student layers whose name and output shape the teacher shares (NNI's ``link: auto``)."""
    theirs, ours = _shapes(teacher, x), _shapes(student, x)
    matched = [name for name, shape in ours.items() if theirs.get(name) == shape]
    hidden = matched[:-1] if matched and matched[-1] == list(ours)[-1] else matched
    return hidden or matched[-1:]  # the logits when no hidden layer lines up


def _regrid(weight: torch.Tensor, entry: dict, bits: int) -> torch.Tensor:
    """NNI's rounding with its calibrated scales, then onto our per-channel symmetric grid."""
    scale = entry["scale"].detach().reshape(-1, *([1] * (weight.dim() - 1)))
    zero = entry["zero_point"].detach().reshape(scale.shape)
    top = qmax(bits)
    codes = torch.clamp(torch.round(weight / scale) + zero, -top, top) - zero
    return fake_quantize(codes * scale, bits, True)


@dataclass(frozen=True)
class Finetune:
    """The trainer NNI's choices register: our loop inside NNI's quantizer and/or distiller.

    ``quantize.mode`` registers one with its ``quantizer``, ``distill.method`` one with its
    ``distiller``; the context combines them into one fine-tune through both.
    """

    quantizer: str | None = None
    distiller: str | None = None

    def combine(self, other: Trainer) -> Finetune:
        if not isinstance(other, Finetune):
            raise TrialError(f"NNI's fine-tune cannot run together with {other!r}")
        clash = [a for a, b in ((self.quantizer, other.quantizer),
                                (self.distiller, other.distiller)) if a and b and a != b]
        if clash:
            raise TrialError(f"two NNI fine-tunes asked for different {clash[0]!r} compressors")
        return Finetune(self.quantizer or other.quantizer, self.distiller or other.distiller)

    def __call__(self, model: nn.Module, plan: Plan, ctx: Context,
                 loss: Distillation) -> nn.Module:
        return finetune(model, plan, ctx, loss, quantizer=self.quantizer,
                        distiller=self.distiller)


def finetune(model: nn.Module, plan: Plan, ctx: Context, loss: Distillation, *,
             quantizer: str | None, distiller: str | None) -> nn.Module:
    """Fine-tune ``model`` in place through NNI's ``quantizer`` and/or ``distiller``.

    Masks in force stay in force: a pruning schedule jumps to its final masks first, and pruned
    weights are zeroed again after every optimiser step (NNI cannot wrap our parametrized layers
    for quantization, so those are baked to plain ones first). Of ``loss``, the temperature and
    alpha apply; the feature and block terms do not.
    """
    lib = _load()
    use_quantizer, use_distiller = quantizer is not None, distiller is not None
    for hook in ctx.registered.before_epoch:
        hook(max(0, ctx.epochs - 1), model)
    layers = weight_layers(model)
    bits = {name: int(getattr(m, BITS_ATTRIBUTE, 32)) for name, m in layers}
    masks = {name: mask for name, m in layers if (mask := _mask_of(m)) is not None}
    if use_quantizer:
        bake(model)
    temperature, alpha = loss.temperature, loss.alpha
    generator = torch.Generator().manual_seed(plan.seed)
    modules = dict(model.named_modules())

    def training_step(batch, model):
        logits = model(batch[0])
        soft = ctx.teacher_logits[batch[2]] if ctx.teacher_logits is not None else None
        return kd_loss(logits, soft, batch[1], temperature=temperature, alpha=alpha)

    def reapply_masks() -> None:
        with torch.no_grad():
            for name, mask in masks.items():
                module = modules[name]
                wrapper = getattr(module, "_nni_wrapper", None)
                weight = getattr(wrapper, "weight", None) if wrapper is not None else None
                weight = weight if isinstance(weight, nn.Parameter) else module.weight
                if not parametrize.is_parametrized(module, "weight"):
                    weight.mul_(mask)

    def training_func(model, optimizers, training_step, lr_schedulers=None, max_steps=None,
                      max_epochs=None):
        x, y = ctx.train_x, ctx.train_y

        def update(loss: torch.Tensor) -> None:
            for opt in _steps(optimizers):
                opt.zero_grad()
            loss.backward()
            for opt in _steps(optimizers):
                opt.step()
            reapply_masks()

        train_epochs(model, len(y), loss_of=lambda idx: training_step((x[idx], y[idx], idx),
                                                                      model),
                     update=update, epochs=ctx.epochs, batch_size=ctx.batch_size,
                     generator=generator, on_epoch=ctx.on_epoch, check=ctx.check_time)

    evaluator = _evaluator(model, training_func, training_step, ctx.lr)
    compressors = []
    with _quiet():
        if use_quantizer:
            config = [{"op_names": [name], "target_names": ["weight"],
                       "quant_dtype": f"int{b}", "quant_scheme": "symmetric",
                       "granularity": "out_channel"} for name, b in bits.items() if b <= 8]
            quantizer_class = getattr(lib.quantization, QUANTIZERS[quantizer])
            extra = {"quant_start_step": 0} if quantizer == "nni.qat" else {}
            compressors.append(quantizer_class(model, config, evaluator, **extra))
        if use_distiller:
            teacher = copy.deepcopy(ctx.teacher).eval()
            config = [{"op_names": matched_layers(model, teacher, ctx.example_input),
                       "target_names": ["_output_"], "link": "auto", "apply_method": "mse",
                       "lambda": float(setting(plan, "distill.layer_weight"))}]
            distiller_class = getattr(lib.distillation, DISTILLERS[distiller])
            predict = lambda batch, teacher: teacher(batch[0])  # noqa: E731
            if compressors:
                compressors.append(distiller_class.from_compressor(
                    compressors[0], config, teacher, predict, origin_loss_lambda=1.0))
            else:
                compressors.append(distiller_class(model, config, evaluator, teacher, predict,
                                                   origin_loss_lambda=1.0))
        calibration: dict = {}
        try:
            compressors[-1].compress(max_steps=None, max_epochs=ctx.epochs)
            if use_quantizer:
                calibration = compressors[0].get_calibration_config()
        finally:
            compressors[-1].unwrap_model()
    if use_quantizer:
        _bake_quantized(model, bits, calibration, masks)
    for hook in ctx.registered.after_training:
        hook(model)
    return model


def _bake_quantized(model: nn.Module, bits: dict[str, int], calibration: dict,
                    masks: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, module in weight_layers(model):
            width = bits[name]
            weight = module.weight
            if width <= 8 and name in calibration:
                weight.copy_(_regrid(weight, calibration[name]["weight"], width))
            elif width == 16:
                weight.copy_(weight.half().float())
            if name in masks:
                weight.mul_(masks[name])
            if width < 32:
                setattr(module, BITS_ATTRIBUTE, width)
                setattr(module, SCHEME_ATTRIBUTE, "symmetric")
