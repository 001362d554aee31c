"""``python -m bench``: every benchmark of DESIGN section 6, one line per figure.

    python -m bench                 # the full run (about 2-3 minutes on 2 cores)
    python -m bench --quick         # a smoke run: same lines, noisy figures
    python -m bench --only drain    # one benchmark (repeat --only for more)

Exit status: 0 when every benchmark ran, whatever the figures; 1 when one
raised. ``--strict`` also exits 1 when a figure misses its goal. Ratios are
printed, never asserted: timing goals belong to a human reading a full run.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
import traceback

from . import breakdown
from . import burst
from . import drain
from . import isolation
from . import overhead
from .common import LogCounter
from .common import Report
from .common import Run
from .common import Settings
from .common import workdir

BENCHMARKS = {m.NAME: m for m in (overhead, breakdown, isolation, drain, burst)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(BENCHMARKS),
        metavar="NAME",
        help=f"run only this benchmark ({', '.join(BENCHMARKS)}); repeatable",
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 when a figure misses its goal"
    )
    args = parser.parse_args(argv)
    names = [n for n in BENCHMARKS if not args.only or n in args.only]

    log = LogCounter()
    core_log = logging.getLogger("flask_postreg")
    core_log.addHandler(log)
    core_log.propagate = False

    report = Report()
    report.line(
        f"flask-postreg benchmarks ({'quick' if args.quick else 'full'} run,"
        f" Python {platform.python_version()}, {os.cpu_count()} CPUs): ratios"
        " against a baseline in this process, rounds interleaved"
    )
    failed = []
    start = time.perf_counter()
    with workdir() as path:
        run = Run(Settings(quick=args.quick, workdir=path), report, log)
        for name in names:
            try:
                BENCHMARKS[name].run(run)
            except Exception:
                failed.append(name)
                report.line(f"{name}: FAILED")
                traceback.print_exc()
    if log.counts:
        counts = ", ".join(f"{n} {level}" for level, n in sorted(log.counts.items()))
        report.line(f"core log records at WARNING+: {counts}")
    report.line(f"total {time.perf_counter() - start:.0f} s")
    if failed:
        return 1
    if args.strict and report.missed():
        report.line("missed: " + "; ".join(report.missed()))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
