"""The ``flask postreg`` command group, added to each app by ``init_app``.

Human output is aligned columns (coloured only on a terminal); ``--json`` output
is stable for scripts (both in :mod:`.terminal`). Errors say what to do and exit
non-zero.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING
from typing import Any
from typing import TypeVar

import click
import sqlalchemy as sa
from flask import current_app
from flask.cli import AppGroup

from . import terminal
from .config import ConfigError
from .dispatch import DEAD
from .dispatch import PENDING
from .dispatch import RUNNING
from .dispatch import SUCCEEDED
from .errors import PostRegError
from .scrub import scrub
from .store.database import DatabaseStore
from .store.leases import split_delivery_id
from .store.tables import RUN_ID_WIDTH

if TYPE_CHECKING:
    from .state import _State

F = TypeVar("F", bound=Callable[..., Any])

STATUSES = (PENDING, RUNNING, SUCCEEDED, DEAD)
#: Upper bounds of the numeric options: past them a value is a typo, and the
#: database or the clock would fail on it with a traceback.
MAX_ROWS = 1_000_000
MAX_BATCH = 10_000
MAX_SECONDS = 1e7
MAX_DAYS = 1e5

postreg_group = AppGroup(
    "postreg",
    help="Post-registration hooks: run, inspect, retry, replay, operate.",
)


# -- helpers -------------------------------------------------------------------


def _when(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> _dt.datetime | None:
    """Click callback: parse a WHEN option."""
    if value is None:
        return None
    try:
        return terminal.parse_when(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def _run_id(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """Click callback: a run id fits its column (checked before a dry run too)."""
    if value is not None and len(value) > RUN_ID_WIDTH:
        raise click.BadParameter(
            f"at most {RUN_ID_WIDTH} characters (this one has {len(value)})",
            ctx=ctx,
            param=param,
        )
    return value


def _state() -> _State:
    state: _State | None = current_app.extensions.get("postreg")
    if state is None:
        raise click.ClickException(
            "this app has no PostReg: call postreg.init_app(app, db=db,"
            " user_model=User) in its factory"
        )
    return state


def _errors(func: F) -> F:
    """Turn the extension's errors into a message and exit status 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (PostRegError, ConfigError) as exc:
            raise click.ClickException(str(exc)) from None
        except sa.exc.SQLAlchemyError as exc:
            raise click.ClickException(_database_error(exc)) from None

    return wrapper  # type: ignore[return-value]


def _database_error(exc: sa.exc.SQLAlchemyError) -> str:
    """One line for a database error: the driver's own first line, scrubbed (no
    statement, no parameters: they may hold personal data)."""
    cause = getattr(exc, "orig", None) or exc
    text = str(cause).strip().splitlines()
    first = scrub(text[0] if text else "", limit=300)
    return (
        f"the database failed: {type(cause).__name__}: {first}. Check that it is"
        " reachable (SQLALCHEMY_DATABASE_URI) and not locked by a long"
        " transaction, then run the command again."
    )


def _hook_names(state: _State) -> list[str]:
    return [h.name for h in state.hooks(include_disabled=True)]


def _require_hook(state: _State, name: str) -> None:
    names = _hook_names(state)
    if name not in names:
        raise click.ClickException(
            f"unknown hook {name!r}. The app's hooks are:"
            f" {', '.join(sorted(names)) or '(none)'} (see: flask postreg hooks)"
        )


def _durable(state: _State, what: str) -> DatabaseStore:
    store = state.store
    if not isinstance(store, DatabaseStore):
        raise click.ClickException(
            f"{what} needs the database store: set POSTREG_STORE = 'database' (this"
            " app uses the memory store, which lives in one process only)"
        )
    if not state.tables_ready():
        raise click.ClickException(
            "the postreg_* tables are missing: create them with db.create_all() or"
            " a migration (flask db migrate && flask db upgrade)"
        )
    return store


# -- hooks -----------------------------------------------------------------------


