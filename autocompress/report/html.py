"""``report.html``: one self-contained page to choose a model from (inline SVG plots with a hover
label per trial, an inline sorting script, no network).

Top to bottom: the teacher, budget and settings in a person's units with the counts the CLI
prints; the Pareto front with the searched choices beside its figures (the fixed ones folded
away); wide plots; then every trial. Everything a user supplied (study name, choices, reasons)
is escaped before it reaches the page.
"""

from __future__ import annotations

import html
import io
import itertools
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from autocompress.report.tables import (
    METRIC_LABELS,
    figure_names,
    format_choice,
    format_metric,
    format_no_front,
    split_choices,
    teacher_ratios,
    trial_outcome,
    trial_reason,
    trial_title,
)
from autocompress.result import COMPLETE, FAILED, TrialCounts
from autocompress.units import format_bytes

AXIS_LABELS = {"accuracy": "validation accuracy", "latency_ms": "latency (ms)",
               "memory_bytes": "stored size", "peak_memory_bytes": "peak memory",
               "perplexity": "validation perplexity", "tokens_per_s": "decode tokens/s"}
LIMIT_OF = {"latency_ms": "max_latency_ms", "memory_bytes": "max_memory_bytes",
            "peak_memory_bytes": "max_peak_memory_bytes"}
TEACHER_FIGURES = ("accuracy", "test_accuracy", "perplexity", "test_perplexity", "latency_ms",
                   "tokens_per_s", "memory_bytes", "peak_memory_bytes", "parameters")
BEST = {"accuracy": "most accurate", "perplexity": "lowest perplexity", "latency_ms": "fastest",
        "tokens_per_s": "fastest decoding", "memory_bytes": "smallest",
        "peak_memory_bytes": "least peak memory"}
_POINT = {"other": dict(c="#e6a6a6", marker="x", s=18, linewidths=1.0,
                        label="infeasible or stopped"),
          "feasible": dict(c="#8a8a8a", s=30, label="feasible"),
          "front": dict(c="#1f77b4", s=80, edgecolors="#0b3c61", linewidths=1.0, zorder=3,
                        label="Pareto front")}

