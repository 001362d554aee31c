"""A small real app using flask-postreg: a register form, a users list, hooks.

Run it with ``make demo`` (or ``flask --app example_app run``). It uses a SQLite
file in the instance folder unless ``DATABASE_URL`` is set. Built-in handlers are
wired from environment variables when set (see :func:`handler_config`); with none
set, the console handler logs each registration's JSON.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from flask import Flask

from .hooks import postreg
from .models import User
from .models import db
from .views import bp


def handler_config(env: dict[str, str] | None = None) -> dict[str, Any]:
    """``POSTREG_*`` handler settings from environment variables.

    - ``SLACK_WEBHOOK_URL``: post to Slack.
    - ``MAIL_SERVER`` plus ``MAIL_NOTIFY`` (comma-separated) and/or
      ``MAIL_WELCOME=1``; ``MAIL_PORT``, ``MAIL_USERNAME``, ``MAIL_PASSWORD``,
      ``MAIL_USE_TLS=1``, ``MAIL_USE_SSL=1``, ``MAIL_SENDER``.
    - ``WEBHOOK_URL`` and ``WEBHOOK_SECRET`` (``whsec_...``): a signed webhook.
    - none of these: the console handler.
    """
    env = dict(os.environ if env is None else env)
    config: dict[str, Any] = {}
    if env.get("SLACK_WEBHOOK_URL"):
        config["POSTREG_SLACK_WEBHOOK_URL"] = env["SLACK_WEBHOOK_URL"]
    notify = [a.strip() for a in env.get("MAIL_NOTIFY", "").split(",") if a.strip()]
    welcome = env.get("MAIL_WELCOME", "") in ("1", "true", "yes")
    if env.get("MAIL_SERVER") and (notify or welcome):
        config.update(
            POSTREG_MAIL_SERVER=env["MAIL_SERVER"],
            POSTREG_MAIL_NOTIFY=notify,
            POSTREG_MAIL_WELCOME=welcome,
            POSTREG_MAIL_SENDER=env.get("MAIL_SENDER", "Example <noreply@example.com>"),
            POSTREG_MAIL_USE_TLS=env.get("MAIL_USE_TLS", "") in ("1", "true", "yes"),
            POSTREG_MAIL_USE_SSL=env.get("MAIL_USE_SSL", "") in ("1", "true", "yes"),
        )
        if env.get("MAIL_PORT"):
            config["POSTREG_MAIL_PORT"] = int(env["MAIL_PORT"])
        for key in ("MAIL_USERNAME", "MAIL_PASSWORD"):
            if env.get(key):
                config["POSTREG_" + key] = env[key]
    if env.get("WEBHOOK_URL") and env.get("WEBHOOK_SECRET"):
        config["POSTREG_WEBHOOKS"] = [
            {"name": "crm", "url": env["WEBHOOK_URL"], "secret": env["WEBHOOK_SECRET"]}
        ]
    if not config:
        config["POSTREG_CONSOLE"] = True
    return config


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__, instance_relative_config=True)
    os.makedirs(app.instance_path, exist_ok=True)
    default_db = "sqlite:///" + os.path.join(app.instance_path, "example.db")
    app.config.update(
        SECRET_KEY=os.environ.get("SECRET_KEY", "dev-only-not-secret"),
        SQLALCHEMY_DATABASE_URI=os.environ.get("DATABASE_URL", default_db),
        POSTREG_TENANT="example",
        POSTREG_DEFAULT_LANGUAGE="en",
        **handler_config(),
    )
    app.config.from_prefixed_env("POSTREG_EXAMPLE")
    if config:
        app.config.update(config)
    if app.config.get("POSTREG_CONSOLE"):
        logging.getLogger("flask_postreg.console").setLevel(logging.INFO)
        logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    db.init_app(app)
    postreg.init_app(app, db=db, user_model=User)
    app.register_blueprint(bp)
    with app.app_context():
        db.create_all()
    return app


__all__ = ["User", "create_app", "db", "handler_config", "postreg"]