@postreg_group.command("hooks")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_errors
def hooks_command(as_json: bool) -> None:
    """List every hook with its settings, last outcome and counts per status."""
    state = _state()
    readable = not state.durable or state.tables_ready()
    if readable:
        state.refresh_settings()
    counts = state.store.counts() if readable else {}
    items: list[dict[str, Any]] = []
    for hook in state.hooks(include_disabled=True):
        last = state.store.deliveries(hook=hook.name, limit=1) if readable else []
        items.append(
            {
                "name": hook.name,
                "source": hook.source,
                "enabled": hook.enabled,
                "max_attempts": hook.max_attempts,
                "timeout": hook.timeout,
                "last": None
                if not last
                else {
                    "status": last[0].status,
                    "at": terminal.when_text(last[0].updated_at or last[0].created_at),
                    "error_class": last[0].error_class,
                },
                "counts": {
                    s: counts.get((hook.name, s), 0)
                    for s in STATUSES
                    if counts.get((hook.name, s), 0)
                },
            }
        )
    if as_json:
        terminal.echo_json(items)
        return
    if not items:
        click.echo("No hooks. Register one with @postreg.hook.")
        return
    rows = []
    for item in items:
        last_item = item["last"]
        rows.append(
            [
                item["name"],
                item["source"],
                "yes" if item["enabled"] else "no",
                str(item["max_attempts"]),
                f"{item['timeout']:g}s",
                "-"
                if last_item is None
                else f"{last_item['status']} {last_item['at']}",
                " ".join(f"{k}={v}" for k, v in item["counts"].items()) or "-",
            ]
        )
    terminal.table(
        ["HOOK", "SOURCE", "ENABLED", "ATTEMPTS", "TIMEOUT", "LAST", "COUNTS"], rows
    )
    if not readable:
        click.echo("(the postreg_* tables are missing: no outcomes to show)", err=True)


# -- test (the Runner) -------------------------------------------------------------


