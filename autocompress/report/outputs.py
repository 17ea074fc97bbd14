"""Everything in a study's output folder that people read, rebuilt from the folder alone.

``write_report(folder)`` reads the study's storage, ``study.json`` and ``teacher.json`` and writes
``report.html``, ``pareto.json`` and ``pareto.png`` (and the CSVs): the end of every search calls
it, and so does ``autocompress report`` at any later time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from autocompress.backends.record import load_results
from autocompress.backends.storage import load_recorded_study
from autocompress.budget import Budget
from autocompress.errors import ConfigError
from autocompress.files import write_atomic
from autocompress.pareto import hypervolume_history, pareto_front
from autocompress.report.folder import read_study_record, read_teacher_card
from autocompress.report.html import render, scatter_plots
from autocompress.report.tables import write_tables


def pareto_json(front: Any, teacher: dict, record: dict) -> str:
    """Front members with their choices, metrics and the noise of their latency."""
    members = [{
        "trial": m.number,
        "choices": dict(m.plan.choices),
        "seed": m.plan.seed,
        "metrics": m.metrics,
        "latency_noise_ms": m.metrics.get("latency_noise_ms"),
        "measurement": m.measurement,
    } for m in front]
    return json.dumps({"study": record.get("name"), "objectives": dict(front.objectives),
                       "budget": record.get("budget", {}), "teacher": teacher,
                       "hypervolume": front.hypervolume, "reference": dict(front.reference),
                       "members": members}, indent=2, default=str)


def write_report(folder: str | Path) -> Path:
    """(Re)write the readable outputs of the study in ``folder``; returns report.html's path."""
    folder = Path(folder)
    record = read_study_record(folder)
    teacher = read_teacher_card(folder)
    try:
        budget = Budget(**(record.get("budget") or {}))
    except TypeError:
        raise ConfigError(str(folder / "study.json"), "budget", record.get("budget"),
                          "the budget's limits, as a search writes them") from None
    objectives = record["objectives"]
    study = load_recorded_study(folder, record)
    results = load_results(study)
    front = pareto_front(results, objectives, teacher, budget)
    history = hypervolume_history(results, objectives, teacher, budget)
    write_tables(folder, results, front)
    write_atomic(folder / "pareto.json", pareto_json(front, teacher, record))
    settings = {k: record.get(k) for k in ("sampler", "seed", "pruner", "runtime", "trials")}
    page = render(name=record["name"], results=results, front=front, teacher=teacher,
                  budget=budget, history=history, settings=settings)
    write_atomic(folder / "report.html", page)
    figures = scatter_plots(results, front, budget, teacher)
    if figures:
        import io

        buffer = io.BytesIO()
        figures[0][1].savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        write_atomic(folder / "pareto.png", buffer.getvalue())
        import matplotlib.pyplot as plt

        for _, fig in figures:
            plt.close(fig)
    return folder / "report.html"
