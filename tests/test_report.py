"""report.html, pareto.json and the report command: schemas, escaping, a real browser."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
import tempfile

import pandas as pd
import pytest

import autocompress
from autocompress.budget import Budget
from autocompress.config import study_from_dict
from autocompress.pareto import pareto_front
from autocompress.plan import Plan
from autocompress.report.html import render
from autocompress.result import Stop, StopReason, TrialCounts, TrialResult


@pytest.fixture(scope="module")
def study_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    config = study_from_dict({
        "name": "reported", "task": {"dataset": "digits", "teacher": "lenet300",
                                     "teacher_epochs": 4},
        "measure": {"warmup": 1, "repeats": 3}, "finetune": {"epochs": 1},
        "budget": {"max_memory_bytes": "60kB", "max_accuracy_drop": 5},
        "trials": 6, "sampler": "random", "seed": 4})
    autocompress.run_study(config, out_dir=out)
    return out


@pytest.fixture(scope="module")
def sqlite_folder(tmp_path_factory):
    """A folder whose study lives in its own study.db, as every folder did before the journal
    became the default (and as ``storage: sqlite:///<folder>/study.db`` still makes)."""
    out = tmp_path_factory.mktemp("report-sqlite")
    config = study_from_dict({
        "name": "reported", "task": {"dataset": "digits", "teacher": "lenet300",
                                     "teacher_epochs": 2},
        "measure": {"warmup": 1, "repeats": 3}, "finetune": {"epochs": 1},
        "trials": 2, "sampler": "random", "seed": 4,
        "storage": f"sqlite:///{out / 'study.db'}"})
    autocompress.run_study(config, out_dir=out)
    assert json.loads((out / "study.json").read_text())["storage"] == "study.db"
    assert not (out / "study.journal").exists()
    return out


def test_a_search_leaves_every_report_file(study_folder):
    for name in ("report.html", "pareto.json", "pareto.png", "trials.csv", "pareto.csv"):
        assert (study_folder / name).stat().st_size > 0, name
    assert (study_folder / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pareto_json_schema_matches_the_csv(study_folder):
    data = json.loads((study_folder / "pareto.json").read_text())
    assert {"study", "objectives", "budget", "teacher", "hypervolume", "reference",
            "members"} <= set(data)
    front = pd.read_csv(study_folder / "pareto.csv")
    assert [m["trial"] for m in data["members"]] == list(front["trial"])
    for member in data["members"]:
        assert {"trial", "choices", "seed", "metrics", "latency_noise_ms",
                "measurement"} <= set(member)
        assert {"accuracy", "latency_ms", "memory_bytes"} <= set(member["metrics"])
        assert member["metrics"]["memory_bytes"] <= 60_000


def test_report_command_rebuilds_from_the_folder(study_folder):
    (study_folder / "report.html").unlink()
    done = subprocess.run([sys.executable, "-m", "autocompress.cli", "report",
                           str(study_folder)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (study_folder / "report.html").is_file()
    empty = study_folder / "empty"
    empty.mkdir()
    refused = subprocess.run([sys.executable, "-m", "autocompress.cli", "report", str(empty)],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "no study.json" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_user_strings_are_escaped():
    evil = "<script>alert('x')</script>"
    ok = TrialResult(Plan({"student.width": 0.5, "note": evil}), number=0,
                     metrics={"accuracy": 0.9, "latency_ms": 1.0, "memory_bytes": 1000.0,
                              "latency_noise_ms": 0.0})
    bad = TrialResult(Plan({}), state="failed", reason=evil, number=1)
    objectives = {"accuracy": "max", "latency_ms": "min", "memory_bytes": "min"}
    teacher = {"accuracy": 0.95, "latency_ms": 2.0, "memory_bytes": 4000.0}
    front = pareto_front([ok, bad], objectives, teacher)
    page = render(name=evil, results=[ok, bad], front=front, teacher=teacher, budget=Budget(),
                  history=[0.1], settings={"sampler": evil})
    assert evil not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert page.count("<script>") == 1  # our own sorting script only


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed here (make test "
                    "installs it with apt-get where it can)")
def test_report_renders_in_headless_chromium_without_console_errors(study_folder):
    profile = tempfile.mkdtemp()
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=3000", "--dump-dom", (study_folder / "report.html").as_uri()],
        capture_output=True, text=True, timeout=120)
    dom = done.stdout
    assert '<table class="sortable" id="front">' in dom or "No trial met the budget" in dom
    assert dom.count("<svg") >= 4  # three pairs of objectives and the hypervolume history
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line]
    assert not [line for line in console if "error" in line.lower() or "Uncaught" in line]


def test_the_page_says_why_trials_were_infeasible():
    objectives = {"accuracy": "max", "memory_bytes": "min"}
    over = TrialResult(Plan({}), number=0, metrics={"accuracy": 0.9, "memory_bytes": 5e4},
                       constraints={"memory_bytes": 2e4}, stop=StopReason(Stop.STRUCTURE))
    page = render(name="s", results=[over], front=pareto_front([over], objectives, {}),
                  teacher={}, budget=Budget(max_memory_bytes=30_000), history=[],
                  settings={})
    assert "memory_bytes over its limit: 1 trial(s)" in page
    assert "No trial met the budget" in page


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autocompress.cli", *args],
                          capture_output=True, text=True, timeout=180)


def _damaged(study_folder, tmp_path, name, content):
    copy = tmp_path / "copy"
    shutil.copytree(study_folder, copy)
    path = copy / name
    if content is None:
        path.unlink()
    else:
        path.write_bytes(content)
    return copy, path


@pytest.mark.parametrize(("name", "content", "said"), [
    ("study.json", b"{not json", "a damaged file"),
    ("study.json", b"[1, 2]", "a JSON object"),
    ("study.json", b'{"name": "x", "objectives": "accuracy"}', "objectives"),
    ("teacher.json", None, "no teacher.json"),
    ("teacher.json", b"\xff\xfe\x00", "a damaged file"),
    ("study.journal", None, "no study.journal"),
    ("study.journal", b"", "an empty file"),
    ("study.journal", b"hello, this is not a journal\n", "not an Optuna journal (line 1)"),
    ("study.db", b"", "an empty file (0 bytes)"),
    ("study.db", b"hello, this is not a database at all", "not a SQLite database"),
])
def test_report_on_a_damaged_folder_is_one_line_and_modifies_nothing(study_folder, sqlite_folder,
                                                                      tmp_path, name, content,
                                                                      said):
    folder = sqlite_folder if name == "study.db" else study_folder
    copy, _ = _damaged(folder, tmp_path, name, content)
    before = {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()}
    done = _cli("report", str(copy))
    assert done.returncode == 2, done.stderr[-1500:]
    assert said in done.stderr and name in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()} == before


def test_a_folder_with_its_own_sqlite_database_still_reports(sqlite_folder, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(sqlite_folder, copy)
    (copy / "report.html").unlink()
    done = _cli("report", str(copy))
    assert done.returncode == 0, done.stderr[-1500:]
    assert (copy / "report.html").is_file() and not (copy / "study.journal").exists()


def test_a_foreign_sqlite_database_is_refused_untouched(sqlite_folder, tmp_path):
    import sqlite3

    copy, path = _damaged(sqlite_folder, tmp_path, "study.db", None)
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE notes (text TEXT)")
    before = path.read_bytes()
    done = _cli("report", str(copy))
    assert done.returncode == 2 and "without Optuna's tables" in done.stderr, done.stderr
    assert path.read_bytes() == before


def test_a_moved_study_folder_reads_itself_only(study_folder, tmp_path):
    record = json.loads((study_folder / "study.json").read_text())
    assert record["storage"] == "study.journal"  # relative: the folder's own journal
    moved = tmp_path / "elsewhere" / "moved"
    shutil.copytree(study_folder, moved)
    (moved / "report.html").unlink()
    original = study_folder / "study.journal"
    hidden = study_folder / "study.journal.away"
    original.rename(hidden)  # the original place has no database while the copy is read
    try:
        done = _cli("report", str(moved))
        assert done.returncode == 0, done.stderr[-1500:]
        assert (moved / "report.html").is_file() and not original.exists()
        trial = sorted((moved / "models").glob("trial_*.acpk"))[0].stem.removeprefix("trial_")
        exported = _cli("export", str(moved), "--trial", trial, "--format", "torchscript",
                        "--out", str(tmp_path / "exported"))
        assert exported.returncode == 0, exported.stderr[-1500:]
        assert (tmp_path / "exported" / "model.pt").is_file() and not original.exists()
    finally:
        hidden.rename(original)


def test_export_of_a_truncated_model_file_is_one_line(study_folder, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(study_folder, copy)
    kept = sorted((copy / "models").glob("trial_*.acpk"))
    assert kept
    kept[0].write_bytes(kept[0].read_bytes()[:40])
    trial = kept[0].stem.removeprefix("trial_")
    done = _cli("export", str(copy), "--trial", trial, "--format", "torchscript",
                "--out", str(tmp_path / "exported"))
    assert done.returncode == 2, done.stderr[-1500:]
    assert "a damaged file" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "exported").exists()


def _trial(number: int, ratio: float, bits: int, accuracy: float, memory: float,
           **extra) -> TrialResult:
    plan = Plan({"student.width": 1.0, "prune.ratio": ratio, "quantize.bits": bits,
                 "distill.method": "kd"}, seed=number)
    metrics = {"accuracy": accuracy, "latency_ms": 0.5 + ratio, "memory_bytes": memory,
               "latency_noise_ms": 0.0, "test_accuracy": accuracy - 0.01}
    return TrialResult(plan, number=number, metrics=metrics, **extra)


def _chosen_page() -> tuple[str, list[TrialResult]]:
    """A small classification study: two choices searched, two fixed, one trial over budget,
    one failed and one interrupted."""
    results = [_trial(0, 0.2, 8, 0.93, 20_000.0), _trial(1, 0.5, 4, 0.90, 9_000.0),
               _trial(2, 0.8, 2, 0.60, 5_000.0, constraints={"accuracy": 0.28}),
               TrialResult(Plan({"prune.ratio": 0.3}), state="failed", number=3,
                           reason="RuntimeError: out of memory"),
               TrialResult(Plan({"prune.ratio": 0.4}), state="failed", number=4,
                           reason="interrupted: the search stopped")]
    objectives = {"accuracy": "max", "latency_ms": "min", "memory_bytes": "min"}
    teacher = {"accuracy": 0.95, "test_accuracy": 0.94, "latency_ms": 2.0,
               "memory_bytes": 200_000.0}
    budget = Budget(max_accuracy_drop=5)
    front = pareto_front(results, objectives, teacher, budget)
    page = render(name="chosen", results=results, front=front, teacher=teacher, budget=budget,
                  history=[0.1, 0.2, 0.2, 0.2, 0.2], settings={"sampler": "tpe", "seed": 3})
    return page, results


def _table(page: str, table_id: str) -> str:
    start = page.index(f'id="{table_id}"')
    return page[start:page.index("</table>", start)]


def _columns(table: str) -> list[str]:
    """The data-col names of the last header row (the one each cell lines up with)."""
    last_row = table[:table.index("</thead>")].rsplit("<tr>", 1)[-1]
    return re.findall(r'data-col="([^"]+)"', last_row)


def test_the_front_shows_objectives_then_searched_choices_and_folds_the_fixed_ones():
    page, _ = _chosen_page()
    front = _table(page, "front")
    assert _columns(front) == ["trial", "accuracy", "latency_ms", "memory_bytes",
                               "test_accuracy", "smaller", "faster", "prune.ratio",
                               "quantize.bits"]
    assert "distill.method" not in front and "student.width" not in front
    fixed = page[page.index("<details>"):page.index("</details>")]
    assert "distill.method = kd" in fixed and "student.width = 1" in fixed
    assert ">test accuracy<" in front and "92.00%" in front  # test accuracy in % as well
    assert "95.00%" in front and "93.00%" in front  # the teacher's row, then trial 0
    assert _columns(_table(page, "trials"))[-1] == "outcome"


def test_the_counts_line_is_the_clis_and_the_summary_is_in_a_persons_units():
    page, results = _chosen_page()
    counts = re.search(r'<p class="counts" id="counts">(.*?)</p>', page).group(1)
    assert counts == html.escape(TrialCounts.of(results).summary())
    assert "1 interrupted by a stopped search" in counts and "1 failed" in counts
    summary = page[page.index('<div class="cards">'):page.index("<h2>Pareto front:")]
    assert "95.00%" in summary and "200 kB" in summary and "2 ms" in summary
    assert "<dt>sampler</dt><dd>tpe</dd>" in summary and "{" not in summary  # no JSON dump
    assert "accuracy drop &lt;= 5 points (&gt;= 90.00%)" in summary
    trials = _table(page, "trials")
    assert re.search(r'<tr class="off">.*?infeasible: accuracy 28.00 points under', trials)


def _hover_labels(page: str) -> list[tuple[str, str]]:
    """(trial number of a plotted point, the label the browser shows on hover)."""
    return re.findall(r'<g id="pt\d+_(\d+)">\s*<title>([^<]*)</title>', page)


def test_every_plotted_point_has_a_hover_label_naming_its_trial():
    page, _ = _chosen_page()
    points = re.findall(r'<g id="pt\d+_(\d+)">', page)
    labels = _hover_labels(page)
    assert len(points) == 3 * 3 and len(labels) == len(points)  # 3 trained trials, 3 plots
    for number, label in labels:
        assert label.startswith(f"trial {number} ("), label
        assert "accuracy" in label and "stored size" in label
    assert any("infeasible" in label for _, label in labels)


def test_a_real_studys_points_are_all_labelled(study_folder):
    page = (study_folder / "report.html").read_text()
    points = re.findall(r'<g id="pt\d+_(\d+)">', page)
    assert points and len(_hover_labels(page)) == len(points)
    assert all(label.startswith(f"trial {n} (") for n, label in _hover_labels(page))
    assert _columns(_table(page, "front"))[:5] == ["trial", "accuracy", "latency_ms",
                                                   "memory_bytes", "test_accuracy"] \
        or "No trial met the budget" in page


def test_a_language_model_study_shows_perplexity_and_decode_speed():
    objectives = {"perplexity": "min", "tokens_per_s": "max", "memory_bytes": "min"}
    results = [TrialResult(Plan({"lm_prune.ratio": r, "lm_quantize.bits": 4}), number=n,
                           metrics={"perplexity": 20 + 10 * r, "test_perplexity": 21 + 10 * r,
                                    "tokens_per_s": 100 + 50 * r, "memory_bytes": 5e6 * (1 - r)})
               for n, r in enumerate((0.1, 0.3, 0.5))]
    teacher = {"perplexity": 18.0, "test_perplexity": 19.0, "tokens_per_s": 90.0,
               "memory_bytes": 6e6}
    budget = Budget(max_perplexity_increase=0.5)
    front = pareto_front(results, objectives, teacher, budget)
    page = render(name="lm", results=results, front=front, teacher=teacher, budget=budget,
                  history=[0.1, 0.2, 0.3], settings={"sampler": "tpe"})
    assert _columns(_table(page, "front")) == ["trial", "perplexity", "tokens_per_s",
                                               "memory_bytes", "test_perplexity", "smaller",
                                               "faster", "lm_prune.ratio"]
    assert "lowest perplexity" in page and "tokens/s" in page and "5 MB" in page
    assert len(_hover_labels(page)) == 3 * 3
