"""An app whose one hook prints for ever (``flask --app tests.runner_app postreg
test --json``): it runs past its timeout, so it is still printing while the
Runner returns, the JSON is written and the interpreter exits."""

from __future__ import annotations

import os
import time

from flask import Flask

from flask_postreg import PostReg

from .models import Account
from .models import db


def create_app() -> Flask:
    app = Flask("runner_app")
    app.config.update(
        SQLALCHEMY_DATABASE_URI=os.environ["RUNNER_DB"], POSTREG_STORE="memory"
    )
    db.init_app(app)
    postreg = PostReg(app, db=db, user_model=Account)

    @postreg.hook(name="loops", timeout=0.2)
    def loops(user, context):
        while True:
            print("still waiting for the CRM")
            time.sleep(0.001)

    return app
