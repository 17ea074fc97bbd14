"""What ``autocompress validate`` shows: the resolved space, its size, the budget, and the
teacher and the most compressed model of the space measured against that budget."""

from __future__ import annotations

from typing import Any

from autocompress.budget import feasible, format_violations
from autocompress.plan import Plan
from autocompress.report.tables import describe_metrics
from autocompress.space import SearchSpace

# For each parameter, the end of its domain that compresses most (others take their first value).
_EXTREME = {"student.width": "low", "student.drop_layers": "high", "prune.ratio": "high",
            "quantize.bits": "low", "prune.kind": "structured"}


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


def most_compressed_plan(space: SearchSpace) -> Plan:
    """The plan at the compressing end of every dimension: the smallest model the space holds."""
    choices: dict[str, Any] = {}
    for name, dim in space.dimensions.items():
        base = name if name.count(".") == 1 else name.rsplit(".", 1)[0]
        want = _EXTREME.get(base)
        if dim.kind == "fixed":
            choices[name] = dim.values[0]
        elif dim.kind in ("float", "int"):
            choices[name] = dim.high if want == "high" else dim.low
        elif want in ("low", "high"):
            choices[name] = dim.values[-1] if want == "high" else dim.values[0]
        else:
            choices[name] = want if want in dim.values else dim.values[0]
    return Plan(choices)


def budget_verdict(name: str, metrics: dict[str, float], constraints: dict[str, float]) -> str:
    if not constraints:
        return f"{name}: {describe_metrics(metrics)}"
    if feasible(constraints):
        return f"{name}: {describe_metrics(metrics)}  meets the budget"
    return f"{name}: {describe_metrics(metrics)}  over budget: {format_violations(constraints)}"
