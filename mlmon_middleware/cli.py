"""The ``mlmon`` command.

    mlmon baseline build TRAIN.csv|TRAIN.parquet --model NAME --out baseline.json
                         [--target COL] [--prediction COL] [--categorical COL ...]
                         [--bins 10] [--sample-rows 200000] [--chunk-rows 100000] [--quiet]
    mlmon rules render [--config thresholds.yml] > mlmon-rules.yml
    mlmon dashboard grafana > dashboard.json
    mlmon registry register|submit|approve|reject|deploy|rollback|retire|policy|show|list ...
    mlmon audit verify|query|export ...
    mlmon card render MODEL [VERSION] [--format md|html] [--out FILE]
    mlmon report compliance MODEL --since T [--until T] [--format html|md] [--out FILE]

``baseline build`` streams the file into a baseline in bounded memory
(:mod:`mlmon_middleware.training_file`): every column but ``--target`` and ``--prediction`` is a
feature; numeric columns are numeric features unless named by ``--categorical``. ``registry`` and
``audit`` are the model registry and the audit log (:mod:`mlmon_middleware.governance.commands`);
``card`` and ``report`` the model card and the compliance report
(:mod:`mlmon_middleware.governance.document_commands`).

Exit status: 0 on success; 2 when an input cannot be used, with one line on standard error,
``mlmon: error: ...``, naming the file or option and what is wrong (a missing, empty,
header-only, unreadable or unparsable training file, a directory, an ``--out`` that cannot be
written, a config file that is not YAML or JSON, a missing library and the extra that installs
it, a registry step refused, a database that cannot be used); argparse's own usage errors also
exit with 2. ``audit verify`` exits 1 when the audit chain is broken.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from mlmon_middleware.baseline import BaselineError
from mlmon_middleware.config import ConfigError
from mlmon_middleware.governance import commands as governance
from mlmon_middleware.governance import document_commands as documents
from mlmon_middleware.governance.errors import GovernanceError
from mlmon_middleware.store_types import StoreError
from mlmon_middleware.training_file import MissingExtra, build_baseline, cannot_open


def _at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``minimum`` (checked before the file is read).

    >>> _at_least(2)("10")
    10
    >>> _at_least(2)("1")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: must be an integer >= 2, got '1'
    """
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlmon", description="mlmon-middleware tools (exit status 2: an input "
                                     "cannot be used; the error says which and why)")
    commands = parser.add_subparsers(dest="command", required=True)
    baseline = commands.add_parser("baseline", help="baselines").add_subparsers(dest="action", required=True)
    build = baseline.add_parser("build", help="profile a training file into a baseline")
    build.add_argument("path", help="a .csv or .parquet (.pq) file; any other name is read as CSV")
    build.add_argument("--model", required=True)
    build.add_argument("--out", required=True)
    build.add_argument("--labels", "--target", dest="target", metavar="COLUMN",
                       help="the labels' column: the model's performance on the file, and with --proba its estimator")
    build.add_argument("--prediction", metavar="COLUMN", help="the model's prediction column")
    build.add_argument("--proba", nargs="+", default=[], metavar="COLUMN",
                       help="the model's probability columns (a binary model's positive-class score, or one per class "
                            "named as the class): with --labels, the label-free performance estimator")
    build.add_argument("--positive", default="1", help="the positive class of a binary model (default 1)")
    build.add_argument("--threshold", type=float, default=0.5, help="a binary score at or above it predicts the positive")
    build.add_argument("--categorical", nargs="*", default=[])
    build.add_argument("--bins", type=_at_least(2), default=10)
    build.add_argument("--sample-rows", type=_at_least(1), default=200_000)
    build.add_argument("--chunk-rows", type=_at_least(1), default=100_000)
    build.add_argument("--quiet", action="store_true", help="no progress bar (there is none without tqdm)")
    rules = commands.add_parser("rules", help="Prometheus rules").add_subparsers(dest="action", required=True)
    render = rules.add_parser("render", help="print alerting and recording rules for mlmon's metrics")
    render.add_argument("--config", help="a YAML or JSON file of thresholds (see mlmon_middleware.rules.RuleConfig)")
    dashboard = commands.add_parser("dashboard", help="dashboards").add_subparsers(dest="action", required=True)
    dashboard.add_parser("grafana", help="print a Grafana dashboard (JSON) for mlmon's metrics")
    governance.add_commands(commands)
    documents.add_commands(commands)
    return parser


def _check_out(out: str) -> None:
    """Refuse an ``--out`` that cannot be written before the file is profiled, which may take long."""
    folder = os.path.dirname(os.path.abspath(out))
    if os.path.isdir(out):
        raise BaselineError(f"--out {out!r} is a directory: give the baseline file's name")
    if not os.path.isdir(folder):
        raise BaselineError(f"--out {out!r}: {folder!r} is not an existing folder")
    if not os.access(folder, os.W_OK):
        raise BaselineError(f"--out {out!r}: folder {folder!r} is not writable")


def _build(args: argparse.Namespace) -> None:
    _check_out(args.out)
    result = build_baseline(args.path, args.model, target=args.target, prediction=args.prediction,
                            categorical=args.categorical, bins=args.bins, sample_rows=args.sample_rows,
                            chunk_rows=args.chunk_rows, progress=not args.quiet, proba=args.proba,
                            positive=args.positive, threshold=args.threshold)
    try:
        result.save(args.out)
    except OSError as exc:
        raise BaselineError(f"--out {args.out!r} cannot be written: {exc.strerror or exc}") from None
    print(f"{args.out}: {result.row_count} rows, {len(result.features)} features "
          f"({', '.join(f'{n}:{k}' for n, k in zip(result.schema.names, result.schema.kinds))})")
    if result.estimator is None and args.target and args.prediction:
        print("mlmon: note: no label-free estimator: a regressor's needs labels that are not all whole numbers "
              "(whole numbers read as classes); a classifier's needs --proba", file=sys.stderr)
    if result.estimator is not None:
        reference = ", ".join(f"{m} {v:.3f}" for m, v in result.estimator.reference.items())
        method = "DLE" if result.estimator.task == "regression" else "CBPE"
        print(f"label-free estimator ({result.estimator.task}, {method}): reference {reference}")


def _read_config(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as exc:
        raise ConfigError(cannot_open("config file", path, exc)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path!r} is not text (not UTF-8 at byte {exc.start})") from None


def _rules(args: argparse.Namespace) -> None:
    from mlmon_middleware.rules import RuleConfig, render

    config = RuleConfig()
    if args.config:
        text = _read_config(args.config)
        try:
            config = RuleConfig.from_text(text)
        except ConfigError as exc:
            raise ConfigError(f"config file {args.config!r}: {exc}") from None
    print(render(config), end="")


def _dashboard(args: argparse.Namespace) -> None:
    import orjson

    from mlmon_middleware.dashboards import grafana_dashboard

    print(orjson.dumps(grafana_dashboard(), option=orjson.OPT_INDENT_2).decode())


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mlmon`` with ``argv`` (default: the command line); the exit status (see the module
    docstring). An unusable input is one line on standard error, never a traceback."""
    args = _parser().parse_args(argv)
    try:
        if args.command in ("registry", "audit"):
            return governance.run(args)
        if args.command in ("card", "report"):
            return documents.run(args)
        {"baseline": _build, "rules": _rules, "dashboard": _dashboard}[args.command](args)
    except (BaselineError, ConfigError, MissingExtra, GovernanceError, StoreError) as exc:
        print(f"mlmon: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
