"""A console handler for development: log each registration's Auth0-shaped JSON.

Logs at INFO on the ``flask_postreg.console`` logger. The body is what any hook
receives, ``{"user": ..., "context": ...}``: no secrets, no password hash.

.. versionadded:: 0.1
"""

from __future__ import annotations

import json
import logging

from ..events import Context
from ..events import User

__all__ = ["ConsoleHandler"]

logger = logging.getLogger("flask_postreg.console")


class ConsoleHandler:
    """A hook that logs each registration (``POSTREG_CONSOLE = True``).

    .. versionadded:: 0.1
    """

    hook_name = "console"
    scrub_values: tuple[str, ...] = ()

    def __init__(self, *, indent: int | None = 2, level: int = logging.INFO) -> None:
        self.indent = indent
        self.level = level

    def __repr__(self) -> str:
        return "<ConsoleHandler>"

    def __call__(self, user: User, context: Context) -> None:
        body = {"user": user.to_dict(), "context": context.to_dict()}
        text = json.dumps(body, indent=self.indent, sort_keys=True, ensure_ascii=False)
        logger.log(self.level, "post-user-registration %s\n%s", context.event_id, text)
