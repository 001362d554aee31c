"""Models shared by the tests: a user model, a subclass, and an unrelated model."""

from __future__ import annotations

from typing import Any

from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import JSON
from sqlalchemy import ForeignKey
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)


class Account(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str | None]
    email: Mapped[str] = mapped_column(unique=True)
    password_hash: Mapped[str] = mapped_column(
        default="pbkdf2:sha256:600000$salt$deadbeef"
    )
    email_verified: Mapped[bool] = mapped_column(default=False)
    phone_number: Mapped[str | None]
    user_metadata: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    app_metadata: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    kind: Mapped[str] = mapped_column(default="account")

    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "account"}


class StaffAccount(Account):
    """Single-table subclass: registering staff fires too."""

    __mapper_args__ = {"polymorphic_identity": "staff"}


class Post(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "posts"

    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"))
    title: Mapped[str]
