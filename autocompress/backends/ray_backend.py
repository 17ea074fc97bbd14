"""Ray Tune backend: the same trial objective, the same sampler, on a local Ray or a cluster.

A thin adapter. Ray Tune's ``OptunaSearch`` drives the study's own Optuna sampler (same seed,
same objectives) over the study's own Optuna storage, so every finished trial lands where the
Optuna backend puts it, with the same user attributes and constraints, and ``trials.csv`` /
``pareto.csv`` are written by the same code. Each trial runs :func:`autocompress.trial.run_trial`
in a Ray worker; the teacher, its outputs and the data go to the object store once
(``tune.with_parameters``). The worker reports validation accuracy after every fine-tune epoch,
which the ASHA scheduler uses to stop weak trials; the final report carries every metric.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna

from autocompress.backends.optuna_backend import (
    CONSTRAINTS_ATTR,
    CURVE_ATTR,
    DURATION_ATTR,
    MEASUREMENT_ATTR,
    METRICS_ATTR,
    PLAN_ATTR,
    PREDICTION_ATTR,
    REASON_ATTR,
    STOPPED_ATTR,
    _judge,
    _optuna_quiet,
    check_failures,
    make_sampler,
)
from autocompress.backends.storage import RETRY_ATTR, open_storage
from autocompress.errors import TooManyFailures
from autocompress.plan import Plan
from autocompress.predictors import PlanPredictor
from autocompress.space import SearchSpace
from autocompress.trial import FAILED, PRUNED, TrialResult, run_trial

NODE_ATTR = "node"


def _ray():
    try:
        import ray
        from ray import tune
    except ImportError as exc:
        raise ImportError("the ray backend needs: pip install 'autocompress[ray]'") from exc
    return ray, tune


def _trainable(config: dict, *, task, outputs, settings: dict) -> None:
    """One trial inside a Ray worker: run it, report each epoch, then everything."""
    import ray
    from ray import tune

    plan = Plan.from_json(config["plan"])
    measure = dataclasses.replace(settings["measure"], threads=settings["cpus_per_trial"])
    node = {"node_id": ray.get_runtime_context().get_node_id(),
            "host": socket.gethostname(), "ip": ray.util.get_node_ip_address(),
            "pid": os.getpid()}
    if settings.get("pid_dir"):  # each attempt leaves its process id (lets a test kill one)
        (Path(settings["pid_dir"]) / str(os.getpid())).touch()

    def on_epoch(epoch: int, accuracy: float) -> None:
        tune.report({"accuracy": accuracy, "epoch": epoch, "final": False,
                     "node": json.dumps(node)})

    host, prediction = settings.get("predictor_host"), {}

    def judge(measured: Mapping[str, float]) -> str:
        verdict = ray.get(host.judge.remote(plan.to_json(), dict(measured)))
        prediction.update(verdict or {})
        return prediction.get("skip_reason", "")

    result = run_trial(plan, task, teacher_outputs=outputs, finetune=settings["finetune"],
                       measure=measure, budget=settings["budget"],
                       teacher_metrics=settings["teacher_metrics"],
                       need_peak=settings["need_peak"], timeout_s=settings.get("timeout_s"),
                       on_epoch=on_epoch if settings["scheduler"] == "asha" else None,
                       judge=judge if host is not None else None)
    record = _result_to_dict(result)
    if prediction:
        record["prediction"] = prediction
    tune.report({"final": True, "epoch": settings["finetune"].epochs + 1,
                 "result": json.dumps(record), "node": json.dumps(node),
                 **{k: v for k, v in result.metrics.items()}})


class PredictorHost:
    """The study's learned predictor, in one Ray actor on the driver's node, where the study's
    storage is: every worker asks it before training, so one skip share holds for the study."""

    def __init__(self, predictor: PlanPredictor, study_name: str, storage: str,
                 objectives: Mapping[str, str]) -> None:
        self.predictor, self.objectives = predictor, dict(objectives)
        self.study = optuna.load_study(study_name=study_name,
                                       storage=open_storage(storage, heartbeat=False))

    def judge(self, plan_json: str, measured: dict[str, float]) -> dict[str, Any] | None:
        verdict = _judge(self.predictor, self.study, Plan.from_json(plan_json), self.objectives,
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


def _result_to_dict(result: TrialResult) -> dict[str, Any]:
    return {"plan": result.plan.to_dict(), "state": result.state, "metrics": result.metrics,
            "measurement": result.measurement, "reason": result.reason,
            "duration_s": result.duration_s, "constraints": result.constraints,
            "stopped_at": result.stopped_at,
            "packed": base64.b64encode(result.packed).decode() if result.packed else None}


class _DefineByRun:
    """OptunaSearch's define-by-run space: samples a Plan (picklable, for Tune's checkpoints)."""

    def __init__(self, space: SearchSpace, seed: int) -> None:
        self.space, self.seed = space, seed

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        plan = Plan(self.space.sample(trial),
                    seed=self.seed + trial.user_attrs.get(RETRY_ATTR, trial.number))
        trial.set_user_attr(PLAN_ATTR, plan.to_dict())
        return {"plan": plan.to_json()}


def _searcher_class():
    from ray.tune.search import Searcher
    from ray.tune.search.optuna import OptunaSearch

    class RecordingOptunaSearch(OptunaSearch):
        """OptunaSearch that records what the Optuna backend records, constraints included,
        and tells Optuna the right state for failed, stopped and infeasible trials."""

        def __init__(self, *args, objectives, constraint_names, stand_in, on_result, **kw):
            super().__init__(*args, **kw)
            self._objectives = list(objectives)
            self._constraint_names = list(constraint_names)
            self._stand_in = dict(stand_in)
            self._on_result = on_result
            self._curves: dict[str, list[float]] = {}
            self.stop_reason = ""  # set when too many of the first trials failed
            self.since = 0  # the number of this run's first trial

        def suggest(self, trial_id: str):
            if self.stop_reason:
                return Searcher.FINISHED
            return super().suggest(trial_id)

        def save(self, checkpoint_path: str) -> None:
            callback, self._on_result = self._on_result, None  # a closure: not picklable
            try:
                super().save(checkpoint_path)
            finally:
                self._on_result = callback

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            if not result.get("final") and "accuracy" in result:
                self._curves.setdefault(trial_id, []).append(float(result["accuracy"]))

        def on_trial_complete(self, trial_id: str, result: dict | None = None,
                              error: bool = False) -> None:
            if trial_id in self._completed_trials or trial_id not in self._ot_trials:
                return
            ot_trial = self._ot_trials[trial_id]
            curve = self._curves.pop(trial_id, [])
            ot_trial.set_user_attr(CURVE_ATTR, curve)
            plan = Plan.from_dict(ot_trial.user_attrs.get(PLAN_ATTR, {}))
            state = optuna.trial.TrialState.FAIL
            values = None
            if result and result.get("final"):
                record = json.loads(result["result"])
                record_result = _record(ot_trial, record, result.get("node"))
                for name in self._constraint_names:
                    ot_trial.set_constraint(name, record["constraints"].get(name, 0.0))
                if record["state"] == FAILED:
                    state = optuna.trial.TrialState.FAIL
                elif record["state"] == PRUNED:
                    state = optuna.trial.TrialState.PRUNED
                else:
                    state = optuna.trial.TrialState.COMPLETE
                    values = [record["metrics"].get(n, self._stand_in.get(n, 0.0))
                              for n in self._objectives]
            elif result and not error:  # stopped by the scheduler between epochs
                epoch = int(result.get("epoch", len(curve)))
                metrics = {"accuracy": float(result["accuracy"])} if "accuracy" in result else {}
                if not curve and metrics:
                    ot_trial.set_user_attr(CURVE_ATTR, [metrics["accuracy"]])
                if result.get("node"):
                    ot_trial.set_user_attr(NODE_ATTR, json.loads(result["node"]))
                ot_trial.set_user_attr(STOPPED_ATTR, f"epoch {epoch}")
                ot_trial.set_user_attr(METRICS_ATTR, metrics)
                state = optuna.trial.TrialState.PRUNED
                record_result = TrialResult(plan, PRUNED, metrics, stopped_at=f"epoch {epoch}")
            else:
                ot_trial.set_user_attr(REASON_ATTR, "the trial's worker failed (see Ray logs)")
                record_result = TrialResult(plan, FAILED,
                                            reason="the trial's worker failed (see Ray logs)")
            self._ot_study.tell(ot_trial, values, state=state)
            self._completed_trials.add(trial_id)
            try:
                check_failures(self._ot_study, since=self.since)
            except TooManyFailures as exc:
                self.stop_reason = str(exc)
            record_result.number = ot_trial.number
            if self._on_result is not None:
                self._on_result(record_result)

    return RecordingOptunaSearch


def _record(ot_trial: optuna.Trial, record: dict, node: str | None) -> TrialResult:
    """Write one worker's result into the Optuna trial, as the Optuna backend does."""
    ot_trial.set_user_attr(DURATION_ATTR, record["duration_s"])
    ot_trial.set_user_attr(STOPPED_ATTR, record["stopped_at"])
    if record.get("prediction"):
        ot_trial.set_user_attr(PREDICTION_ATTR, {k: v for k, v in record["prediction"].items()
                                                 if k != "skip_reason"})
    if node:
        ot_trial.set_user_attr(NODE_ATTR, json.loads(node))
    if record["state"] == FAILED:
        ot_trial.set_user_attr(REASON_ATTR, record["reason"])
    else:
        ot_trial.set_user_attr(METRICS_ATTR, record["metrics"])
        ot_trial.set_user_attr(MEASUREMENT_ATTR, record["measurement"])
        ot_trial.set_user_attr(CONSTRAINTS_ATTR, record["constraints"])
        for name, value in record["metrics"].items():
            ot_trial.set_user_attr(name, value)
    packed = record.get("packed")
    return TrialResult(Plan.from_dict(record["plan"]), record["state"], record["metrics"],
                       record["measurement"], reason=record["reason"],
                       duration_s=record["duration_s"], constraints=record["constraints"],
                       stopped_at=record["stopped_at"],
                       packed=base64.b64decode(packed) if packed else None)


