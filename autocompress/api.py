"""``autocompress.search``: the study-file path in Python, for a teacher the user brings."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autocompress.backends.parallel import check_main_guard, leave_if_reimporting_main
from autocompress.budget import Budget
from autocompress.config import resolve_space, study_from_dict
from autocompress.errors import ConfigError
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
    budget: Mapping[str, Any] | Budget | None = None,
    finetune: Mapping[str, Any] | None = None,
    measure: Mapping[str, Any] | None = None,
    batch_size: int | None = None,
    threads: int | None = None,
    runtime: str | None = None,
    finetune_epochs: int | None = None,
    student_factory: Callable[[Any, nn.Module], nn.Module] | None = None,
    max_split_bytes: int | None = None,
    spill_dir: str | Path | None = None,
    progress: Progress = print,
    **study: Any,
) -> StudyOutcome:
    """Search compressed versions of your own trained ``teacher``; the study-file path in Python.

    ``train``/``val``/``test``: ``(x, y)`` tensors or numpy arrays, dicts of columns, torch
    Datasets, lists of samples, or DataLoaders of ``(x, y)`` or Hugging Face dict batches
    (``input_ids``/``attention_mask``/``labels``, ``pixel_values``; see
    :mod:`autocompress.tasks.inputs`). A teacher returning a structured output (``.logits``)
    works as it is.
    ``metric(model, split)`` is maximised (default: accuracy); ``split.x``/``split.y`` are tensors.
    ``space``: a shipped space name, a YAML path, a mapping as in the YAML, or a SearchSpace.

    Everything a study file holds is a keyword here, checked by the same code:
    ``budget={"max_latency_ms": 2, "max_memory_bytes": "100kB", "max_accuracy_drop": 1}``,
    ``finetune={"epochs": 3, "lr": 1e-4, "batch_size": 32, ...}``,
    ``measure={"runtime": "onnxruntime", "batch_size": 1, "threads": 1, "device": "cpu"}``, and,
    through ``**study``, ``pruner``, ``backend``, ``ray``, ``storage``, ``jobs``,
    ``trial_timeout``, ``predictor``, ``keep_models`` ... (an unknown keyword is refused, naming
    the allowed ones). ``batch_size``, ``threads``, ``runtime`` and ``finetune_epochs`` are
    shortcuts into ``measure`` and ``finetune``. ``student_factory(plan, teacher)`` builds the
    student when the teacher cannot be traced. With ``jobs`` > 1 the metric and factory must be
    module-level functions, and a script must call ``search`` under ``if __name__ ==
    "__main__":`` (each worker re-imports it; an unguarded call is refused). A split over
    ``max_split_bytes`` (2 GiB) is written once to ``spill_dir`` (default: a temporary folder)
    and read from there through a memory map.

    >>> outcome = autocompress.search(model, train=(x, y), val=(xv, yv),  # doctest: +SKIP
    ...                               budget={"max_accuracy_drop": 1}, trials=30)
    >>> best = outcome.front.members[0].number                           # doctest: +SKIP
    >>> outcome.export(best, format="onnx", path="exported/")           # doctest: +SKIP
    """
    leave_if_reimporting_main()  # a --jobs worker re-running an unguarded script: no work
    if "task" in study:
        raise ConfigError("search()", "task", study["task"],
                          "no task keyword: the teacher and data are search()'s arguments")
    fields: dict[str, Any] = {"name": name, "trials": trials, "seed": seed, "sampler": sampler,
                              **study}
    if objectives is not None:
        fields["objectives"] = dict(objectives)
    if budget is not None:
        fields["budget"] = budget.to_dict() if isinstance(budget, Budget) else dict(budget)
    fields["measure"] = _with_shortcuts(
        "measure", measure, {"batch_size": batch_size, "threads": threads, "runtime": runtime},
        defaults={"batch_size": 1, "threads": 1, "runtime": "onnxruntime"})
    fields["finetune"] = _with_shortcuts("finetune", finetune, {"epochs": finetune_epochs},
                                         defaults={"epochs": 3})
    config = study_from_dict(fields, where="search()")
    if config.jobs > 1:
        check_main_guard("search()")  # before the data is wrapped (and maybe spilled)
    if isinstance(space, Mapping):
        space = SearchSpace.from_dict(space, where="search(space=...)")
    elif not isinstance(space, SearchSpace):
        space = SearchSpace.from_yaml(resolve_space(str(space), study_source="search()"))
    task_kwargs: dict[str, Any] = {"example_input": example_input, "test": test,
                                   "student_factory": student_factory, "spill_dir": spill_dir}
    if max_split_bytes is not None:
        task_kwargs["max_split_bytes"] = max_split_bytes
    if metric is not None:
        task_kwargs["metric"] = metric
    task = Task(name, teacher.eval(), train, val, **task_kwargs)
    return run_study(config, task=task, space=space, out_dir=out_dir, progress=progress)


def _with_shortcuts(section: str, given: Mapping[str, Any] | None,
                    shortcuts: Mapping[str, Any], *, defaults: Mapping[str, Any]
                    ) -> dict[str, Any]:
    """A section from its mapping and its shortcut keywords; the two may not disagree. The API's
    own defaults (batch 1, 1 thread, onnxruntime, 3 epochs) fill what neither gives."""
    merged = {**defaults, **dict(given or {})}
    for key, value in shortcuts.items():
        if value is None:
            continue
        if given is not None and key in given and given[key] != value:
            raise ConfigError("search()", f"{section}.{key}", value,
                              f"one value: {section}={{{key!r}: {given[key]!r}}} and "
                              f"{key}={value!r} disagree")
        merged[key] = value
    return merged


def search_lm(
    teacher: nn.Module,
    *,
    train: Any,
    calibration: Any,
    val: Any,
    test: Any = None,
    tokenizer: Any = None,
    sequence_length: int = 256,
    space: str | Path | Mapping[str, Any] | SearchSpace = "llm",
    name: str = "custom_lm",
    out_dir: str | Path | None = None,
    trials: int = 12,
    seed: int = 0,
    sampler: str = "tpe",
    objectives: Mapping[str, str] | None = None,
    budget: Mapping[str, Any] | Budget | None = None,
    measure: Mapping[str, Any] | None = None,
    threads: int | None = None,
    runtime: str | None = None,
    progress: Progress = print,
    **study: Any,
) -> StudyOutcome:
    """Search compressed versions of a causal language model (a Hugging Face ``*ForCausalLM``).

    Each split is an ``(N, L)`` int64 tensor of token ids, or text (a string or a list of
    documents) cut by ``tokenizer`` into sequences of ``sequence_length`` tokens: ``train`` for
    distillation, ``calibration`` for pruning, quantization and importance, ``val`` for the
    perplexity the search sees, ``test`` for the one the report shows. Keep the splits' documents
    apart. The space defaults to ``search_spaces/llm.yaml``; objectives to perplexity, decode
    tokens per second and stored bytes; budgets such as ``{"max_perplexity_increase": "10%"}``.

    >>> outcome = autocompress.search_lm(model, tokenizer=tok, train=books[:12],  # doctest: +SKIP
    ...     calibration=books[12:14], val=books[14:16], test=books[16:], trials=8)
    """
    from autocompress.llm.task import LMTask
    from autocompress.llm.text import token_sequences

    leave_if_reimporting_main()

    def tokens(split: str, data: Any) -> Any:
        if data is None or isinstance(data, torch.Tensor):
            return data
        if tokenizer is None:
            raise ConfigError("search_lm()", split, type(data).__name__,
                              "an (N, L) int64 tensor of token ids, or text with tokenizer=")
        texts = [data] if isinstance(data, str) else list(data)
        return token_sequences(tokenizer, texts, sequence_length)

    fields: dict[str, Any] = {"name": name, "trials": trials, "seed": seed, "sampler": sampler,
                              "task": "causal_lm", "predictor": False, **study}
    if objectives is not None:
        fields["objectives"] = dict(objectives)
    if budget is not None:
        fields["budget"] = budget.to_dict() if isinstance(budget, Budget) else dict(budget)
    fields["measure"] = _with_shortcuts(
        "measure", measure, {"threads": threads, "runtime": runtime},
        defaults={"threads": 1, "runtime": "torch"})
    config = study_from_dict(fields, where="search_lm()")
    if isinstance(space, Mapping):
        space = SearchSpace.from_dict(space, where="search_lm(space=...)")
    elif not isinstance(space, SearchSpace):
        space = SearchSpace.from_yaml(resolve_space(str(space), study_source="search_lm()"))
    task = LMTask(name, teacher.eval(), tokens("train", train),
                  tokens("calibration", calibration), tokens("val", val), tokens("test", test),
                  tokenizer=tokenizer)
    return run_study(config, task=task, space=space, out_dir=out_dir, progress=progress)
