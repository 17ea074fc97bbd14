"""Ray Tune backend: the same trial objective, the same sampler, on a local Ray or a cluster.

A thin adapter. A Ray Tune :class:`~ray.tune.search.Searcher` asks the study's own Optuna
sampler for each Plan (ask-and-tell on the study's storage), so every finished trial lands where
the Optuna backend puts it, written by the same :mod:`~autocompress.backends.record`, and
``trials.csv`` / ``pareto.csv`` come from the same code. Each trial runs
:func:`autocompress.trial.run_trial` in a Ray worker; the teacher, its outputs and the data go to
the object store once (``tune.with_parameters``). The worker reports validation accuracy after
every fine-tune epoch, which the ASHA scheduler uses to stop weak trials; the final report
carries the whole result.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from autocompress.backends import record
from autocompress.backends.job import SearchJob, TrialSettings
from autocompress.backends.optuna_backend import (
    check_failures,
    judge_plan,
    make_sampler,
    optuna_quiet,
)
from autocompress.backends.record import NODE_ATTR, PREDICTION_ATTR, STATE_OF
from autocompress.backends.storage import open_storage
from autocompress.errors import ConfigError, TooManyFailures
from autocompress.plan import Plan
from autocompress.predictors import PlanPredictor
from autocompress.result import FAILED, PRUNED, Stop, StopReason, TrialResult
from autocompress.space import SearchSpace

WORKER_FAILED = "the trial's worker failed (see Ray logs)"


def _ray():
    try:
        import ray
        from ray import tune
    except ImportError as exc:
        raise ImportError("the ray backend needs: pip install 'autocompress[ray]'") from exc
    return ray, tune


@dataclass(frozen=True)
class WorkerSettings:
    """What each Ray worker gets besides the task: the trial settings and how it runs."""

    trial: TrialSettings
    cpus_per_trial: int = 1
    report_epochs: bool = False  # per-epoch reports for the ASHA scheduler
    predictor_host: Any = None   # a PredictorHost actor handle, or None
    pid_dir: str | None = None   # each attempt leaves its process id there (lets a test kill one)


def _trainable(config: dict, *, task, outputs, settings: WorkerSettings) -> None:
    """One trial inside a Ray worker: run it, report each epoch, then everything."""
    import ray
    from ray import tune

    plan = Plan.from_json(config["plan"])
    node = {"node_id": ray.get_runtime_context().get_node_id(),
            "host": socket.gethostname(), "ip": ray.util.get_node_ip_address(),
            "pid": os.getpid()}
    if settings.pid_dir:
        (Path(settings.pid_dir) / str(os.getpid())).touch()

    def on_epoch(epoch: int, accuracy: float) -> None:
        tune.report({"accuracy": accuracy, "epoch": epoch, "final": False,
                     "node": json.dumps(node)})

    host, prediction = settings.predictor_host, {}

    def judge(measured: Mapping[str, float]) -> str:
        verdict = ray.get(host.judge.remote(plan.to_json(), dict(measured)))
        prediction.update(verdict or {})
        return prediction.get("skip_reason", "")

    result = settings.trial.run(plan, task, outputs, threads=settings.cpus_per_trial,
                                on_epoch=on_epoch if settings.report_epochs else None,
                                judge=judge if host is not None else None)
    message = record.to_message(result)
    if prediction:
        message["prediction"] = prediction
    tune.report({"final": True, "epoch": settings.trial.finetune.epochs + 1,
                 "result": json.dumps(message), "node": json.dumps(node),
                 **dict(result.metrics)})


class PredictorHost:
    """The study's learned predictor, in one Ray actor on the driver's node, where the study's
    storage is: every worker asks it before training, so one skip share holds for the study."""

    def __init__(self, predictor: PlanPredictor, study_name: str, storage: str,
                 objectives: Mapping[str, str]) -> None:
        self.predictor, self.objectives = predictor, dict(objectives)
        self.study = optuna.load_study(study_name=study_name,
                                       storage=open_storage(storage, heartbeat=False))

    def judge(self, plan_json: str, measured: dict[str, float]) -> dict[str, Any] | None:
        verdict = judge_plan(self.predictor, self.study, Plan.from_json(plan_json), self.objectives,
                         measured)
        if verdict is None:
            return None
        return {**verdict.to_dict(), "skip_reason": verdict.reason if verdict.skip else ""}


def _start_predictor_host(predictor: PlanPredictor, study_name: str, storage: str,
                          objectives: Mapping[str, str]):
    ray, _ = _ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    return ray.remote(PredictorHost).options(
        num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False),
    ).remote(predictor, study_name, storage, objectives)


def _searcher_class():
    from ray.tune.search import Searcher

    class StudySearcher(Searcher):
        """Ask-and-tell on the study's Optuna storage: each suggestion is a sampled Plan, each
        completed trial is recorded (:mod:`record`) and told to Optuna with its state."""

        def __init__(self, study: optuna.Study, space: SearchSpace, *, seed: int,
                     objectives: Sequence[str], constraint_names: Sequence[str],
                     stand_in: Mapping[str, float],
                     on_result: Callable[[TrialResult], None] | None) -> None:
            super().__init__()
            self.study, self.space, self.seed = study, space, seed
            self.objectives, self.constraint_names = list(objectives), list(constraint_names)
            self.stand_in, self.on_result = dict(stand_in), on_result
            self.trials: dict[str, optuna.Trial] = {}
            self.plans: dict[str, str] = {}  # trial id -> its Plan, as JSON
            self.curves: dict[str, list[float]] = {}
            self.stop_reason = ""  # set when too many of the first trials failed
            self.since = len(study.trials)  # the number of this run's first trial

        def set_search_properties(self, metric, mode, config, **spec) -> bool:
            return True  # the objectives come from the study, not from Tune

        def suggest(self, trial_id: str) -> dict[str, Any] | None:
            """A new Optuna trial's Plan; the same one again when Tune asks again for the same
            trial (as when it restarts a trial whose worker died), never a second trial."""
            if self.stop_reason:
                return Searcher.FINISHED
            if trial_id not in self.plans:
                trial = self.study.ask()
                self.trials[trial_id] = trial
                self.plans[trial_id] = record.sample_plan(trial, self.space,
                                                          seed=self.seed).to_json()
            return {"plan": self.plans[trial_id]}

        def save(self, checkpoint_path: str) -> None:
            """Nothing to save: a search resumes from the study's storage, not from Tune."""

        def restore(self, checkpoint_path: str) -> None:
            """See :meth:`save`."""

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            if not result.get("final") and "accuracy" in result:
                self.curves.setdefault(trial_id, []).append(float(result["accuracy"]))

        def on_trial_complete(self, trial_id: str, result: dict | None = None,
                              error: bool = False) -> None:
            trial = self.trials.pop(trial_id, None)
            if trial is None:
                return
            curve = self.curves.pop(trial_id, [])
            plan = Plan.from_dict(trial.user_attrs.get(record.PLAN_ATTR, {}))
            constraint_names = self.constraint_names
            if result and result.get("final"):
                message = json.loads(result["result"])
                finished = record.from_message(message)
                if message.get("prediction"):
                    trial.set_user_attr(PREDICTION_ATTR, {
                        k: v for k, v in message["prediction"].items() if k != "skip_reason"})
            elif result and not error:  # stopped by the scheduler between epochs
                epoch = int(result.get("epoch", len(curve)))
                metrics = {"accuracy": float(result["accuracy"])} if "accuracy" in result else {}
                curve = curve or list(metrics.values())
                finished = TrialResult(plan, PRUNED, metrics,
                                       stop=StopReason(Stop.EARLY, epoch=epoch))
                constraint_names = []  # not measured: the samplers learn nothing of the budget
            else:
                finished = TrialResult(plan, FAILED, reason=WORKER_FAILED)
            if result and result.get("node"):
                trial.set_user_attr(NODE_ATTR, json.loads(result["node"]))
            record.write(trial, finished, constraint_names=constraint_names, curve=curve)
            self.study.tell(trial, record.objective_values(finished, self.objectives,
                                                           self.stand_in),
                            state=STATE_OF[finished.state])
            try:
                check_failures(self.study, since=self.since)
            except TooManyFailures as exc:
                self.stop_reason = str(exc)
            finished.number = trial.number
            if self.on_result is not None:
                self.on_result(finished)

    return StudySearcher


