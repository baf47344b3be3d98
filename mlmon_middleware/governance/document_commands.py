"""``mlmon card …`` and ``mlmon report …``: the model card and the compliance report from a shell.

    mlmon card render MODEL [VERSION] [--format md|html] [--out FILE] [--store DIR|FILE|URL]
    mlmon report compliance MODEL --since T [--until T] [--format html|md] [--out FILE]
                            [--store …] [--actor WHO] [--window 1d] [--task T] [--positive C] [--threshold X]

``--store`` is the database of the registry, the audit log and the prediction log, as for
``mlmon registry`` (:mod:`~mlmon_middleware.governance.commands`). A card rendered here is
offline: its drift section says it is not available (the route ``GET /mlmon/card`` of the
running service shows it). The report's export is appended to the audit log
(``report_exported``, by ``--actor``, else the operating-system user). Times are ISO 8601 or a
duration before now (``7d``); ``--window`` is a duration (``1d``, ``6h``).

>>> duration("1.5h", "--window")
5400.0
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from mlmon_middleware.governance.audit import DURATION
from mlmon_middleware.governance.card import render_card
from mlmon_middleware.governance.commands import _time
from mlmon_middleware.governance.errors import GovernanceError
from mlmon_middleware.governance.report import render_compliance_report
from mlmon_middleware.governance.sections import iso_ts

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def add_commands(commands: Any) -> None:
    """Add ``card`` and ``report`` to the ``mlmon`` parser's subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", help="a folder holding predictions.sqlite, an SQLite file or a postgresql:// URL "
                                        "(default: MLMON_STORE_URL, else $MLMON_STORE_DIR/predictions.sqlite)")
    common.add_argument("--format", choices=("html", "md"), default="html", help="self-contained HTML or Markdown")
    common.add_argument("--out", help="the file to write (default: standard output)")
    card = commands.add_parser("card", help="model cards").add_subparsers(dest="action", required=True)
    render = card.add_parser("render", parents=[common], help="a version's model card (offline: from the database)")
    render.add_argument("model")
    render.add_argument("version", nargs="?", help="default: the deployed version")
    report = commands.add_parser("report", help="reports").add_subparsers(dest="action", required=True)
    compliance = report.add_parser("compliance", parents=[common], help="a model's compliance report over a period "
                                   "(recorded in the audit log as report_exported)")
    compliance.add_argument("model")
    compliance.add_argument("--since", required=True, help="ISO 8601 (2024-05-01) or a duration before now (30d)")
    compliance.add_argument("--until", help="as --since (exclusive; default: now)")
    compliance.add_argument("--actor", help="who exports it (default: the operating-system user)")
    compliance.add_argument("--window", default="1d", help="performance window (a duration: 1d, 6h; default 1d)")
    compliance.add_argument("--task", choices=("binary", "multiclass", "regression"),
                            help="default: inferred from the labels")
    compliance.add_argument("--positive", default="1", help="the positive class of a binary task (default 1)")
    compliance.add_argument("--threshold", type=float, default=0.5, help="a score at or above it is positive (0.5)")


def duration(text: str, option: str) -> float:
    match = DURATION.match(text.strip())
    if not match or float(match[1]) <= 0:
        raise GovernanceError(f"{option} {text!r}: expected a duration like 1d, 6h, 30m")
    return float(match[1]) * UNITS[match[2]]


def run(args: argparse.Namespace) -> int:
    """Run a ``card`` or ``report`` command; its exit status (refusals raise ``GovernanceError``)."""
    try:
        if args.command == "card":
            text = render_card(args.model, args.version, fmt=args.format, location=args.store)
        else:
            since = iso_ts(_time(args.since, "--since") or "")
            until = None if args.until is None else iso_ts(_time(args.until, "--until") or "")
            if args.out is not None:
                _writable(args.out)
            text = render_compliance_report(args.model, since, until, fmt=args.format, location=args.store,
                                            actor=args.actor, window=duration(args.window, "--window"), task=args.task,
                                            positive=args.positive, threshold=args.threshold)
    except GovernanceError:
        raise
    except ValueError as exc:  # an empty period, a window too short
        raise GovernanceError(str(exc)) from None
    if args.out is None:
        sys.stdout.write(text)
        return 0
    try:
        with open(args.out, "w", encoding="utf-8") as out:
            out.write(text)
    except OSError as exc:
        raise GovernanceError(f"--out {args.out!r} cannot be written: {exc.strerror or exc}") from None
    print(f"{args.out}: {args.command} written ({len(text.encode('utf-8'))} bytes)", file=sys.stderr)
    return 0


def _writable(path: str) -> None:
    """Refuse an ``--out`` that cannot be written before the export is recorded in the audit log
    (without creating it: a refused report leaves no file behind)."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(folder):
        raise GovernanceError(f"--out {path!r} cannot be written: not a file in an existing folder")
    if not os.access(path if os.path.exists(path) else folder, os.W_OK):
        raise GovernanceError(f"--out {path!r} cannot be written: permission denied")
