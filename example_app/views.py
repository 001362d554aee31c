"""Register and list users: a plain Flask view, unaware of the hooks."""

from __future__ import annotations

import re

from flask import Blueprint
from flask import flash
from flask import redirect
from flask import render_template
from flask import request
from flask import url_for
from sqlalchemy.exc import IntegrityError
from werkzeug.security import generate_password_hash
from werkzeug.wrappers import Response

from .models import User
from .models import db

bp = Blueprint("example", __name__)

_USERNAME = re.compile(r"^[A-Za-z0-9_.-]{3,40}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def validate(username: str, email: str, password: str) -> list[str]:
    errors = []
    if not _USERNAME.match(username):
        errors.append("Username: 3 to 40 letters, digits, '.', '_' or '-'.")
    if not _EMAIL.match(email) or len(email) > 254:
        errors.append("E-mail: enter an address like name@example.com.")
    if len(password) < 8:
        errors.append("Password: at least 8 characters.")
    return errors


@bp.get("/")
def index() -> Response:
    return redirect(url_for("example.register"))


@bp.route("/register", methods=["GET", "POST"])
def register() -> str | Response | tuple[str, int]:
    if request.method == "GET":
        return render_template("register.html", form={})
    form = {k: request.form.get(k, "").strip() for k in ("username", "email", "name")}
    password = request.form.get("password", "")
    errors = validate(form["username"], form["email"], password)
    if errors:
        return render_template("register.html", form=form, errors=errors), 400
    user = User(
        username=form["username"],
        email=form["email"].lower(),
        password_hash=generate_password_hash(password),
        user_metadata={"name": form["name"]} if form["name"] else {},
        app_metadata={"plan": "free"},
    )
    db.session.add(user)
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        errors = ["That username or e-mail is already registered."]
        return render_template("register.html", form=form, errors=errors), 409
    flash(f"Welcome, {user.username}! Your hooks are running in the background.")
    return redirect(url_for("example.users"))


@bp.get("/users")
def users() -> str:
    rows = db.session.execute(db.select(User).order_by(User.id.desc())).scalars()
    return render_template("users.html", users=list(rows))