def init_ray(address: str = "", *, num_cpus: int | None = None) -> None:
    """Join ``address`` (a running cluster) or start a local Ray; quiet, no dashboard."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic reporter is silent at verbose 0
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves the machine
    if address:
        # Ray 2.60 heads started with `ray start --head` use token authentication; Ray reads
        # the mode when it is imported, so it is set before the import
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    ray, _ = _ray()
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        # address="local": always a new local Ray, never a cluster someone left running here
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(),
                 include_dashboard=False, log_to_driver=False)


class RayBackend:
    """Trials as Ray Tune trials on a local Ray or the cluster at ``config.ray.address``.

    ``pid_dir`` (tests): a folder where each trial's worker leaves its process id."""

    def __init__(self, *, pid_dir: str | None = None) -> None:
        self.pid_dir = pid_dir

    def connect(self, address: str, *, where: str, field: str) -> None:
        """Join the cluster at ``address`` now, before any training: a cluster this machine
        cannot join is one line at once, not an error after the teacher has trained."""
        if not address:
            return
        try:
            init_ray(address)
        except Exception as exc:
            detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
            raise ConfigError(where, field, address, f"a Ray cluster this machine can join "
                              f"({type(exc).__name__}: {detail})") from None

    def run(self, job: SearchJob, n_trials: int, *, progress: Callable[[str], None]) -> None:
        ray_config = job.config.ray
        progress(f"running on Ray: {ray_config.max_concurrent} trials at a time, "
                 f"{ray_config.cpus_per_trial} CPU(s) each, scheduler {ray_config.scheduler}")
        optimize(job, n_trials, pid_dir=self.pid_dir)


