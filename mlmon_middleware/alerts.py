"""Alert state: severities, sustained conditions, de-duplication, events.

Each check reports a severity per condition (a feature's drift, the dataset's, a prediction
output's). A condition *fires* only after ``fire_after`` consecutive checks at warning or worse,
and *resolves* after ``resolve_after`` consecutive clean ones, so one noisy window does not page
anyone. Events are produced only on changes of state (firing, severity changed, resolved): they
go to the log as structured records, to an optional callback and to ``recent`` (the last
``RECENT_EVENTS``, for the dashboard); ``active()`` feeds ``mlmon_alert_active``.

Each firing episode has an ``id`` (from the model, the alert, its subject and the time it fired:
the same in every worker that adopts it), carried by its events until it resolves. Someone
acknowledges it by that id (:meth:`Alerts.acknowledge`: who, when, a note); :meth:`ack_issues`
says when alerts are being ignored (fired in the last 30 days, none acknowledged or acted on:
with a database, the audit log's record counts too) or a critical one has fired unacknowledged
for longer than the policy age.

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
>>> alerts.ack_issues(now=time.time(), max_age=3600.0)
['1 alert(s) fired in the last 30 days and none was acknowledged or acted on: alerts are being ignored']
>>> alerts.acknowledge(alerts.recent[0]["id"], "ana", "retraining")["actor"]
'ana'
>>> alerts.ack_issues(now=time.time(), max_age=3600.0)
[]
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

from mlmon_middleware.drift.policy import RANK
from mlmon_middleware.reports import Acknowledgement, AlertEvent, AlertSummary, FiringAlert, Severity

#: one check's verdicts: ``(alertname, subject) -> severity``
Conditions = dict[tuple[str, str], Severity]

logger = logging.getLogger("mlmon_middleware.alerts")

RECENT_EVENTS = 200  # events kept per model for /mlmon/alerts and the dashboard
IGNORED_DAYS = 30  # alerts fired this many days back and none acknowledged: "alerts are being ignored"
MAX_ACKS = 1000  # acknowledgements kept per model (the newest; older than IGNORED_DAYS are dropped)


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
    AlertKind("MultivariateDrift", "MLModelMultivariateDrift", "method",
              "the features' joint distribution moved ({subject}: their relations no longer hold)"),
    AlertKind("EstimatedPerformanceDrop", "MLModelEstimatedPerformanceDrop", "metric",
              "{subject} is estimated, before any label, to have worsened against its reference"),
    AlertKind("DriftForecast", "MLModelDriftForecast", "feature",
              "feature {subject}'s drift is trending toward its warning level within the forecast horizon"),
    AlertKind("ModelNotApproved", "MLModelNotApproved", "version",
              "version {subject} is served but the registry has not approved and deployed it"),
)


@dataclasses.dataclass(frozen=True)
class Attention:
    """What the audit log records of one model's alerts over the last :data:`IGNORED_DAYS` days
    (:mod:`~mlmon_middleware.governance.attention` reads it): the ids of the alerts fired and of
    those acknowledged, and the changes that acted on the model after an alert fired."""

    fired: frozenset[str] = frozenset()
    acknowledged: frozenset[str] = frozenset()
    acted_on: tuple[str, ...] = ()  # e.g. ("baseline_set", "deployed")


@dataclasses.dataclass
class _State:
    severity: Severity = "none"  # the active severity; "none" when not firing
    bad_streak: int = 0
    clean_streak: int = 0
    since: float = 0.0
    id: str = ""  # of the firing episode, from its "firing" event until it resolves


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
        self.acks: dict[str, Acknowledgement] = {}  # alert id -> its (latest) acknowledgement

    def after_fork(self) -> None:
        """In a forked child: a fresh lock (the parent's may have been held by one of its threads)."""
        self._lock = threading.Lock()

    def update(self, conditions: Mapping[tuple[str, str], Severity], notes: Mapping[str, str] | None = None,
               ) -> list[AlertEvent]:
        """Feed one check's severities; return the events it caused. Conditions not mentioned
        count as clean. ``notes``: per alert name, words its firing events carry as ``cause``."""
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
                        if change == "firing":
                            state.id = alert_id(self.model, key, now)
                        state.severity, state.since = severity, now
                        events.append(self._event(key, change, severity, now))
                        if notes and notes.get(key[0]):
                            events[-1]["cause"] = notes[key[0]]
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
        event: AlertEvent = {"alertname": key[0], "subject": key[1], "state": change, "severity": severity, "time": now,
                             "id": self._states[key].id}
        if self.model is not None:
            event["model"] = self.model
        if self.version is not None:
            event["version"] = self.version
        return event

    def adopt(self, summary: Mapping[str, Any]) -> None:
        """Take another worker's alert states (its :meth:`summary`): a worker that does not
        lead shows the leader's alerts, and when it takes the lead it goes on from them, so a
        firing alert is not announced twice. Events are not replayed (no callback). The leader's
        acknowledgements are added to this worker's own (an acknowledgement this worker took is
        kept)."""
        with self._lock:
            self._states = {(a["alertname"], a["subject"]): _State(a["severity"], self.fire_after, 0, a["since"],
                                                                   a.get("id", ""))
                            for a in summary.get("active", ())}
            self.recent.clear()
            self.recent.extend(list(summary.get("recent", ()))[::-1])
            for ack in summary.get("acknowledged", {}).values():
                if ack["time"] > self.acks.get(ack["id"], {"time": 0.0})["time"]:
                    self.acks[ack["id"]] = ack

    def acknowledge(self, alert_id: str, actor: str, note: str = "", now: float | None = None) -> Acknowledgement | None:
        """Record that ``actor`` acknowledged the alert ``alert_id`` (a firing one, or one among the
        recent events); a second acknowledgement replaces the first. None when no alert has that id."""
        now = time.time() if now is None else now
        with self._lock:
            found: tuple[str, str, Severity] | None = next(
                ((k[0], k[1], s.severity) for k, s in self._states.items() if s.severity != "none" and s.id == alert_id),
                None)
            if found is None:
                found = next(((e["alertname"], e["subject"], e["severity"]) for e in reversed(self.recent)
                              if e.get("id") == alert_id), None)
            if found is None:
                return None
            ack: Acknowledgement = {"id": alert_id, "alertname": found[0], "subject": found[1], "severity": found[2],
                                    "actor": actor, "note": note, "time": now}
            self.acks.pop(alert_id, None)
            self.acks[alert_id] = ack
            cutoff = now - IGNORED_DAYS * 86400
            kept = [a for a in self.acks.values() if a["time"] >= cutoff][-MAX_ACKS:]
            self.acks = {a["id"]: a for a in kept}
        return ack

    def ack_issues(self, now: float, max_age: float, recorded: Attention | None = None) -> list[str]:
        """Health's words on acknowledgement: alerts fired in the last 30 days and none
        acknowledged or acted on; critical alerts firing unacknowledged for longer than
        ``max_age`` seconds. ``recorded``: what the audit log holds of the model's alerts (every
        worker's and replica's acknowledgements, and changes that act on the model), added to
        what this process saw."""
        cutoff = now - IGNORED_DAYS * 86400
        recorded = recorded or Attention()
        with self._lock:
            fired = {e.get("id") or f"{e['alertname']}\x1f{e['subject']}\x1f{e['time']}" for e in self.recent
                     if e["state"] == "firing" and e["time"] >= cutoff} | recorded.fired
            acked = {a["id"] for a in self.acks.values() if a["time"] >= cutoff} | recorded.acknowledged
            overdue = sorted(f"{k[0]} {k[1]}".strip() for k, s in self._states.items()
                             if s.severity == "critical" and s.id not in self.acks and s.id not in recorded.acknowledged
                             and now - s.since > max_age)
        issues = []
        if fired and not acked and not recorded.acted_on:
            issues.append(f"{len(fired)} alert(s) fired in the last {IGNORED_DAYS} days and none was acknowledged or "
                          "acted on: alerts are being ignored")
        if overdue:
            issues.append(f"critical alert(s) unacknowledged for over {_duration(max_age)}: {', '.join(overdue)}")
        return issues

    def active(self) -> list[tuple[str, str, Severity]]:
        """``(alertname, subject, severity)`` of every firing alert."""
        with self._lock:
            return sorted((k[0], k[1], s.severity) for k, s in self._states.items() if s.severity != "none")

    def summary(self) -> AlertSummary:
        """Firing alerts (with the time their severity was reached, their id and acknowledgement),
        recent events, newest first, and the acknowledgements by alert id."""
        with self._lock:
            firing: list[FiringAlert] = [{"alertname": k[0], "subject": k[1], "severity": s.severity, "since": s.since,
                                          "id": s.id, "acknowledged": self.acks.get(s.id)}
                                         for k, s in self._states.items() if s.severity != "none"]
            active = sorted(firing,
                            key=lambda a: (-RANK[a["severity"]], a["alertname"], a["subject"]))
            recent = list(self.recent)[::-1]
            acks = dict(self.acks)
        return {"active": active, "recent": recent, "acknowledged": acks}


def _duration(seconds: float) -> str:
    """``seconds`` in the largest unit it fills: ``24 h``, ``30 min``, ``0.05 s``.

    >>> _duration(86400.0), _duration(1800.0), _duration(0.05)
    ('24 h', '30 min', '0.05 s')
    """
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def alert_id(model: str | None, key: tuple[str, str], fired_at: float) -> str:
    """A firing episode's id: 16 hex digits of the SHA-256 of the model, alert, subject and the
    time it fired, so that workers adopting the leader's alerts name it alike.

    >>> alert_id("fraud", ("FeatureDrift", "income"), 1700000000.0)
    '14e4233098539d6d'
    """
    text = f"{model or ''}\x1f{key[0]}\x1f{key[1]}\x1f{fired_at!r}"
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
