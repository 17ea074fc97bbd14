"""``autocompress.search``: the study-file path in Python, for a teacher the user brings."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autocompress.config import resolve_space, study_from_dict
from autocompress.space import SearchSpace
from autocompress.study import StudyOutcome, run_study
from autocompress.tasks import Task

Progress = Callable[[str], None]


def search(
    teacher: nn.Module,
    *,
    train: Any,
    val: Any,
    test: Any = None,
    metric: Callable[[nn.Module, Any], float] | None = None,
    example_input: torch.Tensor | None = None,
    space: str | Path | Mapping[str, Any] | SearchSpace = "default",
    name: str = "custom",
    out_dir: str | Path | None = None,
    trials: int = 20,
    seed: int = 0,
    sampler: str = "nsga2",
    objectives: Mapping[str, str] | None = None,
    batch_size: int = 1,
    threads: int = 1,
    runtime: str = "onnxruntime",
    finetune_epochs: int = 3,
    student_factory: Callable[[Any, nn.Module], nn.Module] | None = None,
    trial_timeout: float | None = None,
    jobs: int = 1,
    storage: str | None = None,
    progress: Progress = print,
) -> StudyOutcome:
    """Search compressed versions of your own trained ``teacher``; the study-file path in Python.

    ``train``/``val``/``test``: ``(x, y)`` tensor pairs or DataLoaders of ``(x, y)`` batches.
    ``metric(model, split)`` is maximised (default: accuracy); ``split.x``/``split.y`` are tensors.
    ``space``: a shipped space name, a YAML path, a mapping as in the YAML, or a SearchSpace.
    ``student_factory(plan, teacher)``: builds the student when the teacher is not a flat
    ``nn.Sequential`` (see :mod:`autocompress.techniques.student`). ``trial_timeout`` (seconds),
    ``jobs`` (worker processes; the metric and factory must then be module-level functions)
    and ``storage`` (a SQLAlchemy URL) are as in a study file.
    """
    fields: dict[str, Any] = {
        "name": name, "trials": trials, "seed": seed, "sampler": sampler,
        "measure": {"batch_size": batch_size, "threads": threads, "runtime": runtime},
        "finetune": {"epochs": finetune_epochs}, "jobs": jobs,
    }
    if trial_timeout is not None:
        fields["trial_timeout"] = trial_timeout
    if storage is not None:
        fields["storage"] = storage
    if objectives is not None:
        fields["objectives"] = dict(objectives)
    config = study_from_dict(fields, where="search()")
    if isinstance(space, Mapping):
        space = SearchSpace.from_dict(space, where="search(space=...)")
    elif not isinstance(space, SearchSpace):
        space = SearchSpace.from_yaml(resolve_space(str(space), study_source="search()"))
    task_kwargs: dict[str, Any] = {"example_input": example_input, "test": test,
                                   "student_factory": student_factory}
    if metric is not None:
        task_kwargs["metric"] = metric
    task = Task(name, teacher.eval(), train, val, **task_kwargs)
    return run_study(config, task=task, space=space, out_dir=out_dir, progress=progress)