def optimize(job: SearchJob, n_trials: int, *, pid_dir: str | None = None) -> None:
    """Run ``n_trials`` more trials of ``job`` on Ray Tune; they land in its storage as
    Optuna's do. With a predictor, each worker asks it (through :class:`PredictorHost`)
    whether to train a Plan once its structure is measured, as the Optuna backend does."""
    _, tune = _ray()
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter

    config, ray_config = job.config, job.config.ray
    init_ray(ray_config.address)
    # Intermediate reports carry only accuracy; the objectives arrive with the final report.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    storage = open_storage(job.storage_url, heartbeat=False)
    done = len(optuna.load_study(study_name=config.name, storage=storage).trials)
    with optuna_quiet():
        study = optuna.load_study(
            study_name=config.name, storage=storage,
            sampler=make_sampler(config.sampler, seed=config.seed + done, n_trials=n_trials))
    count = [config.trials - n_trials]

    def on_result(result: TrialResult) -> None:
        count[0] += 1
        job.finished(result, count[0])

    searcher = _searcher_class()(
        study, job.space, seed=config.seed, objectives=list(config.objectives),
        constraint_names=config.budget.constraint_names(), stand_in=job.settings.stand_in,
        on_result=on_result)
    epochs = config.finetune.epochs
    scheduler = (ASHAScheduler(time_attr="epoch", metric="accuracy", mode="max",
                               max_t=epochs + 1, grace_period=1, reduction_factor=3)
                 if ray_config.scheduler == "asha" else FIFOScheduler())
    predictor = job.predictor()
    host = (_start_predictor_host(predictor, config.name, job.storage_url, config.objectives)
            if predictor is not None else None)
    settings = WorkerSettings(job.settings, cpus_per_trial=ray_config.cpus_per_trial,
                              report_epochs=ray_config.scheduler == "asha",
                              predictor_host=host, pid_dir=pid_dir)
    trainable = tune.with_resources(
        tune.with_parameters(_trainable, task=job.task, outputs=job.teacher_outputs(),
                             settings=settings),
        {"cpu": ray_config.cpus_per_trial, "gpu": ray_config.gpus_per_trial},
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=ray_config.max_concurrent),
            scheduler=scheduler, num_samples=n_trials, reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=f"{config.name}-{done}", storage_path=str((job.out / "ray_results").resolve()),
            verbose=0, failure_config=tune.FailureConfig(max_failures=ray_config.max_failures),
        ),
    )
    try:
        with optuna_quiet():
            tuner.fit()
    finally:
        if host is not None:
            _ray()[0].kill(host)
    if searcher.stop_reason:
        raise TooManyFailures(searcher.stop_reason)
