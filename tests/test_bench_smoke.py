"""``python -m bench --quick`` runs to the end and prints every figure's line.

Timing ratios are not asserted: a quick run's figures are noise, and the
goals are for a human reading a full run.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

FIGURES = [
    "registration overhead, memory store, commit loop only: ",
    "registration overhead, memory store, including drain: ",
    "isolation p99, 200 ms hook vs no hook: ",
    "isolation anchor, sync blinker receiver sleeping 200 ms: ",
    "drain throughput, memory store, registrations: ",
    "drain throughput, memory store, emit (no database): ",
    "burst memory, 20,000 emits vs first 2,000: ",
    "burst dropped by backpressure: ",
]

DATABASE_BREAKDOWN = [
    "database store, write path only (nothing run in this process): ",
    "ideal write path: the ORM loop plus the outbox rows on the driver's cursor,"
    " nothing else: ",
    "raw sqlite3 floor: the same outbox rows, as a share of the ORM commit: ",
    "database store on WAL-mode files (journal_mode=WAL), commit loop only: ",
]


@pytest.mark.slow
@pytest.mark.timeout(320)  # pytest-timeout's 120 s default would end it first
def test_quick_bench_prints_every_figure() -> None:
    path = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    lines = proc.stdout.splitlines()
    for figure in FIGURES:
        assert any(line.startswith(figure) for line in lines), (figure, output)
    # This build has the durable store: its figures, never "not available"
    # (the bench reports a store that fell back to memory that way).
    assert not any("not available in this build" in line for line in lines), output
    for kind in ("registration overhead", "drain throughput"):
        assert any(line.startswith(f"{kind}, database store") for line in lines), (
            kind,
            output,
        )
    for figure in DATABASE_BREAKDOWN:
        assert any(line.startswith(figure) for line in lines), (figure, output)
    assert "FAILED" not in proc.stdout, output
