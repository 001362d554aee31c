"""The example's extension object; its handlers come from configuration.

``create_app`` wires the built-in handlers from environment variables (Slack,
e-mail, a signed webhook) and falls back to the console handler
(``POSTREG_CONSOLE``) when none is set, so ``make demo`` always shows something.
"""

from __future__ import annotations

import logging

from flask_postreg import PostReg

postreg = PostReg()
logger = logging.getLogger("example_app")
