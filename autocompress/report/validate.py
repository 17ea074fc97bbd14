"""Checks of a study before any work (a memory limit this machine cannot measure), and what
``autocompress validate`` shows: the resolved space, its size, the budget, and the teacher and
the most compressed model of the space measured against that budget."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from autocompress.budget import Budget, feasible, format_violations
from autocompress.config import StudyConfig, resolve_space
from autocompress.errors import ConfigError
from autocompress.measure.peak import available_memory_bytes
from autocompress.preflight import extreme_plan
from autocompress.report.tables import describe_metrics
from autocompress.space import SearchSpace
from autocompress.tasks.teacher import builtin_task
from autocompress.techniques.common import weight_layers
from autocompress.trial import (
    build_compressed,
    final_form,
    make_context,
    measure_model,
    measure_structure,
)
from autocompress.units import format_bytes


def space_size(space: SearchSpace) -> str:
    """``48 discrete combinations x 3 continuous dimensions`` (fixed values count once)."""
    discrete, continuous = 1, 0
    for dim in space.searched.values():
        if dim.kind == "float":
            continuous += 1
        elif dim.kind == "int":
            discrete *= int((dim.high - dim.low) // (dim.step or 1)) + 1
        else:
            discrete *= len(dim.values)
    text = f"{discrete:,} discrete combinations"
    return text + (f" x {continuous} continuous dimension(s)" if continuous else "")


def budget_verdict(name: str, metrics: dict[str, float], constraints: dict[str, float]) -> str:
    if not constraints:
        return f"{name}: {describe_metrics(metrics)}"
    if feasible(constraints):
        return f"{name}: {describe_metrics(metrics)}  meets the budget"
    return f"{name}: {describe_metrics(metrics)}  over budget: {format_violations(constraints)}"


def check_memory_budget(config: StudyConfig) -> None:
    """Refuse a memory limit above what this machine has free: no model that large could be
    loaded here to be measured, so the limit would be checked against nothing."""
    available = available_memory_bytes()
    if available is None:
        return
    for field in ("max_memory_bytes", "max_peak_memory_bytes"):
        limit = getattr(config.budget, field)
        if limit is not None and limit > available:
            raise ConfigError(config.source, f"budget.{field}",
                              format_bytes(limit),
                              f"at most this machine's available memory "
                              f"({format_bytes(available)}): a model that large could not be "
                              f"loaded here to be measured")


def needs_peak_memory(config: StudyConfig) -> bool:
    """Peak memory costs a process start per trial: measured only when asked for."""
    return (config.budget.max_peak_memory_bytes is not None
            or "peak_memory_bytes" in config.objectives)


def _quiet(_: str) -> None:
    pass


def validate_study(
    config: StudyConfig, *, out_dir: str | Path | None = None,
    progress: Callable[[str], None] = _quiet,
) -> list[str]:
    """Lines for ``autocompress validate``: space, size, budget, and what the teacher and the
    most compressed model of the space measure against the budget (nothing is trained but the
    teacher, which is cached as for a search)."""
    out = Path(out_dir) if out_dir is not None else Path("studies") / config.name
    space_path = resolve_space(config.space, study_source=config.source)
    space = SearchSpace.from_yaml(space_path)
    out.mkdir(parents=True, exist_ok=True)
    task = builtin_task(config, out, progress)
    space = space.for_layers([name for name, _ in weight_layers(task.teacher)])
    m = config.measure
    lines = [f"study {config.name}: {config.task.dataset} / {config.task.teacher}, "
             f"{config.trials} trials, sampler {config.sampler}, seed {config.seed}, "
             f"pruner {config.pruner}",
             "objectives: " + ", ".join(f"{k} ({v})" for k, v in config.objectives.items()),
             f"measured at batch {m.batch_size}, {m.threads} thread(s), runtime {m.runtime}, "
             f"device {m.device}",
             f"space {space_path}: {space_size(space)}", space.describe()]
    need_peak = needs_peak_memory(config)
    teacher, _ = measure_model(task.teacher, task, m, need_peak=need_peak)
    budget = config.budget
    lines.append("budget: " + ("none" if budget.empty else
                               "; ".join(budget.describe(teacher["accuracy"]))))
    lines.append(budget_verdict("teacher", teacher,
                                budget.constraints(teacher, teacher["accuracy"])))
    plan = extreme_plan(space, most=True)
    ctx = make_context(task, None, config.finetune)
    smallest, _ = measure_structure(final_form(build_compressed(plan, ctx), ctx), task, m,
                                    Budget(), need_peak=need_peak)
    constraints = {k: v for k, v in budget.constraints(smallest).items() if k != "accuracy"}
    lines.append(budget_verdict("most compressed model of the space (untrained)", smallest,
                                constraints))
    if constraints and not feasible(constraints):
        lines.append("=> even the most compressed model breaks the budget: it is unreachable "
                     "with this space")
    elif not budget.empty and feasible(budget.constraints(teacher, teacher["accuracy"])):
        lines.append("=> the teacher already meets the budget: compression buys margin only")
    floor = budget.accuracy_floor(teacher["accuracy"])
    if floor is not None and floor > teacher["accuracy"]:
        lines.append(f"=> the accuracy floor {100 * floor:.2f}% is above the teacher's "
                     f"{100 * teacher['accuracy']:.2f}%: compression alone will not reach it")
    return lines
