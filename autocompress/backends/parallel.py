"""``--jobs N``: N worker processes on this machine, each an Optuna backend on the same storage.

Each worker gets an exact share of the trials still to run, its own sampler seed and
``cores // N`` torch threads, and writes every trial into the shared storage (SQLite in WAL mode,
or any SQLAlchemy URL; see :mod:`autocompress.backends.storage`). Workers start with ``spawn``
(a fresh interpreter: forking a process that has run torch's thread pools can hang), so the task
travels pickled: a user's metric or student factory must be a module-level function.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
from collections.abc import Callable
from typing import Any

from autocompress.errors import ConfigError, SearchStopped

WorkerBody = Callable[[int, int], None]


def shares(remaining: int, jobs: int) -> list[int]:
    """Split ``remaining`` trials over ``jobs`` workers as evenly as counts allow."""
    return [remaining // jobs + (i < remaining % jobs) for i in range(jobs)]


def _worker(body: WorkerBody, index: int, quota: int, threads: int, errors: Any,
            parent: int | None = None) -> None:
    _die_with_parent(parent)
    import torch

    torch.set_num_threads(threads)
    try:
        body(index, quota)
    except KeyboardInterrupt:
        pass  # the parent says what was saved
    except SearchStopped as exc:
        errors.put(str(exc))


def check_picklable(thing: object, *, where: str = "jobs") -> None:
    """Workers receive their task pickled: refuse, naming why, what cannot travel."""
    try:
        pickle.dumps(thing)
    except Exception as exc:
        raise ConfigError(where, "jobs", "more than 1",
                          f"1, or a task whose parts pickle for worker processes "
                          f"(module-level functions, not lambdas): {exc}") from None


def _die_with_parent(parent: int | None = None) -> None:
    """Linux: this worker gets SIGKILL when the parent dies, so a killed search leaves none.

    A spawned worker unpickles its job (importing torch: seconds) before it gets here; a parent
    killed in that window is not its parent any more (``getppid`` changed), and the worker
    exits at once instead of racing the resumed search."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def run_workers(body: WorkerBody, *, remaining: int, jobs: int, where: str = "jobs") -> None:
    """Run ``body(worker_index, quota)`` in ``jobs`` spawned processes and wait for them all.

    ``body`` must pickle (a module-level function or a ``functools.partial`` of one).
    """
    check_picklable(body, where=where)
    context = multiprocessing.get_context("spawn")
    errors = context.Queue()
    threads = max(1, (os.cpu_count() or 1) // jobs)
    processes = [context.Process(target=_worker, args=(body, i, quota, threads, errors,
                                                       os.getpid()),
                                 name=f"autocompress-worker-{i}")
                 for i, quota in enumerate(shares(remaining, jobs)) if quota]
    for process in processes:
        process.start()
    try:
        for process in processes:
            process.join()
    except KeyboardInterrupt:
        for process in processes:
            process.join(timeout=30)  # each worker marks its own trial interrupted and exits
        raise
    if not errors.empty():
        raise SearchStopped(errors.get())
    crashed = [p.name for p in processes if p.exitcode not in (0, None)]
    if crashed:
        raise SearchStopped(f"worker process(es) {', '.join(crashed)} died (exit codes "
                            f"{[p.exitcode for p in processes]}); finished trials are saved and "
                            f"the same command resumes the study")
