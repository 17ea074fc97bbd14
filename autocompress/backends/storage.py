"""Where a study lives: opening its Optuna storage, and the bookkeeping that makes resuming safe.

The default is an Optuna journal file in the study folder (``studies/<name>/study.journal``): an
append-only log of the study's changes, several times cheaper per trial than SQLite (each
``suggest`` is one appended line, not a transaction and a re-read), readable by optuna-dashboard
and ``autocompress report``. Worker processes (``--jobs``) append to it under Optuna's file lock.
Like SQLite's ``synchronous=NORMAL`` here, a line reaches the disk when the system writes it back,
not at once: a killed process loses nothing, a power cut at most the last lines.

A journal has no heartbeats. It needs none: a search holds a lock on its folder for as long as it
runs (:func:`autocompress.files.study_lock`; the kernel releases it when the process dies, kill -9
included), so a search that starts on a folder is the only one, and every trial the journal shows
running was left by a search that is gone: it is failed at once, and retried. A SQLAlchemy URL
(``storage:``; PostgreSQL lets workers on several machines share a study) keeps Optuna's
heartbeats: every trial sends one, and one that stops (its process was killed) is failed by the
stale-trial check. Folders written before the journal hold ``study.db`` (SQLite) and go on using
it.

A trial left failed without a recorded reason (killed, interrupted by Ctrl-C, or left running by
a dead driver) is *abandoned*: the next run enqueues its choices again, marked ``retry_of``, and
runs them with the same seed. A study's ``trials`` counts finished trials (complete, stopped, or
failed for a recorded reason), so the same command run again completes the study instead of
starting more.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import time
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState

from autocompress.backends.record import (
    ORIGIN_ATTR,
    RETRY_ATTR,
    abandoned,
    choices_of,
    retried,
)
from autocompress.errors import ConfigError

HEARTBEAT_S = 1      # a running trial writes its heartbeat this often
GRACE_S = 5          # and is taken for dead when it has not for this long
SQLITE_TIMEOUT_S = 60


OWN_DATABASE = "study.db"  # the folder's own SQLite file (folders written before the journal)
OWN_JOURNAL = "study.journal"  # the folder's own journal file (the default)
JOURNAL_SCHEME = "journal:///"


def default_url(out_dir: Path) -> str:
    """The folder's own storage: its journal file, or the SQLite file an older search left."""
    out_dir = Path(out_dir)
    if (out_dir / OWN_DATABASE).is_file() and not (out_dir / OWN_JOURNAL).exists():
        return _sqlite_url(out_dir)
    return _journal_url(out_dir)


def _journal_url(out_dir: Path) -> str:
    return f"{JOURNAL_SCHEME}{(Path(out_dir) / OWN_JOURNAL).resolve()}"


def _sqlite_url(out_dir: Path) -> str:
    return f"sqlite:///{(Path(out_dir) / OWN_DATABASE).resolve()}"


def is_journal(url: str) -> bool:
    return url.startswith(JOURNAL_SCHEME)


def display(url: str) -> str:
    """The URL without its password, for messages."""
    with contextlib.suppress(Exception):
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    return url


def open_storage(url: str, *, where: str = "command line", field: str = "storage",
                 heartbeat: bool = True) -> optuna.storages.BaseStorage:
    """The folder's journal (``journal:///path``), or RDBStorage with heartbeats (and WAL for
    SQLite); one ConfigError line saying why not.

    ``heartbeat=False`` for ask-and-tell clients (Ray's searcher), which send none.
    """
    if is_journal(url):
        path = Path(url[len(JOURNAL_SCHEME) - 1:])
        if not path.parent.is_dir():
            raise ConfigError(where, field, url, "a journal file whose folder exists")
        return optuna.storages.JournalStorage(_JournalFile(str(path)))
    engine_kwargs = {}
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
        path = url.split("///", 1)[-1]
        if path and path != ":memory:" and not Path(path).parent.is_dir():
            raise ConfigError(where, field, url, "a SQLAlchemy URL whose folder exists")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                url, engine_kwargs=engine_kwargs,
                heartbeat_interval=HEARTBEAT_S if heartbeat else None,
                grace_period=GRACE_S if heartbeat else None)
        if url.startswith("sqlite"):
            _sqlite_pragmas(storage.engine)
    except Exception as exc:  # any driver, any failure: one line naming the URL
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(where, field, display(url),
                          f"a SQLAlchemy URL Optuna can open (sqlite:///path/study.db, "
                          f"postgresql://user@host:5432/db); opening it failed: "
                          f"{reason[:200]}") from None
    return storage


