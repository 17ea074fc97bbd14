"""``--jobs N``: N worker processes on this machine, each an Optuna backend on the same storage.

Each worker gets an exact share of the trials still to run, its own sampler seed and
``cores // N`` torch threads, and writes every trial into the shared storage (SQLite in WAL mode,
or any SQLAlchemy URL; see :mod:`autocompress.backends.storage`). Workers start with ``spawn``
(a fresh interpreter: forking a process that has run torch's thread pools can hang), so the task
travels pickled: a user's metric or student factory must be a module-level function.
"""

from __future__ import annotations

import ast
import multiprocessing
import os
import pickle
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autocompress.errors import ConfigError, SearchStopped

WorkerBody = Callable[[int, int], None]
# a worker's exit code when it found itself re-running the user's script (no main guard)
UNGUARDED = 3
MAIN_GUARD = ("1, or a script whose call sits under `if __name__ == \"__main__\":` (each "
              "worker process re-imports the script that started the search)")


def check_main_guard(where: str = "jobs") -> None:
    """Refuse ``jobs`` > 1 from a script whose search call is not under a main guard, before any
    work: each spawned worker would re-run it (see :func:`leave_if_reimporting_main`).

    The outermost frame running the ``__main__`` script's top level is found on the stack and
    its line looked up in the script's syntax tree. Without a script file (a notebook,
    ``python -c``) there is nothing to re-run and nothing to check."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path is None:
        return
    frame, line = sys._getframe(1), None
    while frame is not None:  # the last one found is the outermost
        if frame.f_globals is vars(main) and frame.f_code.co_name == "<module>":
            line = frame.f_lineno
        frame = frame.f_back
    if line is None:
        return
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return
    for node in tree.body:
        if node.lineno <= line <= (node.end_lineno or node.lineno):
            if not _is_main_guard(node):
                raise ConfigError(where, "jobs", f"a call on line {line} of {path}", MAIN_GUARD)
            return


def _is_main_guard(node: ast.stmt) -> bool:
    """``if __name__ == "__main__":`` (either way round)."""
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    sides = [node.test.left, *node.test.comparators]
    return (len(sides) == 2 and isinstance(node.test.ops[0], ast.Eq)
            and {ast.dump(s) for s in sides} == {ast.dump(ast.Name("__name__", ast.Load())),
                                                  ast.dump(ast.Constant("__main__"))})


def leave_if_reimporting_main() -> None:
    """Called where a search starts. A spawned worker re-imports the script that started it;
    a script whose ``search(..., jobs=N)`` is not under a main guard would start the search
    again inside the worker and wait forever for the study's lock, which its parent holds
    while waiting for it. The worker leaves at once instead, and the parent says why.

    ``_inheriting`` is multiprocessing's own flag for this phase (its ``spawn`` module checks
    it to refuse starting processes from a re-imported main module)."""
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        print("autocompress: a worker process re-imported the script that started the search "
              "and found the search call again; put it under `if __name__ == \"__main__\":`",
              file=sys.stderr, flush=True)
        os._exit(UNGUARDED)


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
    if any(p.exitcode == UNGUARDED for p in processes):
        raise ConfigError(where, "jobs", jobs, MAIN_GUARD)
    crashed = [p.name for p in processes if p.exitcode not in (0, None)]
    if crashed:
        raise SearchStopped(f"worker process(es) {', '.join(crashed)} died (exit codes "
                            f"{[p.exitcode for p in processes]}); finished trials are saved and "
                            f"the same command resumes the study")
