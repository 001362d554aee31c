"""The example's hooks: the console handler prints each registration's JSON."""

from __future__ import annotations

import json
import logging

from flask_postreg import Context
from flask_postreg import PostReg
from flask_postreg import User

postreg = PostReg()
logger = logging.getLogger("example_app")


@postreg.hook(name="console")
def print_registration(user: User, context: Context) -> None:
    """Log the Auth0-shaped body a hook receives (the demo's visible effect)."""
    body = {"user": user.to_dict(), "context": context.to_dict()}
    print("post-user-registration:", json.dumps(body, indent=2), flush=True)
