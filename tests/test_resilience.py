"""Nothing lost: a search killed or interrupted resumes, workers share a study, trials that fail
are recorded with their reason. Real processes, real signals, real SQLite and PostgreSQL."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from helpers import folder_storage

import autocompress
from autocompress.backends.record import (
    REASON_ATTR,
    RETRY_ATTR,
    abandoned,
    count_finished,
    load_results,
)
from autocompress.config import study_from_dict
from autocompress.errors import ConfigError
from autocompress.pareto import pareto_front

STUDY = {
    "name": "resilient",
    "task": {"dataset": "digits", "teacher": "lenet300", "teacher_epochs": 8},
    "space": "default",
    "measure": {"batch_size": 1, "threads": 1, "warmup": 2, "repeats": 5},
    "finetune": {"epochs": 4},
    "trials": 14,
    "sampler": "random",
}
States = optuna.trial.TrialState


def write_study(folder: Path, **changes) -> Path:
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump({**STUDY, **changes}))
    return path


def search(study: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "autocompress.cli", "search", str(study), "--out", str(out),
         *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def load(out: Path, name: str = "resilient") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=folder_storage(out))


def wait_until_running(out: Path, *, finished: int, drawn: bool = False,
                       timeout: float = 300) -> None:
    """Until the study holds ``finished`` finished trials and one is running right now (with
    ``drawn``: one that has drawn choices; a trial just created has none for a moment, longer
    on a loaded machine)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (out / "study.journal").exists():
            try:
                trials = load(out).trials
            except (KeyError, Exception):  # not created yet, or locked this instant
                trials = []
            done = sum(t.state in (States.COMPLETE, States.PRUNED) for t in trials)
            running = [t for t in trials if t.state == States.RUNNING]
            if done >= finished and any(t.params or not drawn for t in running):
                return
        time.sleep(0.02)
    raise AssertionError("the search never reached the point to interrupt it")


def finished_snapshot(study: optuna.Study) -> dict[int, tuple]:
    return {t.number: (t.state.name, tuple(t.values or ()), tuple(sorted(t.params.items())))
            for t in study.trials if t.state in (States.COMPLETE, States.PRUNED)}


def test_sigkill_mid_study_then_the_same_command_resumes_it(tmp_path):
    study, out = write_study(tmp_path), tmp_path / "out"
    process = search(study, out)
    wait_until_running(out, finished=3, drawn=True)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    before = finished_snapshot(load(out))
    running = [t for t in load(out).trials if t.state == States.RUNNING]
    assert len(before) >= 3 and len(running) == 1
    killed = running[0]

    again = search(study, out)
    stdout, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stderr
    assert "resuming study 'resilient'" in stdout and f"trials [{killed.number}]" in stdout

    stored = load(out)
    after = finished_snapshot(stored)
    assert {n: after[n] for n in before} == before  # every finished trial kept as it was
    assert count_finished(stored) == STUDY["trials"]  # the count the study asks for, exactly
    dead = stored.trials[killed.number]
    assert dead.state == States.FAIL and REASON_ATTR not in dead.user_attrs
    retry = [t for t in stored.trials if t.user_attrs.get(RETRY_ATTR) == killed.number]
    reason = pd.read_csv(out / "trials.csv").set_index("trial").loc[killed.number, "reason"]
    assert reason.startswith("interrupted")
    if killed.params:  # the choices drawn before the kill come back (mid-sampling: only some)
        assert len(retry) == 1 and killed.params.items() <= retry[0].params.items()
        assert retry[0].state in (States.COMPLETE, States.PRUNED)
        assert f"trial {retry[0].number}" in reason
    else:  # the trial seen drawing finished and the next one was killed before it drew
        assert not retry and "killed before its choices were drawn" in reason
    # the front is the front of every finished trial, whichever run finished it
    config = study_from_dict(STUDY)
    teacher = {k: v for k, v in pd.read_json(out / "teacher.json", typ="series").items()
               if isinstance(v, int | float)}
    expected = pareto_front(load_results(stored), config.objectives, teacher, config.budget)
    written = pd.read_csv(out / "pareto.csv")
    assert sorted(written["trial"]) == sorted(r.number for r in expected.members)


