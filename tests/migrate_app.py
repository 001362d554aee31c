"""An app that gets its tables from Flask-Migrate only (``flask --app
tests.migrate_app db ...``), never from ``db.create_all()``.

Environment: ``MIGRATE_DB`` (SQLAlchemy URL), ``MIGRATE_DIR`` (the migrations
folder).
"""

from __future__ import annotations

import os

from flask import Flask
from flask_migrate import Migrate

from flask_postreg import PostReg

from .models import Account
from .models import db

postreg = PostReg()


@postreg.hook(name="noop")
def noop(user, context):
    pass


def create_app() -> Flask:
    app = Flask("migrate_app")
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["MIGRATE_DB"]
    db.init_app(app)
    postreg.init_app(app, db=db, user_model=Account)
    Migrate(app, db, directory=os.environ["MIGRATE_DIR"])
    return app
