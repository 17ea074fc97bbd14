"""``report.html``: one self-contained page (inline SVG plots, inline script, no network).

Everything a user supplied (study name, choices, reasons) is escaped before it reaches the page.
"""

from __future__ import annotations

import html
import io
import itertools
import json
from collections.abc import Mapping, Sequence
from typing import Any

from autocompress.result import TrialCounts
from autocompress.units import format_bytes

LABELS = {"accuracy": "validation accuracy", "latency_ms": "latency (ms)",
          "memory_bytes": "stored size (bytes)", "peak_memory_bytes": "peak memory (bytes)",
          "perplexity": "validation perplexity", "tokens_per_s": "decode tokens/s"}
LIMIT_OF = {"latency_ms": "max_latency_ms", "memory_bytes": "max_memory_bytes",
            "peak_memory_bytes": "max_peak_memory_bytes"}

_SCRIPT = """
document.querySelectorAll('table.sortable th').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var body = th.closest('table').tBodies[0];
    var rows = Array.from(body.rows);
    var up = th.dataset.dir !== 'asc';
    th.dataset.dir = up ? 'asc' : 'desc';
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
      var nx = parseFloat(x), ny = parseFloat(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : String(x).localeCompare(String(y));
      return up ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f2f2f2;cursor:pointer} td.t{text-align:left}
.plots{display:flex;flex-wrap:wrap;gap:1em} .plots svg{width:380px;height:auto}
.note{color:#555;font-size:13px}
"""