def test_ctrl_c_stops_cleanly_and_says_what_was_saved(tmp_path):
    study, out = write_study(tmp_path, trials=40), tmp_path / "out"
    process = search(study, out)
    wait_until_running(out, finished=2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    stored = load(out)
    finished = count_finished(stored)
    assert f"interrupted: {finished} finished trials are saved" in stderr
    assert "the same command resumes" in stderr
    # a signal that lands while a trial computes fails it, to be retried; one that lands while
    # storage is written waits for the write, and then no trial is left running
    interrupted = [t.number for t in abandoned(stored)]
    assert ("will be retried" in stderr) == bool(interrupted), (stderr, interrupted)
    assert not [t for t in stored.trials if t.state == States.RUNNING]
    assert len(pd.read_csv(out / "trials.csv")) == len(load(out).trials)


def test_two_workers_share_one_study_and_the_count_is_exact(tmp_path):
    study, out = write_study(tmp_path, trials=10, finetune={"epochs": 1}), tmp_path / "out"
    process = search(study, out, "--jobs", "2")
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    stored = load(out)
    numbers = [t.number for t in stored.trials]
    assert sorted(numbers) == list(range(10))  # none lost, none run twice
    assert all(t.state == States.COMPLETE for t in stored.trials)
    assert "[worker 0]" in stdout and "[worker 1]" in stdout
    plans = {tuple(sorted(t.params.items())) for t in stored.trials}
    assert len(plans) == 10
    assert len(pd.read_csv(out / "trials.csv")) == 10
    assert {f"trial_{n}.acpk" for n in numbers} <= {p.name for p in (out / "models").iterdir()}


def test_a_study_in_postgresql(postgres_url, tmp_path):
    config = study_from_dict({**STUDY, "trials": 3, "finetune": {"epochs": 1},
                              "storage": postgres_url})
    outcome = autocompress.run_study(config, out_dir=tmp_path / "out")
    assert not (tmp_path / "out" / "study.journal").exists()
    stored = optuna.load_study(study_name="resilient", storage=postgres_url)
    assert count_finished(stored) == 3 and len(outcome.results) == 3
    # report and export find the study through the URL recorded in study.json
    autocompress.write_report(tmp_path / "out")
    assert len(pd.read_csv(tmp_path / "out" / "trials.csv")) == 3


_calls = [0]


def nan_after_the_teacher(model, split) -> float:
    """Accuracy for the teacher's two measurements (validation, test), then NaN."""
    _calls[0] += 1
    if _calls[0] <= 2:
        return 0.9
    return math.nan


def test_more_than_half_of_the_first_ten_failing_stops_the_search(digits, mlp_teacher,
                                                                   tmp_path):
    _calls[0] = 0
    with pytest.raises(autocompress.TooManyFailures, match="6 of the first 6 trials failed"):
        autocompress.search(mlp_teacher, train=(digits.train.x, digits.train.y),
                            val=(digits.val.x, digits.val.y), test=(digits.test.x, digits.test.y),
                            metric=nan_after_the_teacher, trials=20, finetune_epochs=1,
                            sampler="random", out_dir=tmp_path, progress=lambda _: None)
    trials = pd.read_csv(tmp_path / "trials.csv")  # written before stopping
    assert len(trials) == 6 and set(trials["state"]) == {"failed"}
    assert trials["reason"].str.contains("measured accuracy is nan").all()


def test_a_trial_over_its_time_limit_fails_with_the_reason(tmp_path):
    config = study_from_dict({**STUDY, "trials": 12, "trial_timeout": "0.05s",
                              "finetune": {"epochs": 50}})
    with pytest.raises(autocompress.TooManyFailures):
        autocompress.run_study(config, out_dir=tmp_path)
    trials = pd.read_csv(tmp_path / "trials.csv")
    assert (trials["state"] == "failed").all()
    assert trials["reason"].str.contains(r"over its time limit of 0.05 s \(trial_timeout\)").all()


def test_a_non_finite_loss_fails_the_trial_and_the_study_goes_on(digits, mlp_teacher, tmp_path):
    config = study_from_dict({**STUDY, "trials": 4, "finetune": {"epochs": 1, "lr": 1e30}})
    outcome = autocompress.run_study(config, out_dir=tmp_path, task=autocompress.Task(
        "digits", mlp_teacher, digits.train, digits.val))
    reasons = [r.reason for r in outcome.results if r.state == "failed"]
    assert len(outcome.results) == 4 and reasons
    assert all("non-finite loss" in r for r in reasons)


def test_the_failure_rule_counts_this_runs_first_ten_trials():
    from autocompress.backends.optuna_backend import check_failures

    study = optuna.create_study()
    for i in range(10):  # 5 failed of 10: bad luck, the search goes on
        trial = study.ask()
        if i % 2:
            study._storage.set_trial_user_attr(trial._trial_id, REASON_ATTR, "boom")
            study.tell(trial, state=States.FAIL)
        else:
            study.tell(trial, 1.0)
    check_failures(study)
    for _ in range(6):  # a later run whose first 6 all fail: stopped, judged on its own trials
        trial = study.ask()
        study._storage.set_trial_user_attr(trial._trial_id, REASON_ATTR, "boom")
        study.tell(trial, state=States.FAIL)
    check_failures(study)  # the study's first ten are unchanged
    with pytest.raises(autocompress.TooManyFailures, match="6 of the first 6"):
        check_failures(study, since=10)


def test_ctrl_c_while_storage_is_written_waits_for_the_write_and_stops_a_trial_at_once():
    """Optuna's tell interrupted midway escapes as UnboundLocalError (exit 1, a traceback):
    the gate lets Ctrl-C land only while a trial computes."""
    import os

    from autocompress.backends.interrupts import InterruptGate

    def ctrl_c() -> None:
        os.kill(os.getpid(), signal.SIGINT)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    gate = InterruptGate()
    try:
        with gate.installed():
            ctrl_c()  # storage being written: the write goes on
            reached = True
            with pytest.raises(KeyboardInterrupt):
                gate.check()  # the loop's next step stops
            gate.check()  # once
            with pytest.raises(KeyboardInterrupt), gate.opened():  # a trial computing
                ctrl_c()
                time.sleep(5)
                pytest.fail("a computing trial was not interrupted")
            with pytest.raises(KeyboardInterrupt), gate.opened():
                with gate.closed():  # the predictor's verdict written inside a trial
                    ctrl_c()
                    reached_inner = True
                pytest.fail("the waiting interrupt was not raised when the write ended")
            with gate.opened():
                pass  # a trial that computes without a Ctrl-C ends normally
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)
    assert reached and reached_inner


