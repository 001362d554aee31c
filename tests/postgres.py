"""A throwaway PostgreSQL server for the tests and the benchmarks.

``initdb`` + ``pg_ctl`` in a temporary folder, on a free port on 127.0.0.1, with
trust authentication and durability switched off (``fsync``,
``synchronous_commit``, ``full_page_writes``): fast, and gone afterwards.
PostgreSQL refuses to run as root: as root the folder is handed to the
``postgres`` system user and the binaries run as it (``runuser``).

Used by ``tests/conftest.py`` (a session fixture) and by ``bench/`` (one module,
not copied code). Nothing here imports pytest.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator

#: Set to 1 (``.ci/run`` does) to fail instead of skipping without PostgreSQL.
REQUIRE_ENV = "POSTREG_TEST_REQUIRE_POSTGRES"

_names = itertools.count(1)


class Unavailable(RuntimeError):
    """No PostgreSQL binaries (or no way to run them) on this machine."""


def find_bindir() -> str:
    """The folder with ``initdb`` and ``pg_ctl``: PATH first, then Debian's."""
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return os.path.dirname(os.path.realpath(initdb))
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(p.split("/")[-3]) if p.split("/")[-3].isdigit() else 0,
    )
    if candidates:
        return os.path.dirname(candidates[-1])
    raise Unavailable(
        "PostgreSQL binaries (initdb, pg_ctl) not found on PATH nor under"
        " /usr/lib/postgresql/*/bin; install the 'postgresql' package"
    )


def required() -> bool:
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """One running server; :meth:`create_database` gives each test its own."""

    def __init__(self, bindir: str | None = None) -> None:
        self.bindir = bindir or find_bindir()
        self.base = tempfile.mkdtemp(prefix="postreg-pg-")
        self.data = os.path.join(self.base, "data")
        self.sockets = os.path.join(self.base, "sock")
        self.log = os.path.join(self.base, "server.log")
        self.port = 0
        self._prefix: list[str] = []
        self.running = False

    # -- lifecycle ---------------------------------------------------------

    def _run(self, *args: str) -> None:
        cmd = [*self._prefix, os.path.join(self.bindir, args[0]), *args[1:]]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            log = ""
            with contextlib.suppress(OSError), open(self.log) as f:
                log = f.read()[-2000:]
            raise RuntimeError(
                f"{' '.join(cmd)} exited {proc.returncode}:"
                f" {proc.stdout}{proc.stderr}{log}"
            )

    def start(self) -> PostgresServer:
        os.makedirs(self.sockets)
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise Unavailable(
                    "running as root and there is no 'postgres' system user to run"
                    " the server as (PostgreSQL refuses root)"
                ) from None
            runuser = shutil.which("runuser")
            if runuser is None:
                raise Unavailable("running as root and 'runuser' is missing")
            for path in (self.base, self.sockets):
                os.chown(path, user.pw_uid, user.pw_gid)
            self._prefix = [runuser, "-u", "postgres", "--"]
        self._run(
            "initdb",
            "-D",
            self.data,
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        )
        last: Exception | None = None
        for _ in range(5):  # the free port may be taken between probe and bind
            self.port = _free_port()
            options = (
                f"-k {self.sockets} -c listen_addresses=127.0.0.1 -p {self.port}"
                " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
                " -c max_connections=200"
            )
            try:
                self._run(
                    "pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60",
                    "-o", options, "start",
                )  # fmt: skip
            except RuntimeError as exc:
                last = exc
                continue
            self.running = True
            return self
        raise RuntimeError(f"could not start PostgreSQL: {last}")

    def stop(self) -> None:
        if self.running:
            self.running = False
            with contextlib.suppress(Exception):
                self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.base, ignore_errors=True)

    # -- databases ---------------------------------------------------------

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
            autocommit=True,
        ) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        name = f"{prefix}_{os.getpid()}_{next(_names)}"
        self._admin(f'CREATE DATABASE "{name}" TEMPLATE template0 STRATEGY file_copy')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def server() -> Iterator[PostgresServer]:
    """Start a server, yield it, stop it (raises :class:`Unavailable`)."""
    pg = PostgresServer()
    try:
        yield pg.start()
    finally:
        pg.stop()
