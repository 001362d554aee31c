"""Auth0-style post-user-registration hooks for Flask + Flask-SQLAlchemy apps."""

from __future__ import annotations

from .config import ConfigError
from .errors import PermanentError
from .errors import PostRegError
from .errors import RetryLater
from .events import Connection
from .events import Context
from .events import Event
from .events import RequestInfo
from .events import User
from .extension import PostReg
from .signals import hook_failed
from .signals import hook_succeeded
from .signals import post_user_registration

__version__ = "0.1.0.dev0"

__all__ = [
    "ConfigError",
    "Connection",
    "Context",
    "Event",
    "PermanentError",
    "PostReg",
    "PostRegError",
    "RequestInfo",
    "RetryLater",
    "User",
    "hook_failed",
    "hook_succeeded",
    "post_user_registration",
]
