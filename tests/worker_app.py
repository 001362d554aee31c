"""A small app for the worker subprocess tests (``flask --app tests.worker_app``).

Environment: ``WORKER_DB`` (SQLAlchemy URL), ``WORKER_DIR`` (a folder): the hook
``gated`` writes ``started-<pid>`` there, then blocks until ``open`` appears,
then appends the user's e-mail to ``done``.

``python -m tests.worker_app SHUTDOWN_TIMEOUT`` is a web process that exits
mid-hook: it registers ann@example.com with the hook run in process
(``WORKER_HOOK_TIMEOUT``, default 60 s), waits for ``started-<pid>``, then ends
its main thread, leaving the rest to the pool's drain at interpreter exit.
"""

from __future__ import annotations

import os
import pathlib
import sys
import time
from typing import Any

from flask import Flask

from flask_postreg import PostReg

from .models import Account
from .models import db

postreg = PostReg()


@postreg.hook(name="gated", timeout=float(os.environ.get("WORKER_HOOK_TIMEOUT", 60)))
def gated(user, context):
    folder = pathlib.Path(os.environ["WORKER_DIR"])
    (folder / f"started-{os.getpid()}").write_text(user.email or "")
    deadline = time.monotonic() + 60
    while not (folder / "open").exists():
        if time.monotonic() > deadline:
            raise TimeoutError("the gate never opened")
        time.sleep(0.05)
    with (folder / "done").open("a") as f:
        f.write(f"{user.email}\n")


def create_app(**config: Any) -> Flask:
    app = Flask("worker_app")
    app.config.update(
        SQLALCHEMY_DATABASE_URI=os.environ["WORKER_DB"],
        POSTREG_RUN_IN_WEB=False,
        POSTREG_POLL_INTERVAL=0.2,
        POSTREG_RETRY_SCHEDULE=[0.2],
    )
    app.config.update(config)
    db.init_app(app)
    postreg.init_app(app, db=db, user_model=Account)
    with app.app_context():
        db.create_all()
    return app


def exit_mid_hook(shutdown_timeout: float) -> None:
    app = create_app(
        POSTREG_RUN_IN_WEB=True,
        POSTREG_SHUTDOWN_TIMEOUT=shutdown_timeout,
        POSTREG_LEASE_GRACE=0.5,
    )
    started = pathlib.Path(os.environ["WORKER_DIR"]) / f"started-{os.getpid()}"
    with app.app_context():
        db.session.add(Account(email="ann@example.com"))
        db.session.commit()
    deadline = time.monotonic() + 30
    while not started.exists():
        if time.monotonic() > deadline:
            raise SystemExit("the hook never started")
        time.sleep(0.01)
    print("main thread done", flush=True)


if __name__ == "__main__":
    exit_mid_hook(float(sys.argv[1]))
