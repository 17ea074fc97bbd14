"""A throwaway PostgreSQL server for the tests, started once per session on a free local port.

Optuna's RDBStorage behaves differently on PostgreSQL than on SQLite (locking, types), so the
storage tests run against a real server rather than a mock. Debian's ``postgresql`` package keeps
its binaries in /usr/lib/postgresql/<ver>/bin, off PATH, so both are searched. PostgreSQL refuses
to run as root, so under root the server runs as the package's ``postgres`` system user.
Where the server or psycopg2 is missing, tests that use ``postgres_url`` are skipped.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

DATABASE = "autocompress_test"
START_TIMEOUT_S = 30.0


def _find_bin_dir() -> Path | None:
    """The directory holding initdb and pg_ctl: PATH first, then Debian's versioned dirs."""
    on_path = shutil.which("initdb")
    candidates = [Path(on_path).resolve().parent] if on_path else []
    candidates += sorted(
        (Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    for d in candidates:
        if (d / "initdb").is_file() and (d / "pg_ctl").is_file():
            return d
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL of an empty database ``autocompress_test`` on a fresh local server."""
    try:
        import psycopg2
    except ImportError:
        pytest.skip("psycopg2 is not installed: pip install 'autocompress[postgres]'")
    bin_dir = _find_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL (initdb, pg_ctl) not found: run `make postgres`")

    prefix: list[str] = []
    user = None
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.skip("running as root and runuser is missing: cannot drop to user postgres")
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and no `postgres` user exists: run `make postgres`")
        prefix, user = ["runuser", "-u", "postgres", "--"], "postgres"

    root = Path(tempfile.mkdtemp(prefix="autocompress-pg-"))
    data = root / "data"
    if user:
        shutil.chown(root, user=user, group=user)
    port = _free_port()
    pg_ctl = [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data)]

    def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cmd, capture_output=True, text=True, cwd=root, check=False)

    try:
        initdb = [*prefix, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres"]
        done = run([*initdb, "--auth=trust", "-E", "UTF8", "--no-sync"])
        if done.returncode != 0:
            pytest.skip(f"initdb failed: {done.stderr.strip()[-500:]}")
        opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        wait = ["-w", "-t", str(int(START_TIMEOUT_S))]
        done = run([*pg_ctl, "-l", str(root / "server.log"), "-o", opts, *wait, "start"])
        if done.returncode != 0:
            log_file = root / "server.log"
            log = log_file.read_text(errors="replace")[-500:] if log_file.exists() else ""
            pytest.skip(f"PostgreSQL did not start: {done.stderr.strip()} {log}")

        server = {"host": "127.0.0.1", "port": port, "user": "postgres", "dbname": "postgres"}
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                conn = psycopg2.connect(connect_timeout=2, **server)
                break
            except psycopg2.OperationalError as exc:
                if time.monotonic() > deadline:
                    pytest.skip(f"PostgreSQL did not accept connections on port {port}: {exc}")
                time.sleep(0.1)
        conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {DATABASE}")
        conn.close()

        yield f"postgresql://postgres@127.0.0.1:{port}/{DATABASE}"  # the documented form
    finally:
        if (data / "postmaster.pid").exists():
            run([*pg_ctl, "-m", "immediate", "stop"])
        shutil.rmtree(root, ignore_errors=True)