def _svg(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog: the page is HTML


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"
    import matplotlib.pyplot as plt

    return plt


def scatter_plots(results: Sequence[Any], front: Any, budget: Any, teacher: Mapping) -> list:
    """One figure per pair of objectives: all feasible trials, the front, budget lines."""
    plt = _plt()
    names = list(front.objectives)
    members = {m.number for m in front}
    done = [r for r in results if r.ok]
    figures = []
    # accuracy always on the y axis
    pairs = [(b, a) if a == "accuracy" else (a, b) for a, b in itertools.combinations(names, 2)]
    pairs.sort(key=lambda p: (p[1] != "accuracy", p[0] != "memory_bytes"))  # the main one first
    for x, y in pairs:
        fig, ax = plt.subplots(figsize=(4.6, 3.6))
        for group, style in ((
                [r for r in done if not r.feasible], dict(c="#d62728", marker="x", s=14,
                                                          label="infeasible")),
                ([r for r in done if r.feasible and r.number not in members],
                 dict(c="#aaaaaa", s=12, label="feasible")),
                ([r for r in done if r.number in members],
                 dict(c="#1f77b4", s=30, label="Pareto front"))):
            if group:
                ax.scatter([r.metrics[x] for r in group], [r.metrics[y] for r in group], **style)
        if teacher:
            ax.scatter([teacher[x]], [teacher[y]], c="black", marker="*", s=90, label="teacher")
        for axis, name in (("x", x), ("y", y)):
            limit = getattr(budget, LIMIT_OF.get(name, ""), None) if budget else None
            if name == "accuracy" and budget is not None:
                limit = budget.accuracy_floor(teacher.get("accuracy"))
            if limit is not None:
                (ax.axvline if axis == "x" else ax.axhline)(limit, ls="--", c="#d62728", lw=1)
        for name, setter in ((x, ax.set_xscale), (y, ax.set_yscale)):
            if name.endswith("bytes") or name == "latency_ms":
                setter("log")
        ax.set_xlabel(LABELS[x])
        ax.set_ylabel(LABELS[y])
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        figures.append((f"{y} against {x}", fig))
    return figures


def hypervolume_plot(history: Sequence[float]):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    ax.plot(range(1, len(history) + 1), history, c="#1f77b4")
    ax.set_xlabel("trials")
    ax.set_ylabel("hypervolume (normalised)")
    return fig


def _cell(value: Any, name: str = "") -> str:
    if name.endswith("bytes") and isinstance(value, int | float):
        shown = format_bytes(value)
    else:
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
    return f'<td data-v="{html.escape(str(value), quote=True)}">{html.escape(shown)}</td>'


def front_table(front: Any, teacher: Mapping) -> str:
    names = list(front.objectives)
    choices = sorted({k for m in front for k in m.plan.choices})
    head = ["trial", *names, "smaller", "faster", *choices]
    rows = []
    for m in front:
        metrics = m.metrics
        smaller = teacher.get("memory_bytes", float("nan")) / metrics["memory_bytes"]
        faster = teacher.get("latency_ms", float("nan")) / metrics.get("latency_ms", float("nan"))
        cells = [_cell(m.number), *(_cell(metrics[n], n) for n in names), _cell(round(smaller, 2)),
                 _cell(round(faster, 2)), *(_cell(m.plan.get(c)) for c in choices)]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return (f'<table class="sortable" id="front"><thead><tr>{header}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def render(*, name: str, results: Sequence[Any], front: Any, teacher: Mapping, budget: Any,
           history: Sequence[float], settings: Mapping[str, Any]) -> str:
    """The whole page as a string."""
    esc = html.escape
    tally = TrialCounts.of(results)
    counts = {"feasible": tally.feasible, "infeasible after training": tally.infeasible_trained,
              "infeasible, stopped at structure": tally.structure,
              "stopped early": tally.early, "not trained (predictor)": tally.skipped,
              "failed": tally.failed, "interrupted, then retried": tally.interrupted}
    reasons: dict[str, int] = {}
    broken: dict[str, int] = {}
    for r in results:
        for limit, over in r.constraints.items():
            if over > 0 and r.state == "complete":
                broken[limit] = broken.get(limit, 0) + 1
        if r.state == "failed":
            reasons[r.reason] = reasons.get(r.reason, 0) + 1
    budget_lines = budget.describe(teacher.get("accuracy")) if budget and not budget.empty \
        else ["none"]
    teacher_line = ", ".join(
        f"{k} {format_bytes(v) if k.endswith('bytes') else f'{v:.4g}'}"
        for k, v in teacher.items() if isinstance(v, int | float))
    plots = "".join(f"<figure>{_svg(fig)}<figcaption>{esc(title)}</figcaption></figure>"
                    for title, fig in scatter_plots(results, front, budget, teacher))
    plots += (f"<figure>{_svg(hypervolume_plot(history))}<figcaption>hypervolume over trials"
              f"</figcaption></figure>") if history else ""
    reason_items = "".join(f"<li>{esc(reason)} ({n})</li>" for reason, n in reasons.items())
    broken_items = "".join(f"<li>{esc(limit)} over its limit: {n} trial(s)</li>"
                           for limit, n in sorted(broken.items()))
    front_html = front_table(front, teacher) if front.members else (
        "<p><b>No trial met the budget.</b> See trials.csv for the limits each broke.</p>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>autocompress: {esc(name)}</title>
<style>{_STYLE}</style></head><body>
<h1>Study {esc(name)}</h1>
<p class="note">{esc(json.dumps(settings))}</p>
<h2>Budget</h2><ul>{"".join(f"<li>{esc(line)}</li>" for line in budget_lines)}</ul>
<h2>Teacher</h2><p>{esc(teacher_line)}</p>
<h2>Pareto front ({len(front)} members, hypervolume {front.hypervolume:.4f})</h2>
<p class="note">Click a column to sort. Accuracy on the validation split; latency the median of
timed passes; memory the bytes of the packed stored model.</p>
{front_html}
<h2>Plots</h2><div class="plots">{plots}</div>
<h2>Trials</h2><p>{esc(tally.summary())}</p>
<ul>{"".join(f"<li>{esc(k)}: {v}</li>" for k, v in counts.items() if v)}</ul>
{f"<h3>Why trials were infeasible</h3><ul>{broken_items}</ul>" if broken_items else ""}
{f"<h3>Failure reasons</h3><ul>{reason_items}</ul>" if reason_items else ""}
<script>{_SCRIPT}</script>
</body></html>
"""
