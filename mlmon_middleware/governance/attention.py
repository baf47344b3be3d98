"""Are a model's alerts acted on? What the audit log says, for health's "alerts are being ignored".

One process's memory knows the alerts it saw and the acknowledgements it took; the audit log
knows every worker's and replica's: ``alert_fired`` (written once per server, by the leader
that raised it), ``alert_acknowledged`` (by whichever process took the POST), and the changes
that act on a model: a new baseline (``baseline_set``), a new version registered, a deployment,
a rollback, a retirement. :func:`read_attention` reads, per model, the last
:data:`~mlmon_middleware.alerts.IGNORED_DAYS` days of those events into an
:class:`~mlmon_middleware.alerts.Attention`, which :meth:`Alerts.ack_issues
<mlmon_middleware.alerts.Alerts.ack_issues>` adds to its own. A change counts as acting on the
alerts only when it came after an alert fired (a baseline set at the first start acts on nothing).

The monitor's analyzer thread reads it after each round of checks (one indexed query per model),
so health answers from memory and alike in every worker.

>>> import os, tempfile
>>> from mlmon_middleware.governance.audit import AuditLog
>>> log = AuditLog(os.path.join(tempfile.mkdtemp(), "predictions.sqlite"), key=b"")
>>> _ = log.append("alert_fired", "mlmon", "fraud", "1", {"id": "a1", "alertname": "FeatureDrift"})
>>> read_attention(log, ["fraud"], now=time.time())["fraud"]
Attention(fired=frozenset({'a1'}), acknowledged=frozenset(), acted_on=())
>>> _ = log.append("deployed", "ops", "fraud", "2", {})
>>> read_attention(log, ["fraud"], now=time.time())["fraud"].acted_on
('deployed',)
>>> log.close()
"""

from __future__ import annotations

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
        fired: set[str] = set()
        acknowledged: set[str] = set()
        acted_on: list[str] = []
        for event in log.query(model=model, since=since, event_type=("alert_fired", "alert_acknowledged", *ACTIONS)):
            alert = str(event.details.get("id", ""))
            if event.event_type == "alert_fired":
                fired.add(alert or f"seq {event.seq}")
            elif event.event_type == "alert_acknowledged":
                acknowledged.add(alert or f"seq {event.seq}")
            elif fired and event.event_type not in acted_on:
                acted_on.append(event.event_type)
        found[model] = Attention(frozenset(fired), frozenset(acknowledged), tuple(acted_on))
    return found


def find_fired(log: AuditLog, alert_id: str, models: Iterable[str], now: float | None = None) -> AuditEvent | None:
    """The ``alert_fired`` event of the alert ``alert_id`` among ``models``' last
    ``IGNORED_DAYS`` days, or None: how a process that never saw an alert (another replica
    raised it) still takes its acknowledgement.

    >>> import os, tempfile
    >>> log = AuditLog(os.path.join(tempfile.mkdtemp(), "predictions.sqlite"), key=b"")
    >>> _ = log.append("alert_fired", "mlmon", "fraud", "1", {"id": "a1", "alertname": "FeatureDrift"})
    >>> find_fired(log, "a1", ["fraud"]).details["alertname"], find_fired(log, "a2", ["fraud"])
    ('FeatureDrift', None)
    >>> log.close()
    """
    since = (time.time() if now is None else now) - IGNORED_DAYS * 86400
    for model in models:
        for event in reversed(log.query(model=model, since=since, event_type="alert_fired")):
            if event.details.get("id") == alert_id:
                return event
    return None