def init_ray(address: str = "", *, num_cpus: int | None = None) -> None:
    """Join ``address`` (a running cluster) or start a local Ray; quiet, no dashboard."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic reporter is silent at verbose 0
    ray, _ = _ray()
    if ray.is_initialized():
        return
    if address:
        # Ray 2.60 heads started with `ray start --head` use token authentication.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        ray.init(address=address, log_to_driver=False)
    else:
        # address="local": always a new local Ray, never a cluster someone left running here
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(),
                 include_dashboard=False, log_to_driver=False)


def optimize(
    *,
    study_name: str,
    storage: str,
    space: SearchSpace,
    objectives: Mapping[str, str],
    n_trials: int,
    seed: int,
    sampler_name: str,
    settings: dict[str, Any],
    task: Any,
    outputs: Any,
    ray_config: Any,
    results_dir: Path,
    constraint_names: Sequence[str] = (),
    stand_in: Mapping[str, float] | None = None,
    on_result: Callable[[TrialResult], None] | None = None,
    predictor: PlanPredictor | None = None,
) -> None:
    """Run ``n_trials`` more trials on Ray Tune; they land in ``storage`` like Optuna's.

    With a ``predictor``, each worker asks it (through :class:`PredictorHost`) whether to train
    a Plan once its structure is measured, as the Optuna backend does."""
    _, tune = _ray()
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter

    init_ray(ray_config.address)
    # Intermediate reports carry only accuracy; the objectives arrive with the final report.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    done = len(optuna.load_study(study_name=study_name, storage=storage).trials)

    searcher = _searcher_class()(
        space=_DefineByRun(space, seed), metric=list(objectives), mode=list(objectives.values()),
        sampler=make_sampler(sampler_name, seed=seed + done, n_trials=n_trials),
        study_name=study_name, storage=open_storage(storage, heartbeat=False),
        objectives=objectives, constraint_names=constraint_names, stand_in=stand_in or {},
        on_result=on_result,
    )
    searcher.since = done
    epochs = settings["finetune"].epochs
    scheduler = (ASHAScheduler(time_attr="epoch", metric="accuracy", mode="max",
                               max_t=epochs + 1, grace_period=1, reduction_factor=3)
                 if ray_config.scheduler == "asha" else FIFOScheduler())
    host = (_start_predictor_host(predictor, study_name, storage, objectives)
            if predictor is not None else None)
    settings = {**settings, "cpus_per_trial": ray_config.cpus_per_trial,
                "scheduler": ray_config.scheduler, "predictor_host": host}
    trainable = tune.with_resources(
        tune.with_parameters(_trainable, task=task, outputs=outputs, settings=settings),
        {"cpu": ray_config.cpus_per_trial, "gpu": ray_config.gpus_per_trial},
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=ray_config.max_concurrent),
            scheduler=scheduler, num_samples=n_trials, reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=f"{study_name}-{done}", storage_path=str(results_dir.resolve()), verbose=0,
            failure_config=tune.FailureConfig(max_failures=ray_config.max_failures),
        ),
    )
    try:
        with _optuna_quiet():  # OptunaSearch creates (loads) the study when the run starts
            tuner.fit()
    finally:
        if host is not None:
            _ray()[0].kill(host)
    if searcher.stop_reason:
        raise TooManyFailures(searcher.stop_reason)
