"""What the prediction log shows about a model over a period, read straight from its database:
the numbers a compliance report and an offline model card print, with where they come from.

:func:`summarize_log` reads the ``predictions`` table (columns ``ts``, ``version``,
``prediction``, ``segments``, ``label``, ``explanation``) of the database the registry lives in,
for one model (and optionally one version) in ``[since, until)``, oldest first, one window at a
time (memory holds one window's rows, however long the period):

* per window: predictions, labelled ones, explained ones, and the metrics of the labelled ones
  (:func:`~mlmon_middleware.metrics.compute_metrics`: the same as the monitor's performance windows);
* over the period, per segment feature and value: predictions and *selections* (a prediction
  whose first output is a number at or above ``threshold``, or equals the ``positive`` class),
  and the four-fifths rule on their selection rates (:func:`four_fifths`).

A row whose JSON cannot be read is counted in ``skipped`` and left out.

>>> rates = four_fifths("region", {"EU": (100, 60), "US": (100, 42), "APAC": (10, 6)})
>>> [(r.group, r.rate, round(r.ratio, 3), r.flagged) for r in rates]
[('EU', 0.6, 1.0, False), ('US', 0.42, 0.7, True), ('APAC', 0.6, 1.0, False)]
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import json
import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from mlmon_middleware.governance.db import GovernanceDB
from mlmon_middleware.metrics import as_label, binary_predictions, compute_metrics, infer_task

FOUR_FIFTHS = 0.8  # a group's selection rate below this share of the highest group's is flagged
MIN_GROUP = 30  # predictions a group needs before its ratio is more than noise
MAX_GROUPS = 50  # values counted per segment feature (the first seen); later ones pooled as OTHER
MAX_WINDOWS = 1000
OTHER = "__other__"
TABLE = "predictions"


@dataclasses.dataclass
class Window:
    """One window ``[start, end)`` (Unix seconds) of the log."""

    start: float
    end: float
    predictions: int = 0
    labelled: int = 0
    explained: int = 0
    task: str | None = None
    metrics: dict[str, float | None] | None = None  # of the labelled predictions; None without any


@dataclasses.dataclass(frozen=True)
class GroupRate:
    """One group's selection rate and its ratio to the highest group's (the four-fifths rule)."""

    feature: str
    group: str
    count: int
    selected: int
    rate: float
    ratio: float
    flagged: bool  # ratio below FOUR_FIFTHS
    few: bool  # fewer than MIN_GROUP predictions: the ratio is mostly noise


def four_fifths(feature: str, counts: Mapping[str, tuple[int, int]]) -> list[GroupRate]:
    """Per group ``(predictions, selected)``: its selection rate, the ratio of that rate to the
    highest group's, flagged when below 0.8 (the EEOC's four-fifths rule of thumb for adverse
    impact). Groups without predictions are left out; with no selection at all every ratio is 1."""
    rates = {group: (n, k, k / n) for group, (n, k) in counts.items() if n > 0}
    highest = max((rate for _, _, rate in rates.values()), default=0.0)
    out = []
    for group, (n, k, rate) in rates.items():
        ratio = rate / highest if highest > 0 else 1.0
        out.append(GroupRate(feature, group, n, k, rate, ratio, ratio < FOUR_FIFTHS, n < MIN_GROUP))
    return out


@dataclasses.dataclass
class LogSummary:
    """What :func:`summarize_log` found; ``available`` is False when the database has no
    prediction log (the monitor never wrote to it)."""

    model: str
    version: str | None
    since: float
    until: float
    window_seconds: float
    available: bool = True
    predictions: int = 0
    labelled: int = 0
    explained: int = 0
    skipped: int = 0
    first: float | None = None
    last: float | None = None
    versions: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    windows: list[Window] = dataclasses.field(default_factory=list)
    # segment feature -> group -> [predictions, selected]
    selections: dict[str, dict[str, list[int]]] = dataclasses.field(default_factory=dict)
    task: str | None = None  # given, else inferred from the period's labels (None without labels)
    positive: Any = 1
    threshold: float = 0.5

    def fairness(self) -> dict[str, list[GroupRate]]:
        """The four-fifths rule per segment feature over the period (binary decisions only: empty
        when the task is multiclass or regression)."""
        if self.task not in (None, "binary"):
            return {}
        return {feature: four_fifths(feature, {g: (n, k) for g, (n, k) in groups.items()})
                for feature, groups in sorted(self.selections.items())}


def summarize_log(db: GovernanceDB, model: str, since: float, until: float, *, window: float = 86400.0,
                  version: str | None = None, task: str | None = None, positive: Any = 1,
                  threshold: float = 0.5) -> LogSummary:
    """Read ``model``'s logged predictions made in ``[since, until)`` (see the module docstring).
    ``ValueError`` when the period is empty or would make more than :data:`MAX_WINDOWS` windows."""
    if not until > since:
        raise ValueError(f"the period is empty: until ({_iso(until)}) must be after since ({_iso(since)})")
    if not window > 0 or math.ceil((until - since) / window) > MAX_WINDOWS:
        raise ValueError(f"a window of {window:g} s cuts the period into more than {MAX_WINDOWS} windows: choose a longer one")
    summary = LogSummary(model, version, since, until, window, task=task, positive=positive, threshold=threshold)
    with db.read() as tx:
        exists = tx.one("SELECT to_regclass(?) IS NOT NULL" if db.postgres else
                        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,))
        if not (exists and exists[0]):
            summary.available = False
            return summary
        sql = (f"SELECT ts, version, prediction, segments, label, CASE WHEN explanation IS NULL THEN 0 ELSE 1 END "
               f"FROM {TABLE} WHERE model = ? AND ts >= ? AND ts < ?")
        params: list[Any] = [model, since, until]
        if version is not None:
            sql += " AND version = ?"
            params.append(version)
        _read(summary, tx.rows(sql + " ORDER BY ts", params))
    if summary.task is None:
        tasks = {w.task for w in summary.windows if w.task}
        summary.task = tasks.pop() if len(tasks) == 1 else ("multiclass" if "multiclass" in tasks else None)
    return summary


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).isoformat(timespec="seconds")


def _read(summary: LogSummary, rows: Iterator[tuple[Any, ...]]) -> None:
    start = summary.since
    window = Window(start, min(start + summary.window_seconds, summary.until))
    buffered: list[tuple[Any, dict[str, Any], Any]] = []  # (prediction, segments, label or None)
    for ts, version, prediction, segments, label, explained in rows:
        while ts >= window.end:
            _close(summary, window, buffered)
            window, buffered = Window(window.end, min(window.end + summary.window_seconds, summary.until)), []
        try:
            decoded = (json.loads(prediction), json.loads(segments), None if label is None else json.loads(label))
        except (ValueError, TypeError):
            summary.skipped += 1
            continue
        if not isinstance(decoded[1], dict):
            summary.skipped += 1
            continue
        buffered.append(decoded)
        window.predictions += 1
        window.labelled += decoded[2] is not None
        window.explained += bool(explained)
        summary.versions[str(version)] += 1
        summary.first = ts if summary.first is None else summary.first
        summary.last = ts
    _close(summary, window, buffered)
    while window.end < summary.until:  # the windows after the last row, empty
        window = Window(window.end, min(window.end + summary.window_seconds, summary.until))
        summary.windows.append(window)


def _close(summary: LogSummary, window: Window, rows: list[tuple[Any, dict[str, Any], Any]]) -> None:
    """Count ``window``'s rows into the summary: its metrics, and the selections per group."""
    summary.windows.append(window)
    summary.predictions += window.predictions
    summary.labelled += window.labelled
    summary.explained += window.explained
    if not rows:
        return
    labelled = [(p, label) for p, _, label in rows if label is not None]
    if labelled:
        labels = [label for _, label in labelled]
        window.task = summary.task or infer_task(labels)
        try:
            window.metrics = compute_metrics(window.task, [p for p, _ in labelled], labels, positive=summary.positive,
                                             threshold=summary.threshold)
        except (ValueError, TypeError):  # predictions or labels that do not fit the task: counted, not computed
            window.metrics = None
    if (summary.task or window.task or "binary") != "binary":
        return
    positive = as_label(summary.positive)
    _, decisions = binary_predictions([p for p, _, _ in rows], positive, np.array([positive], dtype=object),
                                      summary.threshold)
    for (_, segments, _), decision in zip(rows, decisions):
        for feature, value in segments.items():
            groups = summary.selections.setdefault(str(feature), {})
            group = str(value)
            if group not in groups and len(groups) >= MAX_GROUPS:
                group = OTHER
            counts = groups.setdefault(group, [0, 0])
            counts[0] += 1
            counts[1] += decision == positive
