"""How the ``flask postreg`` commands read times and print: aligned columns,
coloured only on a terminal, and stable JSON for scripts."""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
import sys
from collections.abc import Sequence
from typing import IO
from typing import Any

import click

from .dispatch import DEAD
from .dispatch import PENDING
from .dispatch import RUNNING
from .dispatch import SUCCEEDED

_COLOURS = {SUCCEEDED: "green", DEAD: "red", PENDING: "yellow", RUNNING: "cyan"}
_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*(?:ago)?\s*$", re.I)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_when(text: str, *, now: _dt.datetime | None = None) -> _dt.datetime:
    """``2h``, ``3d``, ``30m``, ``1w`` (ago), ``now``, ``today``, or ISO 8601.

    ISO times without an offset are UTC. Returns an aware datetime.
    """
    now = now or _dt.datetime.now(_dt.timezone.utc)
    value = text.strip()
    match = _RELATIVE.match(value)
    if match:
        seconds = float(match.group(1)) * _UNITS[match.group(2).lower()]
        try:
            return now - _dt.timedelta(seconds=seconds)
        except OverflowError:
            raise ValueError(
                f"{text!r} is further back than any date (year 1 at most)"
            ) from None
    if value.lower() == "now":
        return now
    if value.lower() == "today":
        return now.replace(hour=0, minute=0, second=0, microsecond=0)
    try:
        when = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: use an ISO date or time (2024-05-01,"
            " 2024-05-01T12:00, UTC unless it has an offset) or an age such as"
            " 30m, 2h, 3d, 1w"
        ) from None
    if when.tzinfo is None:
        return when.replace(tzinfo=_dt.timezone.utc)
    try:  # an offset that moves it past year 1 or 9999 in UTC
        when.astimezone(_dt.timezone.utc)
    except OverflowError:
        raise ValueError(f"{text!r} is out of range in UTC (years 1 to 9999)") from None
    return when


class Number(click.FloatRange):
    """A number in a range, and finite: ``nan`` and ``inf`` pass a range check
    (every comparison with nan is false) and break the arithmetic after it."""

    name = "number"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


def tty() -> bool:
    try:
        return bool(sys.stdout.isatty())
    except Exception:  # pragma: no cover - a closed or odd stream
        return False


def style(text: str, **styles: Any) -> str:
    return click.style(text, **styles) if tty() else text


def status(text: str, width: int = 0) -> str:
    padded = text.ljust(width)
    return style(padded, fg=_COLOURS.get(text)) if text in _COLOURS else padded


def when_text(value: _dt.datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def cut(text: str | None, width: int) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    status_column: int | None = None,
) -> None:
    """Aligned columns; the status column coloured on a terminal."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    click.echo(
        style(
            "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)),
            bold=True,
        )
    )
    for row in rows:
        cells = []
        for i, (cell, width) in enumerate(zip(row, widths, strict=True)):
            last = i == len(row) - 1
            if i == status_column:
                cells.append(status(cell, 0 if last else width))
            else:
                cells.append(cell if last else cell.ljust(width))
        click.echo("  ".join(cells).rstrip())


def echo_json(data: Any, file: IO[str] | None = None) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str), file=file)
