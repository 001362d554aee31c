"""Built-in handlers (Slack, e-mail, webhooks, console), configured from app.config.

Their ``POSTREG_*`` keys are declared here, so ``init_app`` can check them
without importing optional dependencies; each handler module is imported only
when its settings are present.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..extension import _State


def configure(state: _State) -> None:
    """Register the handlers that ``state``'s config asks for as per-app hooks."""
