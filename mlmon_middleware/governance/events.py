"""Monitoring's own audit events: alerts fired, changed and resolved, baselines set, labels ingested per hour.

The audit log (:mod:`~mlmon_middleware.governance.audit`) takes an exclusive database lock on
every append, so nothing here writes on the request path or in a check: an alert event is
queued by the alert state's callback (:meth:`MonitoringEvents.watch`), and
:meth:`MonitoringEvents.write` — called by the analyzer thread after each round of checks, and
once more when it stops — appends what is queued, the baselines the models use now, and the
labels counted per model and hour:

* ``alert_fired``, ``alert_severity_changed``, ``alert_resolved`` (actor ``mlmon``; details
  ``id``, ``alertname``, ``subject``, ``severity``, ``alert_time``): as the alert state produces
  them. Only scheduled checks move alerts, and of the workers of a server only the leader runs
  them, so each is written once per server; ``id`` is the firing episode's, which
  ``alert_acknowledged`` names too.
* ``baseline_set`` (details ``sha256`` of the baseline as ``Baseline.save`` writes it — its
  file's SHA-256 when loaded from a file mlmon wrote, as the registry's ``baseline_sha256`` —
  ``rows``, ``features``, ``schema_hash``, ``created_at``, ``warmup``, and ``previous_sha256``,
  null for a model's first): when a model's baseline differs from the last one recorded for
  that model version. The check and the append run in one exclusive transaction, so workers and
  replicas loading the same baseline write it once.
* ``labels_ingested`` (details ``hour``, ``count``, ``labelled``, ``relabelled``, ``unknown``,
  ``host``, ``pid``, ``partial``): per model, hour and process, the labels this process joined
  (its counters, read at each round: a label counts in the hour of the round that saw it, at
  most one check interval late), written once the hour is over (``partial`` when written at
  shutdown before that). Every worker counts its own labels: sum the events for a total.

After writing, it reads back what the log records of each model's alerts
(:mod:`~mlmon_middleware.governance.attention`: fired, acknowledged, acted on) into
``attention``, which health's "alerts are being ignored" reads.

A failing write is counted (``monitor_errors{stage="audit"}``) and tried again at the next
round; it never reaches a check or a request.

>>> import os, tempfile
>>> from mlmon_middleware.errors import ErrorLog
>>> events = MonitoringEvents(os.path.join(tempfile.mkdtemp(), "predictions.sqlite"), ErrorLog())
>>> events.queue({"alertname": "FeatureDrift", "subject": "x", "state": "firing", "severity": "critical",
...               "time": 0.0, "id": "ab" * 8, "model": "fraud", "version": "1"})
>>> events.write([])
>>> [(e.event_type, e.details["id"]) for e in events.log().query(model="fraud")]
[('alert_fired', 'abababababababab')]
>>> events.close()
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import hashlib
import json
import os
import socket
import threading
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from mlmon_middleware.alerts import Attention
from mlmon_middleware.errors import ErrorLog
from mlmon_middleware.governance.attention import read_attention
from mlmon_middleware.governance.audit import AuditLog
from mlmon_middleware.governance.errors import ChainBroken, GovernanceError
from mlmon_middleware.reports import AlertEvent

ACTOR = "mlmon"
EVENT_OF = {"firing": "alert_fired", "severity_changed": "alert_severity_changed", "resolved": "alert_resolved"}
MAX_PENDING = 10_000  # alert events queued while the database cannot be written; the oldest go first
HOUR = 3600


class Watched(Protocol):
    """What the events read of a monitored model (a :class:`~mlmon_middleware.model.ModelMonitor`)."""

    name: str
    version: str
    baseline: Any  # Baseline | None
    counters: Any  # Counters: ``labels()``, by outcome, since the process started
    checker: Any  # DriftChecker: ``alerts.callback``


class MonitoringEvents:
    """The audit events of one monitor's models, in the database at ``location`` (a monitor's
    ``store_location``; None: nothing is written). See the module docstring."""

    def __init__(self, location: str | None, errors: ErrorLog) -> None:
        self.location = location
        self.errors = errors
        self._log: AuditLog | None = None
        self._pending: collections.deque[AlertEvent] = collections.deque()
        self._baselines: dict[str, Any] = {}  # model -> the baseline object recorded (or found recorded)
        self._labels_seen: dict[str, collections.Counter[str]] = {}  # model -> its label counters at the last round
        self._hours: dict[tuple[str, str, int], collections.Counter[str]] = {}  # (model, version, hour) -> labels
        self._lock = threading.Lock()  # one write at a time (the analyzer's round, its final one)
        #: model -> what the audit log records of its alerts (read after each round; health reads it)
        self.attention: dict[str, Attention] = {}

    def watch(self, model: Watched) -> None:
        """Queue the model's alert events for :meth:`write`, before its own ``on_alert`` callback
        (called where the model is created: no I/O)."""
        if self.location is None:
            return
        alerts = model.checker.alerts
        user = alerts.callback

        def callback(event: AlertEvent) -> None:
            self.queue(event)
            if user is not None:
                user(event)

        alerts.callback = callback

    def queue(self, event: AlertEvent) -> None:
        """Queue one alert event (a check's callback: cheap, never raises)."""
        if len(self._pending) >= MAX_PENDING:
            self._pending.popleft()
            self.errors.report("audit", message="an alert event was dropped: the audit log could not be written")
        self._pending.append(event)

    def log(self) -> AuditLog:
        """The audit log, opened at first use (in the writing thread)."""
        if self._log is None:
            self._log = AuditLog(self.location)
        return self._log

    def write(self, models: Iterable[Watched], *, final: bool = False, now: float | None = None) -> None:
        """Append the queued alert events, the models' baselines not recorded yet and the label
        counts of the hours that are over (``final``: of every hour, at shutdown). Background
        threads only; failures are counted and what failed is tried again next time."""
        if self.location is None:
            return
        now = datetime.datetime.now(datetime.timezone.utc).timestamp() if now is None else now
        models = list(models)
        with self._lock:
            for step in (self._write_alerts, lambda: self._write_baselines(models),
                         lambda: self._write_labels(models, now, final), lambda: self._read_attention(models, now)):
                try:
                    step()
                except Exception as exc:  # an unreachable database, a full disk: counted, retried next round
                    self.errors.report("audit", exc, "monitoring events could not be appended to the audit log")

    def _write_alerts(self) -> None:
        while self._pending:
            event = self._pending[0]
            with self._unless_invalid():
                self.log().append(EVENT_OF[event["state"]], ACTOR, event.get("model"), event.get("version"), {
                    "id": event["id"], "alertname": event["alertname"], "subject": event["subject"],
                    "severity": event["severity"], "alert_time": event["time"]})
            self._pending.popleft()

    def _write_baselines(self, models: list[Watched]) -> None:
        for model in models:
            baseline = model.baseline
            if baseline is None or self._baselines.get(model.name) is baseline:
                continue
            digest = hashlib.sha256(baseline.to_json(indent=True)).hexdigest()
            log = self.log()
            with self._unless_invalid(), log.db.write() as tx:  # exclusive: one check-and-append across workers and replicas
                last = tx.one("SELECT details FROM audit_events WHERE event_type = 'baseline_set' AND model = ? "
                              "AND version = ? ORDER BY seq DESC LIMIT 1", (model.name, model.version))
                previous = None if last is None else json.loads(last[0]).get("sha256")
                if previous != digest:
                    summary = baseline.summary()
                    log.append_in(tx, "baseline_set", ACTOR, model.name, model.version, {
                        "sha256": digest, "rows": summary["rows"], "features": summary["features"],
                        "schema_hash": summary["schema_hash"], "created_at": summary["created_at"],
                        "warmup": summary["warmup"], "previous_sha256": previous})
            self._baselines[model.name] = baseline

    def _write_labels(self, models: list[Watched], now: float, final: bool) -> None:
        hour = int(now // HOUR) * HOUR
        for model in models:
            seen = collections.Counter(model.counters.labels())
            new = seen - self._labels_seen.get(model.name, collections.Counter())  # only positive counts
            self._labels_seen[model.name] = seen
            if new:
                self._hours.setdefault((model.name, model.version, hour), collections.Counter()).update(new)
        for key in sorted(self._hours):
            name, version, start = key
            if start >= hour and not final:
                continue
            counts = self._hours[key]
            with self._unless_invalid():
                self.log().append("labels_ingested", ACTOR, name, version, {
                    "hour": datetime.datetime.fromtimestamp(start, datetime.timezone.utc).isoformat(),
                    "count": sum(counts.values()), "labelled": counts["labelled"], "relabelled": counts["relabelled"],
                    "unknown": counts["unknown"], "host": socket.gethostname(), "pid": os.getpid(),
                    "partial": start + HOUR > now})
            del self._hours[key]

    def _read_attention(self, models: list[Watched], now: float) -> None:
        self.attention = read_attention(self.log(), [m.name for m in models], now)

    @contextlib.contextmanager
    def _unless_invalid(self) -> Iterator[None]:
        """An event the log refuses (a version name too long to record) is counted and dropped:
        trying it again would refuse it again, and hold up the events after it. A broken chain
        refuses every event until someone repairs it: those stay queued (counted at each round)
        and are written once the log takes appends again."""
        try:
            yield
        except ChainBroken:
            raise
        except GovernanceError as exc:
            self.errors.report("audit", exc, "a monitoring event the audit log refuses was dropped")

    def after_fork(self) -> None:
        """In a forked child: the parent's connection, queued events and label hours are the parent's."""
        self._log, self._lock = None, threading.Lock()
        self._pending.clear()
        self._hours.clear()

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
