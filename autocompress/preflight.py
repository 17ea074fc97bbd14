"""Pre-flight: build the space's extreme plans on the teacher before the first trial.

A parameter value that cannot apply to a teacher (more layers dropped than it has, a transformer
section on an MLP, a structured prune that would split attention heads) would otherwise fail
every trial that draws it, and the user would learn it trial by trial. Here the most and the
least compressed plans and every choice of every structural parameter are built once, without
training (a second or two). A value that fails is refused in one line naming it and why; in a
shipped space, which was not written for this teacher, it is dropped with a printed note.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autocompress.config import FinetuneConfig
from autocompress.errors import ConfigError
from autocompress.plan import Choice, Plan
from autocompress.space import SHIPPED, Dimension, SearchSpace
from autocompress.tasks import Task
from autocompress.techniques import STRUCTURAL
from autocompress.trial import build_compressed, final_form, make_context

STRUCTURAL_SECTIONS = tuple(module.__name__.rsplit(".", 1)[-1] for module in STRUCTURAL)
# For each parameter, the end of its domain that compresses most (others: their first value).
EXTREME = {"student.width": "low", "student.drop_layers": "high", "prune.ratio": "high",
           "quantize.bits": "low", "prune.kind": "structured", "transformer.blocks": "low",
           "transformer.heads": "low", "transformer.ffn": "low"}


def _base(name: str) -> str:
    """``prune.ratio.3`` (a per-layer dimension) -> ``prune.ratio``."""
    return ".".join(name.split(".")[:2])


def _end(dim: Dimension, *, most: bool) -> Choice:
    """The value of ``dim`` at its most (or least) compressing end."""
    want = EXTREME.get(_base(dim.name))
    if dim.kind == "fixed":
        return dim.values[0]
    if want in ("low", "high"):
        high = (want == "high") == most
        if dim.kind in ("float", "int"):
            return dim.high if high else dim.low
        return dim.values[-1] if high else dim.values[0]
    if dim.kind in ("float", "int"):
        return dim.low
    if most and want in dim.values:
        return want
    return dim.values[0]


def extreme_plan(space: SearchSpace, *, most: bool) -> Plan:
    """The plan at the compressing (``most``) or the gentle end of every dimension."""
    return Plan({name: _end(dim, most=most) for name, dim in space.dimensions.items()})


def probes(space: SearchSpace) -> Iterator[tuple[str | None, Plan]]:
    """(the dimension a probe tests, or None for an extreme plan, the plan)."""
    gentle = extreme_plan(space, most=False).choices
    most = extreme_plan(space, most=True).choices
    yield None, Plan(gentle)
    for name, dim in space.searched.items():
        section = name.split(".")[0]
        if section not in STRUCTURAL_SECTIONS:
            continue
        # a choice is tried with its technique switched on: the section's ranges at their
        # compressing end (prune.kind means nothing at prune.ratio 0)
        on = {n: most[n] for n, d in space.searched.items()
              if n.split(".")[0] == section and d.kind in ("float", "int") and n != name}
        values = dim.values if dim.kind in ("ordinal", "categorical") else (dim.low, dim.high)
        for value in values:
            if value != gentle[name]:
                yield name, Plan({**gentle, **on, name: value})
    yield None, Plan(most)


def build_problem(plan: Plan, task: Task, finetune: FinetuneConfig) -> str | None:
    """Why ``plan`` cannot be built on the teacher (or its output changes shape); None if it can."""
    torch.manual_seed(plan.seed)
    try:
        ctx = make_context(task, None, finetune)
        model = final_form(build_compressed(plan, ctx), ctx)
        with torch.inference_mode():
            got, want = _output(model, task), _output(task.teacher, task)
        if got.shape != want.shape:
            return f"its output has shape {tuple(got.shape)}, the teacher's {tuple(want.shape)}"
    except Exception as exc:  # any failure to build is the finding, in one line
        text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        return f"{type(exc).__name__}: {text}"
    return None


def _output(model: nn.Module, task: Task) -> torch.Tensor:
    return model.eval()(task.example_input)


def check_lm_space(space: SearchSpace, layers: int, *,
                   progress: Callable[[str], None]) -> SearchSpace:
    """A causal-LM space holds lm_* sections only (the classification techniques, students built
    by tracing and epochs of fine-tuning on labels, do not apply to a decoder LM), and drops
    fewer decoder layers than the teacher's ``layers``: more is refused, or dropped with a note
    from a shipped space, before the first trial."""
    if not space.for_language_models:
        raise ConfigError(space.source, "space", "a classification space",
                          "lm_student, lm_distill, lm_prune and lm_quantize sections for task: "
                          "causal_lm (see search_spaces/llm.yaml)")
    name = "lm_student.drop_layers"
    dim = space.dimensions.get(name)
    if dim is None:
        return space
    values = dim.values if dim.kind != "int" else (int(dim.low), int(dim.high))
    over = [v for v in values if int(v) >= layers]
    if not over:
        return space
    if not _is_shipped(space.source):
        raise ConfigError(space.source, name, over[0],
                          f"fewer layers than the teacher's {layers} decoder layers")
    progress(f"pre-flight: {name} {', '.join(map(str, over))} dropped from the shipped space: "
             f"the teacher has {layers} decoder layers")
    if dim.kind == "int":
        return SearchSpace({**space.dimensions, name: dataclasses.replace(
            dim, high=layers - 1)}, source=space.source)
    return _without(space, name, over)


def check_space(space: SearchSpace, task: Task, finetune: FinetuneConfig, *,
                progress: Callable[[str], None]) -> SearchSpace:
    """``space`` with every structural value built once on the teacher; a value that cannot
    apply is refused (ConfigError naming the space file and the parameter) or, in a shipped
    space, dropped with a note through ``progress``."""
    if space.for_language_models:
        raise ConfigError(space.source, "space", "a language-model space (lm_* sections)",
                          "the sections of a classification task (student, transformer, prune, "
                          "quantize, distill); lm_* sections are for task: causal_lm")
    shipped = _is_shipped(space.source)
    failed: dict[str, list[tuple[Choice, str]]] = {}
    extreme_problem = None
    for name, plan in probes(space):
        problem = build_problem(plan, task, finetune)
        if problem is None:
            continue
        if name is None:
            extreme_problem = extreme_problem or problem
        else:
            failed.setdefault(name, []).append((plan.get(name), problem))
    teacher = type(task.teacher).__name__
    for name, misses in failed.items():
        value, problem = misses[0]
        if not shipped:
            raise ConfigError(space.source, name, value,
                              f"a value that applies to this teacher ({teacher}): building "
                              f"it failed: {problem}")
        space = _without(space, name, [v for v, _ in misses])
        progress(f"pre-flight: {name} {', '.join(map(str, (v for v, _ in misses)))} dropped "
                 f"from the shipped space: it does not apply to {teacher} ({problem})")
    if extreme_problem is not None:
        problem = build_problem(extreme_plan(space, most=True), task, finetune) if failed \
            else extreme_problem
        if problem is not None:  # each value applies alone; some combinations do not
            progress(f"pre-flight: the most compressed plan of the space does not build on "
                     f"{teacher} ({problem}); trials near it will fail with that reason")
    return space


def _without(space: SearchSpace, name: str, values: list[Any]) -> SearchSpace:
    """``space`` without ``values`` of dimension ``name`` (fixed to what is left, or to its
    gentle end if nothing is)."""
    dim = space.dimensions[name]
    if dim.kind in ("ordinal", "categorical"):
        left = tuple(v for v in dim.values if v not in values)
        kept = (dataclasses.replace(dim, values=left) if len(left) > 1 else
                dataclasses.replace(dim, kind="fixed", values=left or (_end(dim, most=False),)))
    else:
        kept = dataclasses.replace(dim, kind="fixed", values=(_end(dim, most=False),))
    return SearchSpace({**space.dimensions, name: kept}, source=space.source)


def _is_shipped(source: str) -> bool:
    try:
        return Path(source).resolve().parent == SHIPPED.resolve()
    except (OSError, ValueError):
        return False