def test_a_worker_whose_parent_died_while_it_started_exits_at_once():
    """--jobs workers are spawned and import torch before they run: a parent killed in that
    window is no longer theirs, and they exit instead of racing the resumed search."""
    import multiprocessing
    import os

    from autocompress.backends.parallel import _die_with_parent

    context = multiprocessing.get_context("spawn")
    orphaned = context.Process(target=_die_with_parent, args=(os.getpid() + 1_000_000,))
    adopted = context.Process(target=_die_with_parent, args=(os.getpid(),))
    for process in (orphaned, adopted):
        process.start()
        process.join(timeout=60)
    assert (orphaned.exitcode, adopted.exitcode) == (1, 0)


def test_two_searches_started_together_on_one_fresh_folder_end_with_the_asked_trials(tmp_path):
    """One driver per study: the second search waits for the first (a flock the kernel drops
    with the process), then resumes the study, which already holds its trials."""
    study = tmp_path / "tiny.yaml"
    study.write_text("name: tiny\ntask: {dataset: digits, teacher: lenet300, teacher_epochs: 2}\n"
                     "measure: {warmup: 1, repeats: 3}\nfinetune: {epochs: 1}\ntrials: 3\n"
                     "sampler: random\n")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "autocompress.cli", "search", str(study), "--out", str(out)]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err[-1500:] for _, err in outputs]
    assert sum("waiting: another search is running" in out_ for out_, _ in outputs) == 1
    trials = optuna.load_study(study_name="tiny", storage=folder_storage(out)).trials
    assert len(trials) == 3 and all(t.state.name == "COMPLETE" for t in trials)


