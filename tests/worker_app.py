"""A small app for the worker subprocess tests (``flask --app tests.worker_app``).

Environment: ``WORKER_DB`` (SQLAlchemy URL), ``WORKER_DIR`` (a folder): the hook
``gated`` writes ``started-<pid>`` there, then blocks until ``open`` appears,
then appends the user's e-mail to ``done``.
"""

from __future__ import annotations

import os
import pathlib
import time

from flask import Flask

from flask_postreg import PostReg

from .models import Account
from .models import db

postreg = PostReg()


@postreg.hook(name="gated", timeout=60.0)
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


def create_app() -> Flask:
    app = Flask("worker_app")
    app.config.update(
        SQLALCHEMY_DATABASE_URI=os.environ["WORKER_DB"],
        POSTREG_RUN_IN_WEB=False,
        POSTREG_POLL_INTERVAL=0.2,
        POSTREG_RETRY_SCHEDULE=[0.2],
    )
    db.init_app(app)
    postreg.init_app(app, db=db, user_model=Account)
    with app.app_context():
        db.create_all()
    return app
