"""Are a model's alerts acted on? What the audit log says, for health's "alerts are being ignored".

One process's memory knows the alerts it saw and the acknowledgements it took; the audit log
knows every worker's and replica's: ``alert_fired`` (written once per server, by the leader
that raised it), ``alert_acknowledged`` (by whichever process took the POST), and the changes
that act on a model: a new baseline (``baseline_set``), a new version registered, a deployment,
a rollback, a retirement. :func:`read_attention` reads, per model, the last
:data:`~mlmon_middleware.alerts.IGNORED_DAYS` days of those events into an
:class:`~mlmon_middleware.alerts.Attention`, which :meth:`Alerts.ack_issues
<mlmon_middleware.alerts.Alerts.ack_issues>` adds to its own. A change counts as acting on the
alerts only when it happened after an alert fired (by the alert's ``alert_time``: its event is
appended a round later), and a baseline the monitor built itself from the first rows
(``warmup``) is no one acting: a baseline set at the first start, or a warm-up one, acts on nothing.

The monitor's analyzer thread reads it after each round of checks (one indexed query per model),
so health answers from memory and alike in every worker.

>>> import os, tempfile
>>> from mlmon_middleware.governance.audit import AuditLog
>>> log = AuditLog(os.path.join(tempfile.mkdtemp(), "predictions.sqlite"), key=b"")
>>> _ = log.append("alert_fired", "mlmon", "fraud", "1", {"id": "a1", "alertname": "FeatureDrift",
...                                                          "alert_time": time.time() - 60})
>>> read_attention(log, ["fraud"], now=time.time())["fraud"]
Attention(fired=frozenset({'a1'}), acknowledged=frozenset(), acted_on=())
>>> _ = log.append("deployed", "ops", "fraud", "2", {})
>>> read_attention(log, ["fraud"], now=time.time())["fraud"].acted_on
('deployed',)
>>> log.close()
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterable

from mlmon_middleware.alerts import IGNORED_DAYS, Attention
from mlmon_middleware.governance.audit import AuditLog
from mlmon_middleware.governance.chain import AuditEvent

#: audit events that act on a model's alerts when they come after one fired
ACTIONS = ("baseline_set", "registered", "deployed", "rolled_back", "retired")


def read_attention(log: AuditLog, models: Iterable[str], now: float | None = None) -> dict[str, Attention]:
    """Per model, the ids of the alerts fired and acknowledged in the last ``IGNORED_DAYS``
    days before ``now`` (Unix seconds; default: now), and the actions taken after the first
    of them fired."""
    now = time.time() if now is None else now
    since = now - IGNORED_DAYS * 86400
    found = {}
    for model in models:
        events = log.query(model=model, since=since, event_type=("alert_fired", "alert_acknowledged", *ACTIONS))
        fired = {str(e.details.get("id") or f"seq {e.seq}"): _alert_time(e) for e in events
                 if e.event_type == "alert_fired"}
        acknowledged = {str(e.details.get("id") or f"seq {e.seq}") for e in events if e.event_type == "alert_acknowledged"}
        first = min(fired.values(), default=None)
        acted_on: list[str] = []
        for e in events:  # by when it happened, not where it landed in the log (alert_fired is appended a round late)
            if e.event_type in ACTIONS and first is not None and _time(e) > first and not e.details.get("warmup") \
                    and e.event_type not in acted_on:
                acted_on.append(e.event_type)
        found[model] = Attention(frozenset(fired), frozenset(acknowledged), tuple(acted_on))
    return found


def _time(event: AuditEvent) -> float:
    return datetime.datetime.fromisoformat(event.time).timestamp()


def _alert_time(event: AuditEvent) -> float:
    """When the alert fired (``details.alert_time``, Unix seconds), else when it was recorded."""
    when = event.details.get("alert_time")
    return float(when) if isinstance(when, (int, float)) and not isinstance(when, bool) else _time(event)


def find_fired(log: AuditLog, alert_id: str, models: Iterable[str], now: float | None = None) -> AuditEvent | None:
    """The latest ``alert_fired`` or ``alert_severity_changed`` event (its severity now) of the
    alert ``alert_id`` among ``models``' last ``IGNORED_DAYS`` days, or None: how a process
    that never saw an alert (another replica raised it) still takes its acknowledgement.

    >>> import os, tempfile
    >>> log = AuditLog(os.path.join(tempfile.mkdtemp(), "predictions.sqlite"), key=b"")
    >>> _ = log.append("alert_fired", "mlmon", "fraud", "1", {"id": "a1", "alertname": "FeatureDrift"})
    >>> find_fired(log, "a1", ["fraud"]).details["alertname"], find_fired(log, "a2", ["fraud"])
    ('FeatureDrift', None)
    >>> log.close()
    """
    since = (time.time() if now is None else now) - IGNORED_DAYS * 86400
    for model in models:
        for event in reversed(log.query(model=model, since=since, event_type=("alert_fired", "alert_severity_changed"))):
            if event.details.get("id") == alert_id:
                return event
    return None
