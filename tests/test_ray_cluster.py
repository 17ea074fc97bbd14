"""Ray clusters started by the tests with the ``ray`` CLI: two nodes, and a submitted job.

Kept apart from ``test_ray.py``: ``ray stop --force`` ends every Ray process on the machine,
and a pytest process that still held a local Ray of its own would be ended with it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
from helpers import folder_storage

pytest.importorskip("ray")

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def two_node_cluster(tmp_path):
    """A head and a second node on this machine, each with one CPU; stopped afterwards."""
    port = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    ray = str(BIN / "ray")
    subprocess.run([ray, "start", "--head", f"--port={port}", "--num-cpus=1",
                    "--include-dashboard=false", "--disable-usage-stats"],
                   check=True, capture_output=True, env=env, timeout=120)
    try:
        subprocess.run([ray, "start", f"--address=127.0.0.1:{port}", "--num-cpus=1",
                        "--resources={\"second\": 1}", "--disable-usage-stats"],
                       check=True, capture_output=True, env=env, timeout=120)
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, env=env, timeout=120)


def test_trials_run_on_both_nodes_of_a_two_node_cluster(two_node_cluster, tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text(
        "name: cluster\ntask: {dataset: digits, teacher: lenet300, teacher_epochs: 3}\n"
        "measure: {warmup: 1, repeats: 3}\nfinetune: {epochs: 2}\ntrials: 4\nsampler: random\n"
        "ray: {max_concurrent: 2, scheduler: fifo}\n")
    # as a user following docs/ray.md: no RAY_AUTH_MODE in the shell (autocompress sets it
    # before Ray is imported when it is given an address)
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    done = subprocess.run(
        [sys.executable, "-m", "autocompress.cli", "search", str(study), "--out",
         str(tmp_path / "out"), "--address", two_node_cluster, "--quiet"],
        capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    stored = optuna.load_study(study_name="cluster",
                               storage=folder_storage(tmp_path / 'out'))
    nodes = {t.user_attrs["node"]["node_id"] for t in stored.trials if "node" in t.user_attrs}
    assert len(nodes) == 2


@pytest.mark.skipif(shutil.which("ray", path=str(BIN)) is None, reason="ray CLI not installed")
def test_a_study_submitted_as_a_ray_job(tmp_path):
    port, dash = _free_port(), _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    ray = str(BIN / "ray")
    subprocess.run([ray, "start", "--head", f"--port={port}", "--num-cpus=2",
                    "--include-dashboard=true", f"--dashboard-port={dash}",
                    "--disable-usage-stats"], check=True, capture_output=True, env=env,
                   timeout=180)
    try:
        work = tmp_path / "job"
        work.mkdir()
        (work / "study.yaml").write_text(
            "name: job\ntask: {dataset: digits, teacher: lenet300, teacher_epochs: 3}\n"
            "measure: {warmup: 1, repeats: 3}\nfinetune: {epochs: 1}\ntrials: 2\n"
            "sampler: random\nray: {max_concurrent: 1, scheduler: fifo}\n")
        studies = tmp_path / "studies"  # where a job's outputs go (docs/ray.md), not --out
        runtime = json.dumps({"env_vars": {"AUTOCOMPRESS_STUDIES": str(studies)}})
        done = subprocess.run(
            [ray, "job", "submit", f"--address=http://127.0.0.1:{dash}",
             f"--working-dir={work}", f"--runtime-env-json={runtime}", "--", sys.executable,
             "-m", "autocompress.cli", "search", "study.yaml", "--address", "auto", "--quiet"],
            capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
        assert "succeeded" in (done.stdout + done.stderr).lower()
        assert f"outputs go to {studies / 'job'}" in done.stdout + done.stderr
        assert len(pd.read_csv(studies / "job" / "trials.csv")) == 2
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, env=env, timeout=120)
