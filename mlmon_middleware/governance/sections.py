"""Sections that a model card and a compliance report share: performance per window, fairness
with the four-fifths rule and explanation coverage from the prediction log
(:class:`~mlmon_middleware.governance.evidence.LogSummary`), audit events as a table, and the
formatting of times, ages and numbers, so that both documents say the same thing the same way.

>>> when(0.0), age(90_000.0), num(0.123456), num(None), num(3.0)
('1970-01-01 00:00:00 UTC', '1.0 days', '0.1235', 'n/a', '3')
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Sequence

from mlmon_middleware.governance.chain import AuditEvent
from mlmon_middleware.governance.document import Block, Bullets, Notice, Para, Section, Table
from mlmon_middleware.governance.evidence import FOUR_FIFTHS, MIN_GROUP, LogSummary

METRIC_ORDER = ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "mae", "rmse", "mape", "r2")
MAX_DETAILS = 300  # characters of an audit event's details shown in a table


def when(ts: float | None) -> str:
    """Unix seconds as a UTC time to the second ("never" for None)."""
    if ts is None:
        return "never"
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso_ts(text: str) -> float:
    """Unix seconds of an ISO 8601 time as the registry and the audit log write them."""
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def age(seconds: float) -> str:
    """A duration in the unit that reads best."""
    if seconds < 3600:
        return f"{seconds / 60:.0f} minutes"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds / 86400:.1f} days"


def num(value: float | int | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def pct(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else "n/a"


def metric_names(names: Iterable[str]) -> list[str]:
    """Metric names in reading order (accuracy first; ``count`` left out: tables show it as rows).

    >>> metric_names(["roc_auc", "count", "zeta", "accuracy"])
    ['accuracy', 'roc_auc', 'zeta']
    """
    return sorted(set(names) - {"count"}, key=lambda m: (METRIC_ORDER.index(m) if m in METRIC_ORDER else len(METRIC_ORDER), m))


def log_source(summary: LogSummary, where: str) -> str:
    """Where a log section's numbers come from: table, columns, filter and counts."""
    version = "any version" if summary.version is None else f"version = {summary.version!r}"
    return (f"table predictions of {where}; model = {summary.model!r}, {version}, ts in [{when(summary.since)}, "
            f"{when(summary.until)}): {summary.predictions} predictions, {summary.labelled} labelled (column label), "
            f"{summary.explained} explained (column explanation)" +
            (f"; {summary.skipped} rows whose JSON could not be read left out" if summary.skipped else ""))


def performance_section(summary: LogSummary, where: str, title: str = "Performance per window") -> Section:
    """Each window's predictions, labels, explanations and the metrics of its labelled predictions."""
    if not summary.available:
        return Section(title, f"table predictions of {where}", [Notice("No prediction log in this database: "
                                                                       "the monitor never wrote to it.")])
    names = metric_names(m for w in summary.windows for m in (w.metrics or {}))
    rows = [[when(w.start), when(w.end), str(w.predictions), str(w.labelled), *(num((w.metrics or {}).get(m)) for m in names)]
            for w in summary.windows]
    blocks: list[Block] = [Para(f"Windows of {age(summary.window_seconds)}; metrics of the labelled predictions of each window "
                   f"(task {summary.task or 'not known: no labels'}), computed as the monitor's performance windows "
                   f"(positive class {summary.positive!r}, threshold {summary.threshold:g})."),
              Table(["from", "until", "predictions", "labelled", *names], rows, empty="no windows")]
    if not summary.labelled:
        blocks.append(Notice("No labelled predictions in the period: performance cannot be measured."))
    return Section(title, log_source(summary, where), blocks)


def fairness_section(summary: LogSummary, where: str) -> Section:
    """Selection rate per segment value and the four-fifths rule, over the whole period."""
    title = "Fairness: the four-fifths rule"
    if not summary.available:
        return Section(title, f"table predictions of {where}", [Notice("No prediction log in this database.")])
    source = (log_source(summary, where) + "; groups from column segments (JSON: segment feature -> value), "
              "selections from column prediction")
    rule = (f"A prediction is a selection when its first output is a number at or above {summary.threshold:g} or equals "
            f"the positive class {summary.positive!r}. Each group's selection rate is divided by the highest group's; "
            f"a ratio below {FOUR_FIFTHS} is flagged (adverse impact by the four-fifths rule). Groups with fewer than "
            f"{MIN_GROUP} predictions are marked: their ratio is mostly noise.")
    if summary.task not in (None, "binary"):
        return Section(title, source, [Notice(f"The four-fifths rule applies to binary decisions; the task is {summary.task}.")])
    fairness = summary.fairness()
    rows, flagged = [], []
    for feature, rates in fairness.items():
        for r in rates:
            rows.append([feature, r.group, str(r.count), str(r.selected), f"{r.rate:.3f}", f"{r.ratio:.3f}",
                         f"below {FOUR_FIFTHS}" if r.flagged else "ok", f"fewer than {MIN_GROUP}" if r.few else ""])
            if r.flagged:
                flagged.append(f"{feature}={r.group} (ratio {r.ratio:.3f})")
    blocks: list[Block] = [Para(rule), Table(["segment", "group", "predictions", "selected", "selection rate", "ratio to highest",
                                 "four-fifths", "note"], rows, empty="no segments logged (the model declares none)")]
    if flagged:
        blocks.append(Notice(f"Below four-fifths: {', '.join(flagged)}."))
    return Section(title, source, blocks)


def explanations_section(summary: LogSummary, where: str) -> Section:
    title = "Explanation coverage"
    if not summary.available:
        return Section(title, f"table predictions of {where}", [Notice("No prediction log in this database.")])
    return Section(title, log_source(summary, where), [
        Para(f"{summary.explained} of {summary.predictions} logged predictions ({pct(summary.explained, summary.predictions)}) "
             "carry an explanation (the response's, kept in the log's explanation column).")])


def events_table(events: Sequence[AuditEvent], empty: str = "no events") -> Table:
    """Audit events as a table: seq, time, type, actor, version, details (JSON, shortened)."""
    rows = []
    for e in events:
        details = json.dumps(dict(e.details), ensure_ascii=False, sort_keys=True)
        rows.append([str(e.seq), e.time, e.event_type, e.actor, e.version or "",
                     details if len(details) <= MAX_DETAILS else details[:MAX_DETAILS] + "…"])
    return Table(["seq", "time", "event", "actor", "version", "details"], rows, empty=empty)


def list_section(title: str, items: Sequence[str], source: str) -> Section:
    return Section(title, source, [Bullets(items, empty="not stated in the registry")])
