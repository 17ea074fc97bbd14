"""The contract every technique and every provider keeps, checked on each of them alike.

In the style of Optuna's tests that run one suite over every sampler: a new technique in
``PIPELINE`` or a new provider in the registry is held to these checks without new tests.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import ctx_for
from torch.nn.utils import parametrize

import autocompress
from autocompress.params import Param
from autocompress.plan import Plan
from autocompress.techniques import PIPELINE, SECTIONS, parameters, providers
from autocompress.techniques.common import Context

TECHNIQUES = [pytest.param(t, id=t.__name__.rsplit(".", 1)[-1]) for t in PIPELINE]
PROVIDERS = list(providers.PROVIDERS)
TEACHERS = ["mlp_teacher", "cnn_teacher"]
PACKAGE = Path(autocompress.__file__).parent


def section_of(technique) -> str:
    return next(name for name, module in SECTIONS.items() if module is technique)


def check_param(param: Param) -> None:
    assert param.name and "." not in param.name and param.help, param
    assert param.kind in ("float", "int", "choice", "bool"), param
    if param.kind == "choice":
        assert param.values and len(set(param.values)) == len(param.values), param
        assert param.default in param.values, param
    elif param.kind == "bool":
        assert isinstance(param.default, bool) and not param.per_layer, param
    else:
        assert param.low is not None and param.high is not None and param.low < param.high
        assert param.low <= param.default <= param.high, param
        assert param.kind == "float" or float(param.default).is_integer(), param


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("technique", TECHNIQUES)
def test_parameters_are_well_formed(technique):
    names = [p.name for p in technique.PARAMETERS]
    assert len(names) == len(set(names)), names
    for param in technique.PARAMETERS:
        check_param(param)
    assert callable(technique.apply)


@pytest.mark.parametrize("technique", TECHNIQUES)
@pytest.mark.parametrize("teacher_name", TEACHERS)
def test_apply_with_the_defaults_keeps_the_output_shape_and_the_teacher(request, digits,
                                                                        technique, teacher_name):
    teacher = request.getfixturevalue(teacher_name)
    before = snapshot(teacher)
    x = digits.val.x[:5]
    with torch.no_grad():
        expected = teacher(x)
    section = section_of(technique)
    explicit = Plan({f"{section}.{p.name}": p.default for p in technique.PARAMETERS})
    outputs = []
    for plan in (Plan({}), explicit):  # an empty plan means every parameter's default
        torch.manual_seed(0)
        ctx = ctx_for(teacher, digits, epochs=1)
        model = technique.apply(copy.deepcopy(teacher), plan, ctx)
        assert isinstance(model, torch.nn.Module)
        with torch.no_grad():
            outputs.append(model.eval()(x))
        assert outputs[-1].shape == expected.shape
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)
    after = snapshot(teacher)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(parametrize.is_parametrized(m) for m in teacher.modules())


@pytest.mark.parametrize("technique", TECHNIQUES)
def test_a_technique_reads_only_its_own_section(technique):
    reader = getattr(technique, "setting", None)
    if reader is None:
        pytest.skip("reads no plan choices")
    own = section_of(technique)
    for param in technique.PARAMETERS:
        assert reader(Plan({}), f"{own}.{param.name}") == param.default
    other = next(s for s in SECTIONS if s != own)
    with pytest.raises(KeyError, match="is not a parameter of"):
        reader(Plan({}), f"{other}.{SECTIONS[other].PARAMETERS[0].name}")


def test_the_context_separates_what_is_read_from_what_is_registered(mlp_teacher, digits):
    ctx = ctx_for(mlp_teacher, digits)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.epochs = 5  # type: ignore[misc]
    read = {f.name for f in dataclasses.fields(Context)} - {"registered", "started"}
    assert {"teacher", "train_x", "train_y", "teacher_logits", "teacher_features", "epochs",
            "lr", "batch_size", "student_factory", "time_limit_s"} <= read
    assert "seed" not in read  # a trial's randomness comes from its Plan
    ctx.add_before_epoch(lambda epoch, model: None)
    ctx.add_after_training(lambda model: None)
    ctx.note({"figure": 1.0})
    ctx.map_blocks([0, 2])
    registered = ctx.registered
    assert len(registered.before_epoch) == len(registered.after_training) == 1
    assert registered.notes == {"figure": 1.0} and registered.block_map == (0, 2)
    assert registered.trainer is None


@pytest.mark.parametrize("name", PROVIDERS)
def test_provider_declarations_join_the_parameters(name):
    module = providers.load(name)
    known = parameters()
    assert isinstance(module.TITLE, str) and isinstance(module.INSTALL, str)
    assert module.CHOICES
    for field, values in module.CHOICES.items():
        assert known[field].kind == "choice", field
        assert set(values) <= set(known[field].values), field
        assert all(isinstance(v, str) and v.startswith(f"{name}.") for v in values), values
        assert providers.provider_of(values[0]) == name
    for field, extras in module.PARAMETERS.items():
        section = field.split(".", 1)[0]
        for param in extras:
            check_param(param)
            assert known[f"{section}.{param.name}"] == param
    assert providers.provider_of(known["prune.criterion"].default) is None  # defaults are ours


@pytest.mark.parametrize("name", PROVIDERS)
def test_each_declared_value_resolves_to_an_implementation(name):
    module = providers.load(name)
    trainers = []
    for field, values in module.CHOICES.items():
        for value in values:
            assert providers.provides(field, value)
            found = providers.implementation(field, value)
            if field == "prune.criterion":  # a MaskCriterion
                assert isinstance(found.whole_units, bool) and callable(found.masks)
            else:  # a Trainer
                assert callable(found) and callable(found.combine)
                trainers.append(found)
    assert not providers.provides("prune.criterion", "magnitude")
    with pytest.raises(ValueError, match="not a provider's choice"):
        providers.implementation("prune.criterion", "magnitude")
    if len(trainers) > 1:  # quantizer and distiller registered on one context become one
        ctx = Context(teacher=torch.nn.Identity(), train_x=torch.zeros(1), train_y=torch.zeros(1),
                      example_input=torch.zeros(1))
        ctx.use_trainer(trainers[0])
        ctx.use_trainer(trainers[-1])
        assert callable(ctx.registered.trainer)


@pytest.mark.parametrize("name", PROVIDERS)
def test_installed_is_a_bool(name):
    assert isinstance(providers.installed(name), bool)


@pytest.mark.parametrize("name", PROVIDERS)
def test_declarations_read_without_the_providers_library(name):
    """A provider is named after the library it imports (``nni``)."""
    body = textwrap.dedent(f"""
        import sys
        sys.modules[{name!r}] = None  # an install without the library
        from autocompress.techniques import parameters, providers
        module = providers.load({name!r})
        known = parameters()
        assert all(set(v) <= set(known[f].values) for f, v in module.CHOICES.items())
        assert providers.installed({name!r}) is False
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", body], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