_SCRIPT = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  var heads = table.tHead.rows[table.tHead.rows.length - 1].cells;
  Array.from(heads).forEach(function (th, col) {
    th.addEventListener('click', function () {
      var body = table.tBodies[table.tBodies.length - 1];
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
});
"""

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em 2em;max-width:1400px;color:#222}
h1{margin:0 0 .2em} h2{margin:1.4em 0 .4em} .counts{font-size:15px;margin:.2em 0 1em}
.cards{display:grid;grid-template-columns:repeat(4,1fr);gap:12px}
.cards section{border:1px solid #ddd;border-radius:6px;padding:8px 12px;background:#fafafa}
.cards h2{font-size:15px;margin:0 0 6px} .cards ul{margin:0;padding-left:1.1em}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:0}
dt{color:#555} dd{margin:0;font-weight:600} .note{color:#555;font-size:13px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{border:1px solid #ccc;padding:2px 5px;text-align:right;white-space:nowrap}
thead th{white-space:normal;vertical-align:bottom;background:#f2f2f2;cursor:pointer}
thead tr.groups th{background:#e4ebf3;cursor:default;text-align:center}
td.t{text-align:left;white-space:normal;min-width:170px} tr.off td{color:#999}
tbody.teacher td{background:#f7f7f7;font-style:italic} tr.front td:first-child{font-weight:700}
tr.front td{background:#eef5fc} .plots figure{margin:0} .plots figure.wide{grid-column:1/-1}
.plots{display:grid;grid-template-columns:1fr 1fr;gap:8px 16px}
.plots svg{width:100%;height:auto} figcaption{text-align:center;color:#555;font-size:13px}
.plots g[id^="pt"]:hover :is(path,use){stroke:#000 !important;stroke-width:2px !important}
.fixed{font-size:13px;color:#444;line-height:1.6}
"""


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"
    import matplotlib.pyplot as plt

    return plt


def _svg(fig, titles: Mapping[int, str] | None = None) -> str:
    """The figure as inline SVG; each ``<g id="pt{plot}_{trial}">`` gets its trial's ``<title>``
    (the browser's hover label)."""
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buffer.getvalue()
    text = text[text.index("<svg"):]  # drop the XML prolog: the page is HTML

    def label(match: re.Match) -> str:
        title = (titles or {}).get(int(match.group(1)))
        return match.group(0) + (f"<title>{html.escape(title)}</title>" if title else "")

    return re.sub(r'<g id="pt\d+_(\d+)">', label, text)


def _tick(name: str, value: float) -> str:
    if name.endswith("accuracy"):
        return f"{100 * value:g}%"
    return format_bytes(value) if name.endswith("bytes") else f"{value:g}"


def _scale(ax, axis: str, name: str, values: Sequence[float]) -> None:
    """Log where the values span more than 20x (sizes, usually), with ticks in a person's units."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    target = ax.xaxis if axis == "x" else ax.yaxis
    positive = [v for v in values if v > 0]
    if positive and max(positive) / min(positive) > 20:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
        target.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        target.set_minor_formatter(NullFormatter())
    target.set_major_formatter(FuncFormatter(lambda v, _: _tick(name, v)))


def _label(ax, labels: Sequence[tuple[str, float, float]]) -> None:
    """Name the teacher and the front's members beside their points, leaving out a label that
    would overlap one already placed (every point's hover label names it anyway)."""
    ax.autoscale_view()
    placed: list[tuple[float, float, int]] = []
    for text, x, y in labels:
        px, py = ax.transData.transform((x, y))
        if any(abs(px - qx) < 7 * max(n, len(text)) and abs(py - qy) < 13 for qx, qy, n in placed):
            continue
        placed.append((px, py, len(text)))
        ax.annotate(text, (x, y), xytext=(6, 4), textcoords="offset points", fontsize=9,
                    color="black" if text == "teacher" else "#0b3c61")


def _limit(name: str, budget: Any, teacher: Mapping) -> float | None:
    if budget is None:
        return None
    if name == "accuracy":
        return budget.accuracy_floor(teacher.get("accuracy"))
    if name == "perplexity":
        return budget.perplexity_ceiling(teacher.get("perplexity"))
    return getattr(budget, LIMIT_OF.get(name, ""), None)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def scatter_plots(results: Sequence[Any], front: Any, budget: Any, teacher: Mapping) -> list:
    """One figure per pair of objectives, the main one (quality against size) first and wide.

    Every trial is its own group ``pt{plot}_{trial}`` so the page can give it a hover label;
    the front is labelled, infeasible points faint, the teacher and the budget drawn."""
    plt = _plt()
    names = list(front.objectives)
    quality = next((n for n in ("accuracy", "perplexity") if n in names), None)
    members = {m.number for m in front}
    pairs = [(b, a) if a == quality else (a, b) for a, b in itertools.combinations(names, 2)]
    pairs.sort(key=lambda p: (p[1] != quality, p[0] != "memory_bytes"))  # the main one first
    figures = []
    for index, (x, y) in enumerate(pairs):
        fig, ax = plt.subplots(figsize=(13, 5.2) if index == 0 else (6.4, 4.4))
        shown = [r for r in results if r.state == COMPLETE and _finite(r.metrics.get(x))
                 and _finite(r.metrics.get(y))]
        kinds = {r.number: "front" if r.number in members else
                 "feasible" if r.ok and r.feasible else "other" for r in shown}
        order = ("other", "feasible", "front")
        seen: set[str] = set()
        for r in sorted(shown, key=lambda r: order.index(kinds[r.number])):  # the front on top
            style = dict(_POINT[kinds[r.number]])
            if style["label"] in seen:
                style["label"] = "_nolegend_"
            seen.add(style["label"])
            ax.scatter([r.metrics[x]], [r.metrics[y]], gid=f"pt{index}_{r.number}", **style)
        labels = [(f"#{r.number}", r.metrics[x], r.metrics[y]) for r in shown
                  if kinds[r.number] == "front"]
        if _finite(teacher.get(x)) and _finite(teacher.get(y)):
            ax.scatter([teacher[x]], [teacher[y]], c="black", marker="*", s=200, zorder=4,
                       label="teacher")
            labels.insert(0, ("teacher", teacher[x], teacher[y]))
        values = {x: [r.metrics[x] for r in shown], y: [r.metrics[y] for r in shown]}
        for axis, name in (("x", x), ("y", y)):
            limit = _limit(name, budget, teacher)
            if limit is not None:
                (ax.axvline if axis == "x" else ax.axhline)(
                    limit, ls="--", c="#d62728", lw=1,
                    label="_nolegend_" if "budget limit" in seen else "budget limit")
                seen.add("budget limit")
            _scale(ax, axis, name, values[name] + [teacher.get(name, 0)] + [limit or 0])
        _label(ax, labels)
        ax.set_xlabel(AXIS_LABELS.get(x, x))
        ax.set_ylabel(AXIS_LABELS.get(y, y))
        ax.grid(True, color="#eeeeee", lw=0.6)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
        figures.append((f"{AXIS_LABELS.get(y, y)} against {AXIS_LABELS.get(x, x)}", fig))
    return figures


def hypervolume_plot(history: Sequence[float]):
    from matplotlib.ticker import MaxNLocator

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.step(range(1, len(history) + 1), history, where="post", c="#1f77b4")
    ax.set_ylim(0, max(history) * 1.15 or 1.0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trials")
    ax.set_ylabel("hypervolume (normalised)")
    ax.grid(True, color="#eeeeee", lw=0.6)
    return fig


def _cell(raw: Any, shown: str | None = None, cls: str = "") -> str:
    shown = format_choice(raw) if shown is None else shown
    attr = f' class="{cls}"' if cls else ""
    return f'<td{attr} data-v="{html.escape(str(raw), quote=True)}">{html.escape(shown)}</td>'


def _head(lead: Sequence[tuple[str, str]], choices: Sequence[str],
          tail: Sequence[tuple[str, str]] = ()) -> str:
    """Header rows: the searched choices grouped by section (``prune``: ``ratio``, ``kind``)."""
    def th(key: str, text: str) -> str:  # long names may wrap after an underscore
        return (f'<th data-col="{html.escape(key, quote=True)}" title="{html.escape(key)}">'
                f'{html.escape(text).replace("_", "_<wbr>")}</th>')

    cells = [th(k, t) for k, t in lead]
    cells += [th(c, c.split(".", 1)[-1]) for c in choices]
    cells += [th(k, t) for k, t in tail]
    row = f"<tr>{''.join(cells)}</tr>"
    if not choices:
        return f"<thead>{row}</thead>"
    groups = [f'<th colspan="{len(list(g))}">{html.escape(k)}</th>'
              for k, g in itertools.groupby(choices, key=lambda c: c.split(".", 1)[0])]
    blank = f'<th colspan="{len(lead)}"></th>'
    after = f'<th colspan="{len(tail)}"></th>' if tail else ""
    return f'<thead><tr class="groups">{blank}{"".join(groups)}{after}</tr>{row}</thead>'


def front_table(front: Any, teacher: Mapping, choices: Sequence[str]) -> str:
    """The front: trial, objectives, test figure, times smaller/faster, the searched choices."""
    figures = figure_names(list(front.objectives), front.members)
    ratios = [k for k, v in teacher_ratios(teacher, teacher).items() if v is not None]
    lead = [("trial", "trial"), *((k, METRIC_LABELS.get(k, k)) for k in figures),
            *((k, k) for k in ratios)]
    head = _head(lead, choices)
    rows = []
    for m in front:
        times = teacher_ratios(m.metrics, teacher)
        cells = [_cell(m.number, f"#{m.number}"),
                 *(_cell(m.metrics.get(k), format_metric(k, m.metrics.get(k))) for k in figures),
                 *(_cell(times[k], f"{times[k]:.1f}×" if times[k] else "-") for k in ratios),
                 *(_cell(m.plan.get(c)) for c in choices)]
        rows.append("<tr class=\"front\">" + "".join(cells) + "</tr>")
    teacher_row = ""
    if teacher:
        cells = [_cell("teacher"), *(_cell(teacher.get(k), format_metric(k, teacher.get(k)))
                                     for k in figures), *(_cell(1.0, "1.0×") for _ in ratios)]
        spare = f'<td colspan="{len(choices)}" class="t">the uncompressed model</td>'
        teacher_row = f'<tbody class="teacher"><tr>{"".join(cells)}{spare if choices else ""}' \
                      f"</tr></tbody>"
    return (f'<table class="sortable" id="front">{head}{teacher_row}'
            f'<tbody>{"".join(rows)}</tbody></table>')


def trials_table(results: Sequence[Any], objectives: Sequence[str], members: set,
                 choices: Sequence[str]) -> str:
    """Every trial, sortable; infeasible, stopped and failed rows greyed, with the reason."""
    figures = figure_names(objectives, results)
    lead = [("trial", "trial"), *((k, METRIC_LABELS.get(k, k)) for k in figures)]
    rows = []
    for r in sorted(results, key=lambda r: r.number if r.number is not None else -1):
        outcome = trial_outcome(r, members)
        cls = "front" if outcome == "front" else "" if outcome == "feasible" else "off"
        why = trial_reason(r)
        cells = [_cell(r.number, f"#{r.number}"),
                 *(_cell(r.metrics.get(k), format_metric(k, r.metrics.get(k))) for k in figures),
                 *(_cell(r.plan.get(c), "" if c not in r.plan.choices else None)
                   for c in choices), _cell(outcome, f"{outcome}: {why}" if why else outcome, "t")]
        rows.append(f'<tr class="{cls}">' + "".join(cells) + "</tr>")
    return (f'<table class="sortable" id="trials">{_head(lead, choices, [("outcome", "outcome")])}'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _items(pairs: Sequence[tuple[str, str]]) -> str:
    return "<dl>" + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>"
                            for k, v in pairs) + "</dl>"


def _summary(front: Any, teacher: Mapping, budget: Any, settings: Mapping[str, Any],
             tally: TrialCounts) -> str:
    """The four cards at the top: teacher, budget, settings, and the front's best picks."""
    teacher_items = [(METRIC_LABELS.get(k, k), format_metric(k, teacher[k]))
                     for k in TEACHER_FIGURES if k in teacher]
    limits = budget.describe(teacher.get("accuracy")) if budget is not None \
        and not budget.empty else ["no limits"]
    shown = [(k, format_choice(v)) for k, v in settings.items() if v is not None]
    picks = [("members", f"{len(front)} of {tally.feasible} feasible"),
             ("hypervolume", f"{front.hypervolume:.4f}")]
    for name, direction in front.objectives.items():
        if front.members:
            best = (max if direction == "max" else min)(front, key=lambda m: m.metrics[name])
            picks.append((BEST.get(name, f"best {name}"),
                          f"#{best.number}: {format_metric(name, best.metrics[name])}"))
    cards = [("Teacher", _items(teacher_items) if teacher_items else "not measured"),
             ("Budget", "<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in limits)
              + "</ul>"),
             ("Settings", _items(shown) if shown else "defaults"),
             ("Pareto front", _items(picks))]
    return '<div class="cards">' + "".join(f"<section><h2>{t}</h2>{body}</section>"
                                           for t, body in cards) + "</div>"


def render(*, name: str, results: Sequence[Any], front: Any, teacher: Mapping, budget: Any,
           history: Sequence[float], settings: Mapping[str, Any],
           searched: Sequence[str] | None = None) -> str:
    """The whole page as a string; ``searched`` names the study's searched dimensions (without
    it, the plan entries that vary across trials are taken as the searched ones)."""
    esc = html.escape
    tally = TrialCounts.of(results)
    members = {m.number for m in front}
    objectives = list(front.objectives)
    choices, fixed = split_choices([r.plan for r in results], searched)
    broken = Counter(limit for r in results if r.state == COMPLETE
                     for limit, over in r.constraints.items() if over > 0)
    reasons = Counter(r.reason for r in results if r.state == FAILED)
    titles = {r.number: trial_title(r, objectives, members) for r in results}
    plots = "".join(f'<figure class="{"wide" if i == 0 else ""}">{_svg(fig, titles)}'
                    f"<figcaption>{esc(title)}</figcaption></figure>"
                    for i, (title, fig) in enumerate(scatter_plots(results, front, budget,
                                                                   teacher)))
    if history:
        flat = " (0 while no feasible trial beats the reference point on every objective)" \
            if max(history) == 0 else ""
        plots += (f"<figure>{_svg(hypervolume_plot(history))}<figcaption>hypervolume of the "
                  f"front over trials{flat}</figcaption></figure>")
    broken_items = "".join(f"<li>{esc(limit)} over its limit: {n} trial(s)</li>"
                           for limit, n in sorted(broken.items()))
    reason_items = "".join(f"<li>{esc(reason)} ({n})</li>" for reason, n in reasons.items())
    front_html = front_table(front, teacher, choices) if front.members else (
        f"<p><b>No trial met the budget.</b></p><pre class=\"note\">"
        f"{esc(format_no_front(results))}</pre>")
    plural = "s" * (len(fixed) > 1)
    fixed_html = "" if not fixed else (
        f"<details><summary>Fixed in every trial ({len(fixed)} setting{plural})</summary>"
        f'<p class="fixed">' + " · ".join(f"{esc(k)} = {esc(format_choice(v))}"
                                          for k, v in fixed.items()) + "</p></details>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>autocompress: {esc(name)}</title>
<style>{_STYLE}</style></head><body>
<h1>Study {esc(name)}</h1>
<p class="counts" id="counts">{esc(tally.summary())}</p>
{_summary(front, teacher, budget, settings, tally)}
<h2>Pareto front: {len(front)} member(s)</h2>
<p class="note">The feasible trials no other trial beats on every objective, with the choices
searched. Accuracy on the validation split, test accuracy on the held-out test split; latency the
median of timed passes; stored size the packed model's bytes; smaller and faster against the
teacher. Click a heading to sort.</p>
{front_html}
{fixed_html}
<h2>Plots</h2>
<p class="note">Hover over a point for its trial and figures. Blue: the front (labelled);
grey: feasible; faint crosses: infeasible or stopped; star: the teacher; dashed: the budget.</p>
<div class="plots">{plots}</div>
<h2>All trials</h2>
<p>{esc(tally.summary())}</p>
{f"<h3>Why trials were infeasible</h3><ul>{broken_items}</ul>" if broken_items else ""}
{f"<h3>Failure reasons</h3><ul>{reason_items}</ul>" if reason_items else ""}
{trials_table(results, objectives, members, choices)}
<script>{_SCRIPT}</script>
</body></html>
"""
