"""``flask postreg worker``: the pool and the poller alone, in the foreground.

For deployments that keep web processes free of hook work: with
``POSTREG_RUN_IN_WEB = False`` a web process only writes the outbox rows (in the
registration's transaction, pending and due now) and one or more workers run
them. SIGTERM or SIGINT stops a worker cleanly: it stops claiming, lets running
attempts finish within the shutdown timeout, and hands whatever is still
unfinished back to the outbox (pending, due now) for the next worker.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING
from typing import Any

from .backends import create as create_backend
from .backends.thread import ThreadBackend
from .config import ConfigError
from .config import register
from .errors import PostRegError
from .store.database import DatabaseStore

if TYPE_CHECKING:
    from .state import _State


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"POSTREG_{name} must be True or False, got {value!r}")
    return value


register(
    "RUN_IN_WEB",
    True,
    "`False`: this process (a web server) writes the outbox rows but runs no hook"
    " and no poller; `flask postreg worker` processes run them. Database store"
    " only (with the memory store hooks still run in-process).",
    _bool,
)


def require_database(state: _State) -> DatabaseStore:
    """The state's database store with its tables, or an error saying what to do."""
    store = state.store
    if not isinstance(store, DatabaseStore):
        raise PostRegError(
            "this needs the database store: set POSTREG_STORE = 'database' and"
            " point SQLALCHEMY_DATABASE_URI at a file or server database"
        )
    if not state.tables_ready():
        raise PostRegError(
            "the postreg_* tables are missing: create them with db.create_all() or"
            " a migration (flask db migrate && flask db upgrade)"
        )
    return store


def run(
    state: _State,
    *,
    shutdown_timeout: float,
    echo: Callable[[str], None] = print,
    stop: threading.Event | None = None,
) -> int:
    """Run until SIGTERM/SIGINT (or ``stop`` is set); return deliveries released."""
    if not state.enabled:
        raise PostRegError(
            "POSTREG_ENABLED is False for this app: it runs no hooks, so a worker"
            " has nothing to do. Set it to True where deliveries should run."
        )
    require_database(state)
    stop = stop or threading.Event()
    previous: dict[int, Any] = {}

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        state.run_here = True
        if state.backend.name != "thread" and state.poller is not None:
            # The sync backend has no poller (it runs inline, for scripts and
            # tests): a worker is nothing but its poller, so it gets a pool.
            state.backend = create_backend(
                "thread", state.dispatcher, state.values, background=state.poller.run
            )
        state.refresh_settings()
        state.start()
        hooks = state.hooks()
        echo(
            f"postreg worker: {len(hooks)} hook(s) enabled, polling every"
            f" {state.values['POLL_INTERVAL']:g}s; SIGTERM or Ctrl-C stops"
        )
        while not stop.wait(1.0):
            pass
        echo(
            f"postreg worker: stopping (up to {shutdown_timeout:g}s for running hooks)"
        )
        # Past the timeout the pool hands what it did not finish back, pending.
        backend = state.backend
        if isinstance(backend, ThreadBackend):
            finished = backend.shutdown(shutdown_timeout, exiting=True)
            released = 0 if finished else backend.handed_back
        else:
            backend.shutdown(shutdown_timeout)
            released = 0
        echo(
            f"postreg worker: stopped; {released} unfinished delivery(ies) left pending"
        )
        return released
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