@pytest.mark.parametrize("name", PROVIDERS)
def test_only_the_registry_names_a_provider_module(name):
    path = providers.PROVIDERS[name]
    own = PACKAGE.parent / (path.replace(".", "/") + ".py")
    short = path.rsplit(".", 1)[-1]
    naming, importing = set(), set()
    library = re.compile(rf"^\s*(import|from)\s+{re.escape(name)}\b", re.MULTILINE)
    for source in PACKAGE.rglob("*.py"):
        text = source.read_text()
        if short in text:
            naming.add(source)
        if library.search(text):
            importing.add(source)
    assert naming - {own} == {PACKAGE / "techniques" / "providers.py"}
    assert importing == {own}


@pytest.mark.parametrize("name", PROVIDERS)
def test_every_provider_value_runs_through_the_pipeline(mlp_teacher, digits, name):
    if not providers.installed(name):
        pytest.skip(f"{name} is not installed")
    extra = {"prune.criterion": {"prune.ratio": 0.5}, "quantize.mode": {"quantize.bits": 4}}
    before = snapshot(mlp_teacher)
    x = digits.val.x[:5]
    for field, values in providers.load(name).CHOICES.items():
        for value in values:
            plan = Plan({field: value, **extra.get(field, {})}, seed=1)
            ctx = ctx_for(mlp_teacher, digits, epochs=1)
            model = mlp_teacher
            for technique in PIPELINE:
                model = technique.apply(model, plan, ctx)
            with torch.no_grad():
                assert model.eval()(x).shape == mlp_teacher(x).shape, value
    after = snapshot(mlp_teacher)
    assert all(torch.equal(before[k], after[k]) for k in before)