class _JournalFile(optuna.storages.journal.JournalFileBackend):
    """Optuna's journal file, appended without an ``fsync`` per line: that sync was most of a
    trial's bookkeeping (29 lines a trial, 0.5 ms each here); the lock, the append and the
    flush to the system are Optuna's own."""

    def append_logs(self, logs: list[dict]) -> None:
        from optuna.storages.journal._file import get_lock_file

        text = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs)
        with get_lock_file(self._lock), open(self._file_path, "ab") as handle:
            handle.write(text.encode("utf-8"))
            handle.flush()


def _sqlite_pragmas(engine) -> None:
    """WAL (readers never block the writer) on the file; on every connection synchronous=NORMAL,
    which in WAL mode syncs at checkpoints instead of at every commit: a crash of the process
    loses nothing, a power cut at most the last commits, and the file is never corrupt."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _on_connect(connection, _record) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    engine.dispose()  # connections opened before the listener get it when reopened
    with engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA journal_mode=WAL")


def fail_dead_trials(study: optuna.Study, *, without_heartbeat: bool = False) -> list[int]:
    """Fail the running trials whose process is gone; returns their numbers.

    Trials with a heartbeat are failed once it is older than the grace period (this waits for
    it when a heartbeat is recent, so a run restarted right after a kill still finds them).
    ``without_heartbeat`` also fails running trials that never had one: those of a Ray driver,
    which is one per study, so at its start none of them is alive.
    """
    storage = study._storage
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return []
    numbers = []
    if without_heartbeat or not _has_heartbeats(storage):
        beating = _with_heartbeat(storage, study) if _has_heartbeats(storage) else set()
        for trial in running:
            if trial._trial_id not in beating:
                with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                    storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
                    numbers.append(trial.number)
    if len(numbers) < len(running):
        time.sleep(GRACE_S + 1)  # a heartbeat younger than the grace period may just have stopped
        before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        after = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
        numbers += sorted(after - before)
        # killed between Optuna's ask and the trial's first heartbeat: no heartbeat row at all,
        # while a live worker writes one at once; older than the grace period, it is dead
        beating = _with_heartbeat(storage, study)
        now = datetime.datetime.now()
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            started = trial.datetime_start
            if trial._trial_id not in beating and started is not None \
                    and (now - started).total_seconds() > GRACE_S:
                with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                    storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
                    numbers.append(trial.number)
    return numbers


def _has_heartbeats(storage: optuna.storages.BaseStorage) -> bool:
    return isinstance(getattr(storage, "_backend", storage), optuna.storages.RDBStorage)


def _with_heartbeat(storage: optuna.storages.BaseStorage, study: optuna.Study) -> set[int]:
    from optuna.storages._rdb import models

    rdb = getattr(storage, "_backend", storage)  # Optuna wraps RDBStorage in a cache
    with contextlib.closing(rdb.scoped_session()) as session:
        rows = (session.query(models.TrialHeartbeatModel.trial_id)
                .join(models.TrialModel)
                .filter(models.TrialModel.study_id == study._study_id).all())
    return {row[0] for row in rows}


def requeue_abandoned(study: optuna.Study) -> list[int]:
    """Enqueue the choices of every abandoned trial not yet retried; returns their numbers."""
    done = retried(study)
    queued = []
    for trial in abandoned(study):
        if trial.number in done or not choices_of(trial):
            continue
        first = trial.user_attrs.get(ORIGIN_ATTR, trial.user_attrs.get(RETRY_ATTR, trial.number))
        study.enqueue_trial(choices_of(trial),
                            user_attrs={RETRY_ATTR: trial.number, ORIGIN_ATTR: first})
        queued.append(trial.number)
    return queued


def recorded_url(url: str, out_dir: Path) -> str:
    """What ``study.json`` records: ``study.journal`` (or ``study.db``) for the folder's own
    file (so a copied or moved folder reads itself, never the original place), else the URL
    without its password."""
    if url == _journal_url(out_dir):
        return OWN_JOURNAL
    return OWN_DATABASE if url == _sqlite_url(out_dir) else display(url)


def check_journal(path: Path) -> None:
    """A study.journal to read must be lines of Optuna's journal: one line otherwise."""
    where = str(path)
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError(where, None, f"unreadable ({exc.strerror})",
                          "the study.journal a search wrote") from None
    if not text.strip():
        raise ConfigError(where, None, "an empty file", "the study.journal a search wrote")
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            entry = None
        if not isinstance(entry, dict) or "op_code" not in entry:
            if number == len(lines) and not text.endswith(b"\n"):
                continue  # a last line cut short by a kill: Optuna reads the rest
            raise ConfigError(where, None, f"not an Optuna journal (line {number})",
                              "the study.journal a search wrote")


