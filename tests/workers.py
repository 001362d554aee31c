"""Child processes for the durability tests: ``python -m tests.workers MODE ...``.

``crash URL LOG``   register 200 users (database store, two slow hooks that
                    append ``event_id hook pid`` to LOG); the test SIGKILLs it.
``drain URL LOG GO`` once the file GO exists, start the pool and poller and run
                    pending ``record`` deliveries until none is left; the hook
                    appends ``event_id attempt pid start end`` to LOG.

The hooks live here so the test process (the "fresh process" after a crash)
registers the very same ones under the same names.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

from flask import Flask

from flask_postreg import PostReg

from .models import Account
from .models import db

#: Seconds a crash-test hook takes.
SLOW = 0.02


def append_line(path: str, line: str) -> None:
    """One ``write`` on an O_APPEND file: lines from many processes never mix."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def appender(path: str, name: str) -> Callable[[Any, Any], None]:
    def hook(user: Any, context: Any) -> None:
        time.sleep(SLOW)
        append_line(path, f"{context.event_id} {name} {os.getpid()}\n")

    return hook


def interval_recorder(path: str, pause: float = 0.002) -> Callable[[Any, Any], None]:
    def hook(user: Any, context: Any) -> None:
        # CLOCK_MONOTONIC is one clock for every process on Linux.
        start = time.monotonic()
        time.sleep(pause)
        end = time.monotonic()
        append_line(
            path,
            f"{context.event_id} {context.attempt} {os.getpid()} {start!r} {end!r}\n",
        )

    return hook


def durable_app(
    name: str,
    url: str,
    hooks: dict[str, Callable[[Any, Any], None]],
    defaults: dict[str, Any],
    config: dict[str, Any],
) -> tuple[Flask, PostReg]:
    """An app on the database store with ``hooks`` (by name); ``config`` (the
    test's overrides) wins over ``defaults`` (the mode's)."""
    app = Flask(name)
    app.config.update(SQLALCHEMY_DATABASE_URI=url, POSTREG_STORE="database")
    app.config.update(defaults)
    app.config.update(config)
    db.init_app(app)
    postreg = PostReg()
    for hook_name, hook in hooks.items():
        postreg.hook(hook, name=hook_name)
    postreg.init_app(app, db=db, user_model=Account)
    return app, postreg


CRASH_HOOKS = ("slow", "other")


def crash_app(url: str, log: str, **config: Any) -> tuple[Flask, PostReg]:
    hooks = {name: appender(log, name) for name in CRASH_HOOKS}
    defaults = {
        "POSTREG_HOOK_TIMEOUT": 1.0,
        "POSTREG_LEASE_GRACE": 2.0,
        "POSTREG_RETRY_SCHEDULE": [0.1],
    }
    return durable_app("crash", url, hooks, defaults, config)


def crash(url: str, log: str) -> int:
    app, postreg = crash_app(url, log)
    with app.app_context():
        for i in range(200):
            db.session.add(Account(email=f"user{i}@example.com"))
            db.session.commit()
            time.sleep(0.005)
    return 0 if postreg.join(60) else 1


def drain_app(url: str, log: str, **config: Any) -> tuple[Flask, PostReg]:
    defaults = {
        "POSTREG_POLL_INTERVAL": 0.02,
        "POSTREG_MAX_QUEUE": 20,
        "POSTREG_HOOK_TIMEOUT": 5.0,
        "POSTREG_LEASE_GRACE": 5.0,
    }
    hooks = {"record": interval_recorder(log)}
    return durable_app("drain", url, hooks, defaults, config)


def drain(url: str, log: str, go: str) -> int:
    app, postreg = drain_app(url, log)
    store = app.extensions["postreg"].store
    with app.app_context():
        db.engine.connect().close()  # connect before the start line
    append_line(f"{go}.ready.{os.getpid()}", "ready\n")
    deadline = time.monotonic() + 60
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            return 3
        time.sleep(0.005)
    postreg.start(app)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        counts = store.counts()
        left = sum(n for (_, status), n in counts.items() if status != "succeeded")
        if not left:
            break
        time.sleep(0.05)
    else:
        return 2
    return 0 if postreg.shutdown(10) else 1


def main(argv: list[str]) -> int:
    mode, *args = argv
    if mode == "crash":
        return crash(*args)
    if mode == "drain":
        return drain(*args)
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