def test_a_folder_in_use_is_refused_in_one_line_where_waiting_is_not_wanted(tmp_path):
    from autocompress.files import study_lock

    folder = tmp_path / "busy"
    with study_lock(folder, where="test"), \
            pytest.raises(ConfigError, match="no other search is running in"), \
            study_lock(folder, where="test"):
        pass
    assert list(folder.iterdir()) == []
    with study_lock(folder, where="test"):  # released: the next search may take it
        pass


def test_a_retry_of_a_retry_keeps_the_first_trials_choices_and_seed():
    """Killed, retried, killed again: every retry replays trial 0's choices with trial 0's seed,
    and a trial killed before its choices were drawn says it is replaced, not retried."""
    from autocompress.backends.record import read, retried, sample_plan
    from autocompress.backends.storage import requeue_abandoned
    from autocompress.space import SearchSpace

    space = SearchSpace.from_dict({"prune": {"ratio": {"low": 0.0, "high": 0.9}},
                                   "quantize": {"bits": [4, 8, 32]}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=5))
    plans = []
    for _ in range(3):  # the first run and two retries, each killed while it ran
        trial = study.ask()
        plans.append(sample_plan(trial, space, seed=100))
        study.tell(trial, state=optuna.trial.TrialState.FAIL)  # no reason: abandoned
        requeue_abandoned(study)
    assert [p.seed for p in plans] == [100, 100, 100]
    assert plans[1].choices == plans[0].choices == plans[2].choices
    assert retried(study) == {0: 1, 1: 2, 2: 3}
    queued = study.ask()  # the third retry, killed before it drew: still trial 0's choices
    study.tell(queued, state=optuna.trial.TrialState.FAIL)
    assert requeue_abandoned(study) == [queued.number]
    again = study.ask()
    assert sample_plan(again, space, seed=100) == plans[0]
    study.tell(again, 1.0)
    empty = study.ask()  # a new trial killed between the ask and the sampler: nothing to replay
    study.tell(empty, state=optuna.trial.TrialState.FAIL)
    assert empty.number not in requeue_abandoned(study)
    assert "a new trial takes its place" in read(study.trials[empty.number],
                                                 retried(study)).reason


@pytest.mark.parametrize("moment", ["while workers start", "while trials run"])
def test_jobs_killed_with_sigkill_leave_no_worker_and_resume_to_the_exact_count(tmp_path,
                                                                                 moment):
    """--jobs 2, the driver killed with -9 while its spawned workers are still importing torch
    (before they could ask the kernel to kill them with their parent) or while they train: no
    worker outlives it, and the same command completes the study to the count it asks for."""
    import psutil

    study, out = write_study(tmp_path, trials=6), tmp_path / "out"
    process = search(study, out, "--jobs", "2")
    driver = psutil.Process(process.pid)
    deadline = time.monotonic() + 120
    workers: list[psutil.Process] = []
    while time.monotonic() < deadline and len(workers) < 2:  # spawned, not yet running a trial
        workers = [c for c in driver.children(recursive=True) if "spawn" in " ".join(c.cmdline())]
        time.sleep(0.01)
    assert len(workers) == 2, "the workers never started"
    if moment == "while trials run":
        wait_until_running(out, finished=1)
        workers = [c for c in driver.children(recursive=True)
                   if "spawn" in " ".join(c.cmdline())]
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    finished_at_kill = count_finished(load(out)) if (out / "study.journal").exists() else 0
    _, alive = psutil.wait_procs(workers, timeout=60)
    alive = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"workers outlived their killed driver: {[p.pid for p in alive]}"
    time.sleep(1)
    # an orphaned worker would have gone on and finished trials, racing the resumed run
    stored = out / "study.journal"
    assert (count_finished(load(out)) if stored.exists() else 0) == finished_at_kill

    again = search(study, out, "--jobs", "2")
    _, stderr = again.communicate(timeout=600)
    assert again.returncode == 0, stderr[-1500:]
    assert count_finished(load(out)) == 6