@postreg_group.command("test")
@click.argument("hook_names", nargs=-1, metavar="[HOOK]...")
@click.option(
    "--payload",
    type=click.File("rb"),
    help='A JSON body {"user": ..., "context": ...}; "-" reads stdin.'
    " Default: Auth0's sample body.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_errors
def test_command(hook_names: tuple[str, ...], payload: Any, as_json: bool) -> None:
    """Run hooks once, now, with a sample body (the Runner); record nothing.

    Runs every hook (disabled ones too) unless HOOK names are given. Exit status
    1 if any hook failed.
    """
    state = _state()
    with contextlib.suppress(Exception):  # show store-disabled hooks as such
        if not state.durable or state.tables_ready():
            state.refresh_settings()
    body = None if payload is None else payload.read()
    out = sys.stdout
    if as_json:
        # stdout is for the JSON alone: until the command ends, what a hook's
        # helper threads print, or a hook still running past its timeout,
        # goes to stderr.
        sys.stdout = sys.stderr
    results = state.ext.run_test(body, hook_names or None, app=state.app)
    failed = [r for r in results if not r.ok]
    if as_json:
        terminal.echo_json(
            {"ok": not failed, "results": [r.to_dict() for r in results]}, file=out
        )
    else:
        if not results:
            click.echo("No hooks to run. Register one with @postreg.hook.")
        width = max((len(r.hook) for r in results), default=0)
        for r in results:
            mark = (
                terminal.style("ok  ", fg="green")
                if r.ok
                else terminal.style("FAIL", fg="red")
            )
            line = f"{mark}  {r.hook.ljust(width)}  {terminal.ms(r.duration).rjust(8)}"
            if not r.enabled:
                line += "  (disabled)"
            if not r.ok:
                line += f"  {r.error_class}: {r.error}"
            click.echo(line)
            for log in r.logs:
                for text in log.splitlines():
                    click.echo(f"      | {text}")
            if r.traceback:
                for text in r.traceback.rstrip().splitlines():
                    click.echo(f"      {text}")
        if results:
            click.echo(f"{len(results) - len(failed)} ok, {len(failed)} failed")
    if failed:
        sys.exit(1)


# -- deliveries ------------------------------------------------------------------------


@postreg_group.command("deliveries")
@click.option("--status", type=click.Choice(STATUSES), help="Only this status.")
@click.option("--hook", help="Only this hook.")
@click.option(
    "--since",
    callback=_when,
    metavar="WHEN",
    help="Created since: 2h, 3d, 2024-05-01...",
)
@click.option("--until", callback=_when, metavar="WHEN", help="Created before WHEN.")
@click.option(
    "--limit", type=click.IntRange(min=1, max=MAX_ROWS), default=50, show_default=True
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_errors
def deliveries_command(
    status: str | None,
    hook: str | None,
    since: _dt.datetime | None,
    until: _dt.datetime | None,
    limit: int,
    as_json: bool,
) -> None:
    """What ran, when, how often, with which error (newest first)."""
    state = _state()
    if state.durable:
        _durable(state, "reading deliveries")
    records = state.store.deliveries(
        status=status, hook=hook, since=since, until=until, limit=limit
    )
    if as_json:
        terminal.echo_json([r.to_dict() for r in records])
        return
    if not records:
        click.echo("No deliveries match.")
        return
    rows = [
        [
            r.id,
            r.hook,
            r.status,
            str(r.attempts),
            terminal.when_text(r.created_at),
            terminal.ms(r.duration),
            terminal.cut(f"{r.error_class}: {r.error}" if r.error_class else "", 60),
        ]
        for r in records
    ]
    terminal.table(
        ["ID", "HOOK", "STATUS", "ATTEMPTS", "CREATED", "DURATION", "ERROR"],
        rows,
        status_column=2,
    )


# -- retry -----------------------------------------------------------------------------


@postreg_group.command("retry")
@click.argument("delivery_ids", nargs=-1, metavar="[DELIVERY_ID]...")
@click.option("--dead", is_flag=True, help="Every dead delivery (of --hook).")
@click.option("--hook", help="With --dead: only this hook.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_errors
def retry_command(
    delivery_ids: tuple[str, ...], dead: bool, hook: str | None, as_json: bool
) -> None:
    """Send dead (or pending) deliveries back to pending, due now."""
    if bool(delivery_ids) == dead:
        raise click.UsageError("give DELIVERY_ID... or --dead (not both)")
    if hook and not dead:
        raise click.UsageError("--hook goes with --dead")
    state = _state()
    store = _durable(state, "retrying deliveries")
    delivery_ids = tuple(dict.fromkeys(delivery_ids))  # an id given twice is one
    # A hook this app no longer has: its rows would go pending and never run.
    names = _hook_names(state)
    if hook:
        _require_hook(state, hook)
    keys = filter(None, map(split_delivery_id, delivery_ids))
    gone = sorted({name for _, name in keys} - set(names))
    if gone:
        raise click.ClickException(
            f"unknown hook(s) {', '.join(map(repr, gone))} in the id(s): nothing"
            " would run them. The app's hooks are:"
            f" {', '.join(sorted(names)) or '(none)'} (see: flask postreg hooks)"
        )
    if not dead:
        count = store.retry(delivery_ids)
    else:
        count = sum(store.retry_dead(h) for h in ([hook] if hook else names))
        if not hook:
            left = [h for h in store.dead_hooks() if h not in names]
            if left:
                click.echo(
                    f"Dead deliveries of hook(s) this app no longer has were left"
                    f" as they are: {', '.join(left)}.",
                    err=True,
                )
    if as_json:
        terminal.echo_json({"retried": count})
    elif dead:
        click.echo(f"{count} dead delivery(ies) sent back to pending.")
    else:
        click.echo(
            f"{count} of {len(delivery_ids)} delivery(ies) sent back to pending."
        )
    if delivery_ids and count < len(delivery_ids):
        raise click.ClickException(
            f"{len(delivery_ids) - count} id(s) matched no dead or pending delivery;"
            " list them with: flask postreg deliveries --status dead"
        )
    if count and not as_json:
        click.echo(
            "A running app or `flask postreg worker` runs them within"
            f" {state.values['POLL_INTERVAL']:g}s.",
            err=True,
        )


# -- replay ----------------------------------------------------------------------------


@postreg_group.command("replay")
@click.option(
    "--since",
    callback=_when,
    metavar="WHEN",
    required=True,
    help="Users created since WHEN.",
)
@click.option("--until", callback=_when, metavar="WHEN", help="... and before WHEN.")
@click.option("--hook", help="Only this hook (default: every enabled hook).")
@click.option("--dry-run", is_flag=True, help="Count, write nothing.")
@click.option(
    "--run-id",
    type=click.STRING,
    callback=_run_id,
    help="Resume this run (printed by the first one).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1, max=MAX_BATCH),
    default=500,
    show_default=True,
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_errors
def replay_command(
    since: _dt.datetime,
    until: _dt.datetime | None,
    hook: str | None,
    dry_run: bool,
    run_id: str | None,
    batch_size: int,
    as_json: bool,
) -> None:
    """Backfill: new events for users already in the table, created in a window.

    Resumable: re-run with the same --run-id and users already replayed by that
    run are skipped. Deliveries are left pending for a running app or worker.
    """
    from .replay import replay

    state = _state()
    with contextlib.ExitStack() as stack:
        bar: Any = None

        def on_total(total: int) -> None:
            nonlocal bar
            if not as_json:
                bar = stack.enter_context(
                    click.progressbar(length=total, label="Replaying", file=sys.stderr)
                )

        def progress(n: int) -> None:
            if bar is not None:
                bar.update(n)

        result = replay(
            state,
            since=since,
            until=until,
            hook=hook,
            run_id=run_id,
            dry_run=dry_run,
            batch_size=batch_size,
            progress=progress,
            on_total=on_total,
        )
    if as_json:
        terminal.echo_json(result.to_dict())
        return
    verb = "would create" if dry_run else "created"
    click.echo(
        f"run {result.run_id}: {result.users} user(s) created from {result.since}"
        f" to {result.until}, {verb} {result.created} event(s) and"
        f" {result.deliveries} delivery(ies) for {', '.join(result.hooks)};"
        f" {result.skipped} already replayed by this run."
    )
    if result.undated:
        click.echo(
            f"warning: {result.undated} user(s) have no creation time and are in no"
            " window; emit their events with postreg.emit(user)."
        )
    if not dry_run and result.created:
        click.echo(
            "A running app or `flask postreg worker` delivers them. Resume or"
            f" repeat safely with --run-id {result.run_id} --since {result.since}"
            f" --until {result.until} (for POSTREG_RETENTION_DAYS: a prune"
            " forgets the users a run delivered)."
        )


# -- enable / disable ----------------------------------------------------------------------


def _switch(name: str, enabled: bool) -> None:
    state = _state()
    _require_hook(state, name)
    store = _durable(state, "enabling or disabling hooks")
    store.set_enabled(name, enabled)
    state.refresh_settings()
    what = "enabled" if enabled else "disabled"
    click.echo(
        f"hook {name} {what}; running processes apply it within"
        f" {state.values['POLL_INTERVAL']:g}s (POSTREG_POLL_INTERVAL)."
    )


@postreg_group.command("enable")
@click.argument("hook")
@_errors
def enable_command(hook: str) -> None:
    """Enable HOOK in every process (persisted in the database)."""
    _switch(hook, True)


@postreg_group.command("disable")
@click.argument("hook")
@_errors
def disable_command(hook: str) -> None:
    """Disable HOOK in every process: it gets no new deliveries."""
    _switch(hook, False)


# -- worker ----------------------------------------------------------------------------------


@postreg_group.command("worker")
@click.option(
    "--shutdown-timeout",
    type=terminal.Number(min=0, max=MAX_SECONDS),
    help="Seconds running hooks get after SIGTERM (default POSTREG_SHUTDOWN_TIMEOUT).",
)
@_errors
def worker_command(shutdown_timeout: float | None) -> None:
    """Run the pool and the poller in the foreground until SIGTERM or Ctrl-C.

    Unfinished deliveries are left pending for the next worker: nothing is lost.
    """
    from . import worker

    state = _state()
    timeout = (
        state.values["SHUTDOWN_TIMEOUT"]
        if shutdown_timeout is None
        else shutdown_timeout
    )
    worker.run(state, shutdown_timeout=timeout, echo=lambda s: click.echo(s, err=True))


# -- check --------------------------------------------------------------------------------------


@postreg_group.command("check")
@click.option("--ping", is_flag=True, help="Also connect to Slack/SMTP/webhook hosts.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@_errors
def check_command(ctx: click.Context, ping: bool, as_json: bool) -> None:
    """Tables present, hooks listed, configuration valid; --ping: endpoints reachable.

    Exit status: 0 all good, 1 a local check failed, 2 only an endpoint failed.
    """
    from . import checks

    state = _state()
    local = checks.local(state)
    pings = checks.ping(state) if ping else []
    code = (
        1 if any(not c.ok for c in local) else 2 if any(not c.ok for c in pings) else 0
    )
    if as_json:
        terminal.echo_json(
            {
                "ok": code == 0,
                "exit": code,
                "checks": [c.to_dict() for c in local + pings],
            }
        )
    else:
        rows = []
        for c in local + pings:
            mark = "ok" if c.ok and not c.warning else "warn" if c.ok else "FAIL"
            rows.append([mark, c.kind, c.name, c.detail])
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        for row in rows:
            colour = {"ok": "green", "warn": "yellow", "FAIL": "red"}[row[0]]
            first = terminal.style(row[0].ljust(widths[0]), fg=colour)
            rest = "  ".join(
                cell.ljust(w) for cell, w in zip(row[1:3], widths[1:], strict=True)
            )
            click.echo(f"{first}  {rest}  {row[3]}")
    ctx.exit(code)


# -- prune ----------------------------------------------------------------------------------------


@postreg_group.command("prune")
@click.option(
    "--older-than",
    "days",
    type=terminal.Number(min=0, max=MAX_DAYS),
    metavar="DAYS",
    help="Default POSTREG_RETENTION_DAYS.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_errors
def prune_command(days: float | None, as_json: bool) -> None:
    """Delete succeeded deliveries (and their events) older than DAYS."""
    state = _state()
    store = _durable(state, "pruning")
    days = state.values["RETENTION_DAYS"] if days is None else days
    count = store.prune(days)
    if as_json:
        terminal.echo_json({"pruned": count, "older_than_days": days})
    else:
        click.echo(
            f"{count} succeeded delivery(ies) older than {days:g} day(s) deleted."
        )
