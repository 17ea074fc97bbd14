"""Every benchmark still runs against the current API: each one's smoke form (seconds, on the
8x8 digits), in this process, checked for its table and its headline figures; and the runner
end to end, in a real process."""

from __future__ import annotations

import importlib
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch

import autocompress
from autocompress.config import PROJECT_ROOT
from benchmarks import common
from benchmarks.__main__ import BENCHMARKS


@dataclass(frozen=True)
class Expect:
    """What a benchmark's smoke run must print and return: its table's column names, the rows
    (by their first cell) that must hold a number, and the figures its headline carries."""

    columns: tuple[str, ...]
    rows: tuple[str, ...]
    figures: frozenset[str]


EXPECTED = {
    "llm": Expect(
        ("technique alone", "val ppl", "test ppl"),
        ("magnitude 50%", "Wanda 50%", "SparseGPT 50%", "RTN 3-bit g128", "GPTQ 3-bit g128",
         "joint", "pruning only", "quantization only", "depth only"),
        frozenset({"smaller_within_10pct", "faster_within_20pct", "joint_hypervolume"})),
    "llm_targets": Expect(
        ("member (chosen on val)", "runtime", "val ppl", "test ppl", "smaller"),
        ("smallest within +10%", "fastest within +20%"),
        frozenset({"smaller_within_10pct", "faster_within_20pct"})),
    "controller": Expect(
        ("ms per trial", "of a quickstart trial"),
        ("trivial objective, 10 trials", "trivial objective, 20 trials",
         "trivial objective on SQLite, 10 trials", "Optuna alone on SQLite",
         "Optuna alone on memory", "quickstart trial (median of 2)"),
        frozenset({"ms_per_trial", "share_percent", "growth"})),
    "constraint_first": Expect(
        ("stop s", "full s", "ratio"), ("study: 3 trials", "over budget on"),
        frozenset({"median_ratio"})),
    "speedup": Expect(
        ("teacher ms", "member ms", "speed-up", "trials", "wall s"), ("batch 256 seed 0",),
        frozenset({"speedup_at_batch_256", "seeds_at_target"})),
    "deep_compression": Expect(
        ("teacher test acc", "teacher size", "member test acc (95% CI)", "compression", "paper",
         "trials"), ("lenet300 seed 0",), frozenset({"compression_lenet300"})),
    "deep_compression_fashion": Expect(
        ("teacher test acc", "member test acc (95% CI)", "compression", "trials"),
        ("lenet300 seed 0",), frozenset({"compression_lenet300"})),
    "techniques": Expect(
        ("space", "compression", "test acc", "test drop", "size", "choices", "wall s"),
        ("pruning only", "quantization only", "distillation only", "joint"),
        frozenset({"joint_compression", "best_single_compression", "seeds_joint_ahead"})),
    "search_efficiency": Expect(
        ("HV@2", "HV@3", "vs random @2", "vs random @3"),
        ("default, nsga2", "default, tpe", "default, random",
         "seed 0: random, full-cost trials", "seed 0: TPE + constraint-first + median pruner"),
        frozenset({"final_hv_full_cost_random", "final_hv_everything_on"})),
    "predictor": Expect(
        ("wall s", "final HV", "HV per minute", "skipped"),
        ("seed 0, predictor off", "seed 0, predictor on"),
        frozenset({"gain", "final_hv_ratio"})),
    "nni": Expect(
        ("variant", "compression", "feasible", "failed", "s/trial", "wall s"),
        ("ours (magnitude, qat, kd)", "nni.l1 pruner", "nni.qat quantizer",
         "nni.layerwise distiller"),
        frozenset({"best_nni_compression", "our_compression"})),
    "any_model": Expect(
        ("trial", "val acc", "test acc", "latency ms", "faster", "stored", "smaller", "front"),
        ("teacher:", "seed 0"), frozenset({"front_members"})),
    "vit": Expect(
        ("trial", "val acc", "test acc", "latency ms", "faster", "size", "smaller", "front"),
        ("teacher:", "seed 0"), frozenset({"front_members", "seeds_at_target"})),
    "front_vs_teacher": Expect(
        ("trial", "val acc", "test acc", "latency ms", "bytes", "smaller", "faster"),
        ("teacher",), frozenset({"compression", "speedup"})),
    "ray_speedup": Expect(
        ("wall s", "in trials s", "vs serial", "vs 1 thread", "hypervolume"),
        ("serial, 1 thread", "Optuna --jobs 2", "Ray, 1 trial at a time",
         "Ray, 2 trials at a time"),
        frozenset({"ray_2_vs_serial_1_thread", "ray_2_vs_serial", "ray_startup_s"})),
}
# optional dependency of a benchmark
NEEDS = {"nni": "nni", "ray_speedup": "ray", "llm": "transformers",
         "llm_targets": "transformers"}
NUMBER = re.compile(r"\d+\.\d+")


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """One teacher cache for the module: the smoke forms share the digits' teachers."""
    return tmp_path_factory.mktemp("teachers")


