"""The study file: what to compress, the space to search, how to measure, how long to search.

Example (a smaller ``studies/quickstart.yaml``)::

    name: quickstart
    task: {dataset: mnist5k, teacher: lenet300}
    space: search_spaces/default.yaml
    objectives: {accuracy: max, latency_ms: min, memory_bytes: min}
    measure: {batch_size: 1, threads: 1}   # runtime: onnxruntime (default) or torch
    finetune: {epochs: 3}
    trials: 24
    sampler: nsga2
    seed: 0

Loading checks every field and raises :class:`ConfigError` naming the file, the field, the value
and what is allowed. :meth:`StudyConfig.with_overrides` goes through the same check, so a study
file, the Python API and the command line meet one gate.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from autocompress import config_sections as check
from autocompress.budget import Budget
from autocompress.config_sections import FinetuneConfig
from autocompress.errors import ConfigError, did_you_mean, unknown_key_error
from autocompress.files import is_file, read_yaml
from autocompress.tasks import DATASETS, TEACHERS
from autocompress.units import parse_seconds

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SAMPLERS = ("nsga2", "tpe", "random", "qmc", "auto")
PRUNERS = ("none", "median", "hyperband")
BACKENDS = ("optuna", "ray")
KEEP_MODELS = ("front", "all", "none")
KEEP_LAST = 10  # with keep_models: front, the weights of the last trials are kept too
DEFAULT_OBJECTIVES = {"accuracy": "max", "latency_ms": "min", "memory_bytes": "min"}
LM_OBJECTIVES = {"perplexity": "min", "tokens_per_s": "max", "memory_bytes": "min"}
MAX_SEED = 2**32 - 1          # numpy's and Optuna's samplers take seeds in [0, 2**32 - 1]
MAX_TRIAL_TIMEOUT = 30 * 86400.0  # seconds; setitimer overflows near 1e11, NaN never fires
MAX_NAME = 128                # a folder and an Optuna study name (SQL column of 512)


@dataclass(frozen=True)
class TaskConfig:
    """A built-in task. ``kind: causal_lm`` (or ``task: causal_lm``) is the language-model task:
    the text cut into sequences of ``sequence_length`` tokens, so many per split."""

    kind: str = "classification"
    dataset: str = "mnist5k"
    teacher: str = "lenet300"
    teacher_epochs: int = 15
    checkpoint: str | None = None  # trained weights of the teacher (a state_dict) to use as is
    sequence_length: int = 256
    train_sequences: int = 256
    calibration_sequences: int = 32
    validation_sequences: int = 32
    test_sequences: int = 32


TASK_KINDS = ("classification", "causal_lm")
LM_DATASETS, LM_TEACHERS = ("gutenberg",), ("smollm2",)
LM_DEFAULTS = {"kind": "causal_lm", "dataset": "gutenberg", "teacher": "smollm2"}
LM_SPACE = "search_spaces/llm.yaml"


@dataclass(frozen=True)
class MeasureConfig:
    """How latency is measured: batch, threads, repeats, and the runtime it is deployed in."""

    batch_size: int = 1
    threads: int = 1
    warmup: int = 10
    repeats: int = 50
    runtime: str = "onnxruntime"   # a causal LM: torch (the default there) or torch-int8
    device: str = "cpu"
    prompt_length: int = 128       # a causal LM's prefill prompt (tokens)
    new_tokens: int = 32           # and the tokens it decodes with the KV cache


@dataclass(frozen=True)
class RayConfig:
    """How the study runs on Ray Tune (``backend: ray``)."""

    address: str = ""            # "" starts a local Ray; "auto", "host:6379", "ray://host:10001"
    max_concurrent: int = 2
    cpus_per_trial: int = 1      # also the latency measurement's threads inside the worker
    gpus_per_trial: int = 0
    max_failures: int = 2        # retries of a trial whose worker died
    scheduler: str = "asha"      # asha (stop weak trials between epochs) or fifo


@dataclass(frozen=True)
class StudyConfig:
    """A parsed, checked study file. ``space`` is a path, resolved by :func:`resolve_space`."""

    name: str
    task: TaskConfig = field(default_factory=TaskConfig)
    space: str = "search_spaces/default.yaml"
    objectives: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_OBJECTIVES))
    budget: Budget = field(default_factory=Budget)
    pruner: str = "none"
    backend: str = "optuna"
    ray: RayConfig = field(default_factory=RayConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    trials: int = 20             # finished trials the study should hold: a rerun completes it
    sampler: str = "nsga2"
    seed: int = 0
    trial_timeout: float | None = None   # seconds; a trial running longer fails
    storage: str | None = None   # SQLAlchemy URL; default: the journal <out>/study.journal
    jobs: int = 1                # worker processes on this machine sharing the study
    # skip training Plans a learned model calls hopeless; off by default: 1.14x hypervolume per
    # minute over 5 seeds, one seed 16% worse (docs/predictors.md)
    predictor: bool = False
    predictor_warmup: int = 30   # finished trials before the predictor starts judging
    predictor_max_skip: float = 0.3  # at most this share of trials is skipped
    keep_models: str = "front"   # trial weights kept: front (+ the last KEEP_LAST), all, none
    source: str = "<dict>"
    origins: Mapping[str, str] = field(default_factory=dict)  # field -> where an override came from

    def to_dict(self) -> dict[str, object]:
        """The study-file form: ``study_from_dict(config.to_dict())`` rebuilds this config."""
        return {name: _plain(getattr(self, name)) for name in self.__dataclass_fields__
                if name not in ("source", "origins")}

    def with_overrides(self, where: str = "command line", **changes: object) -> StudyConfig:
        """A copy with the given top-level fields replaced (``None`` values are ignored);
        ``ray_<field>`` replaces a field of the ``ray`` section. The result is checked again by
        :func:`study_from_dict`, as a study file is, and an error about a replaced field names
        ``where`` (recorded in ``origins``) instead of the study file.

        >>> config = study_from_dict({"name": "s", "trials": 5})
        >>> config.with_overrides(trials=8).trials
        8
        >>> config.with_overrides(trials=0)
        Traceback (most recent call last):
        ...
        autocompress.errors.ConfigError: command line: trials: got 0, expected an integer >= 1
        """
        data = self.to_dict()
        origins = dict(self.origins)
        for key, value in changes.items():
            if value is None:
                continue
            if key.startswith("ray_"):
                data["ray"] = {**data["ray"], key[4:]: _plain(value)}
                origins[f"ray.{key[4:]}"] = where
            else:
                data[key] = _plain(value)
                origins[key] = where
        return study_from_dict(data, where=self.source, origins=origins)


def _plain(value: object) -> object:
    """A config value in study-file form: sections as mappings, everything else as is."""
    if isinstance(value, Budget):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return dict(value)
    return value


def _task(where: str, data: object) -> TaskConfig:
    if data == "causal_lm":
        data = dict(LM_DEFAULTS)
    elif isinstance(data, Mapping) and data.get("kind") == "causal_lm":
        data = {**LM_DEFAULTS, **data}
    task = check.section(where, "task", data, TaskConfig)
    if task.kind not in TASK_KINDS:
        raise ConfigError(where, "task.kind", task.kind, f"one of {', '.join(TASK_KINDS)}")
    lm = task.kind == "causal_lm"
    for key, allowed in (("dataset", LM_DATASETS if lm else DATASETS),
                         ("teacher", LM_TEACHERS if lm else TEACHERS)):
        value = getattr(task, key)
        if value not in allowed:
            hint = did_you_mean(str(value), allowed)
            raise ConfigError(where, f"task.{key}", value, f"one of {', '.join(allowed)}{hint}")
    if task.checkpoint is not None:
        given = Path(str(task.checkpoint))
        beside = Path(where).parent / given
        found = given if is_file(given) else beside if is_file(beside) else None
        if found is None:
            raise ConfigError(where, "task.checkpoint", task.checkpoint,
                              f"an existing file holding a state_dict of {task.teacher} "
                              f"(saved with torch.save)")
        task = replace(task, checkpoint=str(found))
    return task


def _measure_under_budget(where: str, measure: MeasureConfig, budget: Budget) -> MeasureConfig:
    """The budget's batch size, threads and device are the measurement's; they must agree."""
    changes = {}
    for key in ("batch_size", "threads", "device"):
        wanted = getattr(budget, key)
        if wanted is None or (key == "device" and wanted == "cpu"):
            continue
        current, default = getattr(measure, key), getattr(MeasureConfig(), key)
        if current not in (default, wanted):
            raise ConfigError(where, f"budget.{key}", wanted,
                              f"the same value as measure.{key} ({current}), or one of the two")
        changes[key] = wanted
    if changes.get("device") == "cuda":
        changes["runtime"] = "torch"  # onnxruntime here is the CPU build
    return replace(measure, **changes)


def _with_runtime(where: str, data: Mapping) -> object:
    """``runtime:`` may stand at the top of a study file; it belongs to ``measure``."""
    measure = data.get("measure")
    if "runtime" not in data:
        return measure
    if not isinstance(measure, Mapping | None):
        return measure  # reported by check.section
    if measure and "runtime" in measure:
        raise ConfigError(where, "runtime", data["runtime"], "runtime in one place only")
    return {**(measure or {}), "runtime": data["runtime"]}


def _lm_runtime(where: str, data: Mapping, measure: MeasureConfig) -> MeasureConfig:
    """A causal LM runs in torch (float or int8 kernels); the other tasks export to ONNX."""
    task = data.get("task")
    lm = task == "causal_lm" or (isinstance(task, Mapping) and task.get("kind") == "causal_lm")
    given = (isinstance(data.get("measure"), Mapping) and "runtime" in data["measure"]) \
        or "runtime" in data
    if lm and not given:
        return replace(measure, runtime="torch")
    if lm and measure.runtime == "onnxruntime":
        raise ConfigError(where, "runtime", measure.runtime,
                          "torch or torch-int8 for a causal_lm task (generation runs in torch)")
    if not lm and measure.runtime == "torch-int8":
        raise ConfigError(where, "runtime", measure.runtime,
                          "onnxruntime or torch (torch-int8 is the causal_lm task's)")
    return measure


def study_from_dict(
    data: object,
    *,
    where: str = "<dict>",
    default_name: str = "study",
    origins: Mapping[str, str] | None = None,
) -> StudyConfig:
    """Check a parsed study mapping and build its :class:`StudyConfig`.

    ``origins`` maps fields (``trials``, ``ray.max_concurrent``) that came from elsewhere than
    ``where`` to their source, e.g. ``"command line"``: an error about one names that source.
    """
    origins = dict(origins or {})
    try:
        config = _build(data, where=where, default_name=default_name)
    except ConfigError as exc:
        field_name = exc.field or ""
        origin = origins.get(field_name) or origins.get(field_name.split(".")[0])
        if origin is None or origin == exc.where:
            raise
        raise ConfigError(origin, exc.field, exc.got, exc.expected) from None
    return replace(config, origins=origins)


def _build(data: object, *, where: str, default_name: str) -> StudyConfig:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(where, None, type(data).__name__, "a YAML mapping of study fields")
    fields = StudyConfig.__dataclass_fields__
    allowed = [k for k in fields if k not in ("source", "origins")] + ["runtime"]
    for key in data:
        if key not in allowed:
            raise unknown_key_error(where, str(key), allowed)
    name = data.get("name", default_name)
    if not isinstance(name, str) or len(name) > MAX_NAME or \
            not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ConfigError(where, "name", name, "letters, digits, '_', '-' or '.' (a folder name, "
                                               f"at most {MAX_NAME} characters)")
    sampler = data.get("sampler", "nsga2")
    if sampler not in SAMPLERS:
        hint = did_you_mean(str(sampler), SAMPLERS)
        raise ConfigError(where, "sampler", sampler, f"one of {', '.join(SAMPLERS)}{hint}")
    space = data.get("space", StudyConfig.space)
    if not isinstance(space, str):
        raise ConfigError(where, "space", space, "the path of a search space YAML file")
    pruner = data.get("pruner", "none")
    if pruner not in PRUNERS:
        hint = did_you_mean(str(pruner), PRUNERS)
        raise ConfigError(where, "pruner", pruner, f"one of {', '.join(PRUNERS)}{hint}")
    budget = check.budget(where, data.get("budget"))
    backend = data.get("backend", "optuna")
    if backend not in BACKENDS:
        raise ConfigError(where, "backend", backend, "optuna or ray")
    ray_config = check.section(where, "ray", data.get("ray"), RayConfig)
    measure = _lm_runtime(where, data, check.section(where, "measure", _with_runtime(where, data),
                                                     MeasureConfig))
    measure = _measure_under_budget(where, measure, budget)
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(where, "seed", seed, f"an integer >= 0 and <= {MAX_SEED} (2**32 - 1)")
    timeout = data.get("trial_timeout")
    if timeout is not None:
        try:
            timeout = parse_seconds(timeout)
        except ValueError:
            timeout = -1.0
        if not 0 < timeout <= MAX_TRIAL_TIMEOUT:  # parse_seconds never returns inf or NaN
            raise ConfigError(where, "trial_timeout", data.get("trial_timeout"),
                              "a positive duration such as 90s, 10min or 1h, at most 30 days")
    storage = data.get("storage")
    if storage is not None and (not isinstance(storage, str) or "://" not in storage):
        raise ConfigError(where, "storage", storage,
                          "a SQLAlchemy URL such as sqlite:///studies/x.db or "
                          "postgresql://user@host:5432/db")
    keep_models = data.get("keep_models", "front")
    if keep_models not in KEEP_MODELS:
        raise ConfigError(where, "keep_models", keep_models,
                          "front (the front's weights and the last few trials'), all or none")
    task = _task(where, data.get("task"))
    if task.kind == "causal_lm" and "space" not in data:
        space = LM_SPACE
    objectives = check.objectives(where, data.get("objectives", dict(
        LM_OBJECTIVES if task.kind == "causal_lm" else DEFAULT_OBJECTIVES)))
    lm_only = [name for name in objectives if name in check.LM_ONLY]
    if lm_only and task.kind != "causal_lm":
        raise ConfigError(where, f"objectives.{lm_only[0]}", objectives[lm_only[0]],
                          "accuracy, latency_ms, memory_bytes or peak_memory_bytes (perplexity "
                          "and tokens_per_s are measured for task: causal_lm)")
    return StudyConfig(
        name=name,
        task=task,
        space=space,
        objectives=objectives,
        budget=budget,
        pruner=pruner,
        backend=backend,
        ray=ray_config,
        measure=measure,
        finetune=check.finetune(where, data.get("finetune")),
        trials=check.integer(where, "trials", data.get("trials", 20), 1, cap=check.TRIALS_CAP),
        sampler=sampler,
        seed=seed,
        trial_timeout=timeout,
        storage=storage,
        jobs=check.integer(where, "jobs", data.get("jobs", 1), 1, 64),
        predictor=check.predictor_switch(where, data.get("predictor", False)),
        predictor_warmup=check.integer(where, "predictor_warmup",
                                       data.get("predictor_warmup", 30), 5,
                                       cap=check.TRIALS_CAP),
        predictor_max_skip=check.share(where, "predictor_max_skip",
                                       data.get("predictor_max_skip", 0.3)),
        keep_models=keep_models,
        source=where,
    )


def load_study(path: str | Path) -> StudyConfig:
    """Read and check a study YAML file (``yaml.safe_load``; nothing in it is executed)."""
    data = read_yaml(path, what="study YAML file")
    return study_from_dict(data, where=str(path), default_name=Path(path).stem)


def resolve_space(space: str, *, study_source: str = "<dict>") -> Path:
    """Find a space file: as given, beside the study file, or among the shipped spaces.

    A bare name such as ``default`` means ``search_spaces/default.yaml`` of this project.
    """
    given = Path(space)
    candidates = [given]
    if study_source != "<dict>":
        candidates.append(Path(study_source).parent / given)
    candidates += [PROJECT_ROOT / given, PROJECT_ROOT / "search_spaces" / f"{space}.yaml"]
    for candidate in candidates:
        if is_file(candidate):  # a name too long is not found, not an OSError
            return candidate
    raise ConfigError(study_source, "space", space, "an existing search space file")