def check_database(path: Path) -> None:
    """A study.db to read must be an Optuna SQLite database: one line otherwise, and the file is
    left as it is (opening an empty or foreign file would write Optuna's tables into it)."""
    where = str(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError as exc:
        raise ConfigError(where, None, f"unreadable ({exc.strerror})",
                          "the study.db a search wrote") from None
    if not head:
        raise ConfigError(where, None, "an empty file (0 bytes)", "the study.db a search wrote")
    if head != b"SQLite format 3\x00":
        raise ConfigError(where, None, "not a SQLite database", "the study.db a search wrote")
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro",
                                                uri=True)) as db:
            tables = {row[0] for row in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as exc:
        raise ConfigError(where, None, f"a damaged SQLite database ({exc})",
                          "the study.db a search wrote") from None
    if not {"studies", "trials"} <= tables:
        raise ConfigError(where, None, "a SQLite database without Optuna's tables",
                          "the study.db a search wrote")


def load_recorded_study(folder: Path, record: dict) -> optuna.Study:
    """The study an output folder's ``study.json`` names: in its own ``study.db`` (also for
    folders written before paths were recorded relative, whose SQLite URL ends in
    ``/study.db``) unless the search used another storage URL (recorded without its
    password)."""
    url = record.get("storage") or OWN_DATABASE
    if not isinstance(url, str):
        raise ConfigError(str(Path(folder) / "study.json"), "storage", url, "a storage URL")
    if url == OWN_JOURNAL:
        own = Path(folder) / OWN_JOURNAL
        if not own.is_file():
            raise ConfigError(str(folder), None, "no study.journal",
                              "the output folder of a search (studies/<name>/)")
        check_journal(own)
        url = _journal_url(folder)
    elif url == OWN_DATABASE or (url.startswith("sqlite:") and url.endswith("/study.db")):
        own = Path(folder) / OWN_DATABASE
        if not own.is_file():
            raise ConfigError(str(folder), None, "no study.db",
                              "the output folder of a search (studies/<name>/)")
        check_database(own)
        url = _sqlite_url(folder)
    if "***" in url:
        raise ConfigError(str(folder), "storage", url,
                          "a storage URL without a password, or one that reads it from the "
                          "server's own settings (e.g. ~/.pgpass)")
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=record["name"], storage=open_storage(url))
    finally:
        optuna.logging.set_verbosity(verbosity)
