"""A small real app using flask-postreg: a register form, a users list, hooks.

Run it with ``make demo`` (or ``flask --app example_app run``). It uses a SQLite
file in the instance folder unless ``DATABASE_URL`` is set. Hooks print to the
console; Slack, e-mail and webhooks are wired from environment variables when set.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask

from .hooks import postreg
from .models import User
from .models import db
from .views import bp


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__, instance_relative_config=True)
    os.makedirs(app.instance_path, exist_ok=True)
    default_db = "sqlite:///" + os.path.join(app.instance_path, "example.db")
    app.config.update(
        SECRET_KEY=os.environ.get("SECRET_KEY", "dev-only-not-secret"),
        SQLALCHEMY_DATABASE_URI=os.environ.get("DATABASE_URL", default_db),
        POSTREG_TENANT="example",
        POSTREG_DEFAULT_LANGUAGE="en",
    )
    app.config.from_prefixed_env("POSTREG_EXAMPLE")
    if config:
        app.config.update(config)
    db.init_app(app)
    postreg.init_app(app, db=db, user_model=User)
    app.register_blueprint(bp)
    with app.app_context():
        db.create_all()
    return app


__all__ = ["User", "create_app", "db", "postreg"]
