"""The benchmark runner works end to end: its quick version's smallest case, in a real process."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from autocompress.config import PROJECT_ROOT


def test_quick_constraint_first_benchmark_prints_its_table_and_headline(tmp_path):
    env = {**os.environ, "AUTOCOMPRESS_BENCH_TEACHERS": str(tmp_path / "teachers")}
    done = subprocess.run([sys.executable, "-m", "benchmarks", "constraint_first", "--quick"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "stopped plan, re-run 2x each" in out and "share of the study's trial time" in out
    summary = out.split("== summary ==")[1].strip().splitlines()
    assert len(summary) == 1 and "constraint-first savings" in summary[0]
    ratio = float(re.search(r"same plans\): ([0-9.]+)", summary[0]).group(1))
    assert 0 < ratio < 1  # a stop costs a fraction of the full trial of the same plan


def test_unknown_benchmark_is_refused_with_the_names():
    done = subprocess.run([sys.executable, "-m", "benchmarks", "nope"], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "controller" in done.stderr