@pytest.fixture
def smoke(teachers, monkeypatch):
    """Teachers cached in a scratch folder; torch on 1 thread (the smoke forms check that the
    code runs, not timings, and 2 threads on a busy 2-core machine are several times slower).
    Yields the outcome of every study the benchmark runs through ``autocompress.run_study``."""
    monkeypatch.setattr(common, "TEACHERS", teachers)
    outcomes: list[autocompress.StudyOutcome] = []
    run_study = autocompress.run_study

    def recording(*args, **kwargs):
        outcomes.append(run_study(*args, **kwargs))
        return outcomes[-1]

    monkeypatch.setattr(autocompress, "run_study", recording)
    monkeypatch.setattr(autocompress.api, "run_study", recording)  # search() runs through it
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield outcomes
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_smoke_form_prints_its_table_and_returns_finite_figures(name, smoke, capsys):
    expect = EXPECTED.get(name)
    assert expect is not None, f"benchmark {name!r}: say in EXPECTED what its smoke form prints"
    if name in NEEDS:
        pytest.importorskip(NEEDS[name])

    headline = importlib.import_module(BENCHMARKS[name]).main("smoke")

    lines = capsys.readouterr().out.strip().splitlines()
    assert isinstance(headline, common.Headline) and headline.met in (True, False, None)
    assert lines[-1] == headline.text  # the headline is the last line printed
    assert any(all(column in line for column in expect.columns) for line in lines), (
        f"no table header with {expect.columns} in:\n" + "\n".join(lines))
    for row in expect.rows:
        assert any(line.startswith(row) and NUMBER.search(line) for line in lines), (
            f"no row {row!r} with a number in:\n" + "\n".join(lines))
    assert expect.figures <= set(headline.figures), headline.figures
    assert all(math.isfinite(v) for v in headline.figures.values())
    # real studies ran, and no trial failed: a smoke run whose trials all fail still prints
    # its table, with the wrong figures (a broken API shows up here as failed trials)
    results = [r for outcome in smoke for r in outcome.results]
    assert results, "the smoke form ran no study"
    failed = {f"{r.state} #{r.number}: {r.reason}" for r in results if r.state == "failed"}
    assert not failed, failed


def test_runner_runs_a_smoke_form_and_summarises_it(teachers):
    """``python -m benchmarks NAME --smoke``, end to end in a real process."""
    env = {**os.environ, "AUTOCOMPRESS_BENCH_TEACHERS": str(teachers), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "benchmarks", "constraint_first", "--smoke"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "== constraint_first (smoke) ==" in out and "stopped plan, re-run 1x each" in out
    summary = out.split("== summary ==")[1].strip().splitlines()
    assert len(summary) == 1 and "constraint-first savings" in summary[0]
    ratio = float(re.search(r"same plans\): ([0-9.]+)", summary[0]).group(1))
    assert 0 < ratio < 1  # a stop costs a fraction of the full trial of the same plan


@pytest.mark.parametrize("script", ["front_vs_teacher.py", "ray_speedup.py",
                                    "deep_compression.py", "search_efficiency.py"])
def test_scripts_with_options_of_their_own_still_start_as_scripts(script):
    done = subprocess.run([sys.executable, f"benchmarks/{script}", "--help"], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--smoke" in done.stdout, done.stderr[-2000:]


def test_accuracy_interval_is_the_bootstrap_of_the_per_image_outcomes():
    """The binomial shortcut against a plain bootstrap of a 0/1 vector; width goes as 1/sqrt(n)."""
    import numpy as np

    low, high = common.accuracy_interval(0.9, 750)
    right = np.r_[np.ones(675), np.zeros(75)]
    rng = np.random.default_rng(1)
    plain = [rng.choice(right, size=750).mean() for _ in range(4000)]
    assert abs(low - np.quantile(plain, 0.025)) < 0.004
    assert abs(high - np.quantile(plain, 0.975)) < 0.004
    assert low < 0.9 < high and 0.035 < high - low < 0.05  # 2 x 1.96 x sqrt(.09 / 750) = 0.043
    low10k, high10k = common.accuracy_interval(0.9, 10_000)
    assert 0.2 < (high10k - low10k) / (high - low) < 0.35  # sqrt(750 / 10000) = 0.27
    assert common.accuracy_interval(1.0, 50) == (1.0, 1.0)
    with pytest.raises(ValueError):
        common.accuracy_interval(float("nan"), 10)


def test_spread_is_the_median_and_the_range():
    assert common.spread([3.0, 1.0, 2.0, 10.0], "{:.1f}x") == "2.5x (1.0x-10.0x)"
    assert common.spread([4.0], "{:.1f}") == "4.0"


def test_unknown_benchmark_is_refused_with_the_names():
    done = subprocess.run([sys.executable, "-m", "benchmarks", "nope"], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "controller" in done.stderr
