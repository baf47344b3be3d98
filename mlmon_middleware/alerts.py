"""Alert state: severities, sustained conditions, de-duplication, events.

Each check reports a severity per condition (a feature's drift, the dataset's, a prediction
output's). A condition *fires* only after ``fire_after`` consecutive checks at warning or worse,
and *resolves* after ``resolve_after`` consecutive clean ones, so one noisy window does not page
anyone. Events are produced only on changes of state (firing, severity changed, resolved): they
go to the log as structured records, to an optional callback and to ``recent`` (the last
``RECENT_EVENTS``, for the dashboard); ``active()`` feeds ``mlmon_alert_active``.

>>> alerts = Alerts(fire_after=2, resolve_after=1)
>>> alerts.update({("FeatureDrift", "income"): "warning"})
[]
>>> [e["state"] for e in alerts.update({("FeatureDrift", "income"): "critical"})]
['firing']
>>> alerts.active()
[('FeatureDrift', 'income', 'critical')]
>>> [e["state"] for e in alerts.update({("FeatureDrift", "income"): "none"})]
['resolved']
>>> [e["state"] for e in alerts.recent]
['firing', 'resolved']
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

from mlmon_middleware.drift.policy import RANK
from mlmon_middleware.reports import AlertEvent, AlertSummary, FiringAlert, Severity

#: one check's verdicts: ``(alertname, subject) -> severity``
Conditions = dict[tuple[str, str], Severity]

logger = logging.getLogger("mlmon_middleware.alerts")

RECENT_EVENTS = 200  # events kept per model for /mlmon/alerts and the dashboard


@dataclasses.dataclass(frozen=True)
class AlertKind:
    """One kind of alert the policy raises: its name in mlmon (events, ``mlmon_alert_active``,
    the page, webhooks), its Prometheus rule (``mlmon rules render``), what its subject is, and
    whether several replicas judge it from the fleet's series rather than each its own window."""

    name: str
    rule: str
    subject: str
    summary: str
    fleet: bool = False


#: every alert the policy raises, defined once: the checks raise them, the rules mirror them
KINDS: tuple[AlertKind, ...] = (
    AlertKind("FeatureDrift", "MLModelFeatureDrift", "feature", "feature {subject} drifted", fleet=True),
    AlertKind("DatasetDrift", "MLModelDatasetDrift", "", "most features drifted", fleet=True),
    AlertKind("PredictionDrift", "MLModelPredictionDrift", "output", "prediction {subject} drifted"),
    AlertKind("PerformanceDegradation", "MLModelPerformanceDegraded", "metric@window", "{subject} dropped against its reference"),
    AlertKind("ConceptDrift", "MLModelConceptDrift", "stream", "the error stream changed (concept drift)"),
    AlertKind("DisparateImpact", "MLModelDisparateImpact", "attribute@window", "{subject} fails the four-fifths rule"),
    AlertKind("AttributionDrift", "MLModelAttributionDrift", "feature", "feature {subject}'s share of the explanations moved"),
)


@dataclasses.dataclass
class _State:
    severity: Severity = "none"  # the active severity; "none" when not firing
    bad_streak: int = 0
    clean_streak: int = 0
    since: float = 0.0


class Alerts:
    """Sustained, de-duplicated alert states keyed by ``(alertname, subject)``."""

    def __init__(self, fire_after: int = 2, resolve_after: int = 2,
                 callback: Callable[[AlertEvent], None] | None = None, model: str | None = None,
                 version: str | None = None) -> None:
        if fire_after < 1 or resolve_after < 1:
            raise ValueError("fire_after and resolve_after must be >= 1")
        self.fire_after = fire_after
        self.resolve_after = resolve_after
        self.callback = callback
        self.model = model  # added to every event, as are the version
        self.version = version
        self._lock = threading.Lock()
        self._states: dict[tuple[str, str], _State] = {}
        self.errors = 0
        self.events: collections.Counter[tuple[str, str]] = collections.Counter()  # (alertname, state) -> events
        self.recent: collections.deque[AlertEvent] = collections.deque(maxlen=RECENT_EVENTS)  # oldest first

    def after_fork(self) -> None:
        """In a forked child: a fresh lock (the parent's may have been held by one of its threads)."""
        self._lock = threading.Lock()

    def update(self, conditions: Mapping[tuple[str, str], Severity]) -> list[AlertEvent]:
        """Feed one check's severities; return the events it caused. Conditions not mentioned
        count as clean."""
        events: list[AlertEvent] = []
        now = time.time()
        with self._lock:
            for key in set(self._states) | set(conditions):
                severity: Severity = conditions.get(key, "none")
                state = self._states.setdefault(key, _State())
                if RANK[severity] >= RANK["warning"]:
                    state.bad_streak += 1
                    state.clean_streak = 0
                    if state.bad_streak >= self.fire_after and severity != state.severity:
                        change: Literal["firing", "severity_changed"] = (
                            "firing" if state.severity == "none" else "severity_changed")
                        state.severity, state.since = severity, now
                        events.append(self._event(key, change, severity, now))
                else:
                    state.clean_streak += 1
                    state.bad_streak = 0
                    if state.severity != "none" and state.clean_streak >= self.resolve_after:
                        events.append(self._event(key, "resolved", state.severity, now))
                        state.severity = "none"
            self.recent.extend(events)
        for event in events:
            self.events[(event["alertname"], event["state"])] += 1
            logger.warning("mlmon alert %s %s: %s (%s)", event["alertname"], event["subject"], event["state"],
                           event["severity"], extra={"mlmon_alert": event})
            if self.callback is not None:
                try:
                    self.callback(event)
                except Exception:  # a broken callback must not stop the checks
                    self.errors += 1
                    logger.exception("mlmon: alert callback failed")
        return events

    def _event(self, key: tuple[str, str], change: Literal["firing", "severity_changed", "resolved"], severity: Severity,
               now: float) -> AlertEvent:
        event: AlertEvent = {"alertname": key[0], "subject": key[1], "state": change, "severity": severity, "time": now}
        if self.model is not None:
            event["model"] = self.model
        if self.version is not None:
            event["version"] = self.version
        return event

    def adopt(self, summary: Mapping[str, Any]) -> None:
        """Take another worker's alert states (its :meth:`summary`): a worker that does not
        lead shows the leader's alerts, and when it takes the lead it goes on from them, so a
        firing alert is not announced twice. Events are not replayed (no callback)."""
        with self._lock:
            self._states = {(a["alertname"], a["subject"]): _State(a["severity"], self.fire_after, 0, a["since"])
                            for a in summary.get("active", ())}
            self.recent.clear()
            self.recent.extend(list(summary.get("recent", ()))[::-1])

    def active(self) -> list[tuple[str, str, Severity]]:
        """``(alertname, subject, severity)`` of every firing alert."""
        with self._lock:
            return sorted((k[0], k[1], s.severity) for k, s in self._states.items() if s.severity != "none")

    def summary(self) -> AlertSummary:
        """Firing alerts (with the time their severity was reached) and recent events, newest first."""
        with self._lock:
            firing: list[FiringAlert] = [{"alertname": k[0], "subject": k[1], "severity": s.severity, "since": s.since}
                                         for k, s in self._states.items() if s.severity != "none"]
            active = sorted(firing,
                            key=lambda a: (-RANK[a["severity"]], a["alertname"], a["subject"]))
            recent = list(self.recent)[::-1]
        return {"active": active, "recent": recent}
