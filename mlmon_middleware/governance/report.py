"""The compliance report: one document for an auditor about one model over a period
(``mlmon report compliance MODEL --since … [--until …] --format html|md``).

Sections, each saying where its numbers come from (table, columns, time range, counts):

* **Summary**: the period, what was found, and what needs attention.
* **Registry history**: every version (state, who registered, approved with which reason,
  deployed), and the registry's audit events of the period (who, when, reason).
* **Audit chain**: :meth:`AuditLog.verify` over the *whole* chain, its result as ``mlmon audit
  verify`` prints it (the first broken link, if any) and the head to keep as an anchor.
* **Monitoring coverage**: predictions logged per version, label and explanation coverage,
  windows without any logged prediction, ``first_served`` events.
* **Drift**: the drift alerts of the period (audit events: the statistics themselves are
  computed in the serving process and not kept).
* **Performance per window** and **fairness with the four-fifths rule**, from the prediction
  log (:mod:`~mlmon_middleware.governance.evidence`).
* **Alerts and acknowledgements**: fired, resolved and acknowledged alert events, and fired
  alerts no acknowledgement names.
* **Explanation coverage**.

Exporting the report is itself an audit event, ``report_exported``, whose details hold the
period, the format, the chain's head and the SHA-256 of the document written (so a copy can be
matched to the log later). When the log refuses the append (its end cut off or its head moved:
:class:`~mlmon_middleware.governance.errors.ChainBroken`), the report is still produced — that is
when an auditor needs it — with a notice in its summary and its audit-chain section that its
export is not recorded, and a warning is logged.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from mlmon_middleware.governance.chain import AuditEvent, VerifyResult
from mlmon_middleware.governance.document import FORMATS, Block, Bullets, Document, Notice, Para, Section, Table, render
from mlmon_middleware.governance.errors import ChainBroken
from mlmon_middleware.governance.evidence import LogSummary, summarize_log
from mlmon_middleware.governance.registry import ModelRegistry, _actor
from mlmon_middleware.governance.sections import (
    events_table,
    explanations_section,
    fairness_section,
    pct,
    performance_section,
    when,
)

REGISTRY_EVENTS = ("registered", "submitted", "approved", "rejected", "deployed", "rolled_back", "retired",
                   "policy_changed", "baseline_set")
ALERT_EVENTS = ("alert_fired", "alert_resolved", "alert_acknowledged")

logger = logging.getLogger("mlmon_middleware.governance")


def render_compliance_report(model: str, since: float, until: float | None = None, *, fmt: str = "html",
                             registry: ModelRegistry | None = None, location: str | None = None,
                             actor: str | None = None, window: float = 86400.0, task: str | None = None,
                             positive: Any = 1, threshold: float = 0.5) -> str:
    """The compliance report of ``model`` over ``[since, until)`` (Unix seconds; ``until`` None:
    now) as ``fmt`` (``"md"`` or ``"html"``), and its ``report_exported`` audit event, written by
    ``actor`` (None: the operating-system user). ``registry``: an open registry (left open), else
    one is opened on ``location`` (as :class:`ModelRegistry`'s). ``window``: seconds per
    performance window; ``task``, ``positive``, ``threshold``: how predictions are read (as the
    monitor's ``performance`` options). ``ValueError`` for an empty period, a window too short,
    or another format; ``StoreError`` when the database cannot be used."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if registry is None:
        with ModelRegistry(location) as opened:
            return render_compliance_report(model, since, until, fmt=fmt, registry=opened, actor=actor, window=window,
                                            task=task, positive=positive, threshold=threshold)
    now = time.time()
    until = now if until is None else until
    summary = summarize_log(registry.db, model, since, until, window=window, task=task, positive=positive,
                            threshold=threshold)
    verified = registry.audit.verify()
    text = render(build_report(registry, model, summary, verified, now=now), fmt)
    try:
        registry.audit.append("report_exported", _actor(actor), model, None, {
            "report": "compliance", "format": fmt, "since": when(since), "until": when(until),
            "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(), "chain_ok": verified.ok,
            "chain_head": f"{verified.last_seq}:{verified.last_hash}"})
    except ChainBroken as exc:  # a cut-off log: the report is what the auditor needs now, and it says so
        logger.warning("the compliance report is not recorded in the audit log: %s", exc)
        text = render(build_report(registry, model, summary, verified, now=now, unrecorded=str(exc)), fmt)
    return text


def build_report(registry: ModelRegistry, model: str, summary: LogSummary, verified: VerifyResult, *,
                 now: float, unrecorded: str | None = None) -> Document:
    """The report's document from the registry, the audit log's events of the period, the
    chain's verification and the prediction log's ``summary``; ``unrecorded``: why its export
    could not be appended to the audit log (the log refuses appends while its end is cut off)."""
    where = registry.db.where
    events = registry.audit.query(model=model, since=summary.since, until=summary.until)
    registry_events = [e for e in events if e.event_type in REGISTRY_EVENTS]
    alert_events = [e for e in events if e.event_type in ALERT_EVENTS]
    drift_events = [e for e in alert_events if "drift" in str(e.details.get("alertname", "")).lower()]
    unacknowledged = _unacknowledged(alert_events)
    fairness_flags = [r for rates in summary.fairness().values() for r in rates if r.flagged]
    span = f"[{when(summary.since)}, {when(summary.until)})"
    attention = ([f"the audit chain is broken: {verified.broken}"] if not verified.ok else []) + (
        [f"this report's export is not recorded in the audit log: {unrecorded}"] if unrecorded else []) + (
        [f"{len(fairness_flags)} group(s) below four-fifths"] if fairness_flags else []) + (
        [f"{len(unacknowledged)} fired alert(s) without an acknowledgement"] if unacknowledged else []) + (
        [f"{len(drift_events)} drift alert event(s)"] if drift_events else []) + (
        ["no labelled predictions: performance not measured"] if summary.available and not summary.labelled else []) + (
        ["no prediction log in this database"] if not summary.available else [])
    sections = [
        Section("Summary", f"the sections below; database {where}", [Table(["", ""], [
            ["model", model], ["period", span], ["generated", when(now)],
            ["audit chain", "verified" if verified.ok else "BROKEN"],
            ["predictions logged", str(summary.predictions)], ["labelled", str(summary.labelled)],
            ["audit events of the model in the period", str(len(events))]]),
            Bullets(attention, empty="nothing needs attention")]),
        _registry_history(registry, model, registry_events, where, span),
        _chain(verified, where, unrecorded),
        _coverage(summary, [e for e in events if e.event_type == "first_served"], where),
        Section("Drift", f"table audit_events of {where}: alert events of model {model!r} in {span} whose alertname "
                f"names drift (details.alertname): {len(drift_events)} events", [
                    Para("Drift statistics are computed by the serving process on its window of recent traffic and are not "
                         "kept; the alerts they raised are. See the service's GET /mlmon/drift for the current report."),
                    events_table(drift_events, empty="no drift alert events in the period")]),
        performance_section(summary, where),
        fairness_section(summary, where),
        _alerts(alert_events, unacknowledged, where, model, span),
        explanations_section(summary, where),
    ]
    return Document(f"Compliance report: {model}", f"Period {span}; generated {when(now)} from {where}.", sections)


def _registry_history(registry: ModelRegistry, model: str, events: Sequence[AuditEvent], where: str, span: str) -> Section:
    versions = registry.list_versions(model)
    rows = [[v.version, v.state, f"{v.created_by} at {v.created_at}", v.approved_by or "", v.approved_at or "",
             v.approval_reason or "", v.deployed_at or ""] for v in versions]
    return Section("Registry history", f"table registry_versions of {where} (model = {model!r}: {len(versions)} versions, "
                   f"as they are now) and table audit_events ({', '.join(REGISTRY_EVENTS)} in {span}: {len(events)} events)", [
                       Table(["version", "state", "registered", "approved by", "approved at", "reason", "last deployed"],
                             rows, empty="no version registered"),
                       Para("Every change of the period, who made it, when and why (details.reason):"),
                       events_table(events, empty="no registry change in the period")])


def _chain(verified: VerifyResult, where: str, unrecorded: str | None = None) -> Section:
    blocks: list[Block] = [Para(f"Result: {verified}")]
    if unrecorded:
        blocks.append(Notice(f"This report's export is not recorded in the audit log (no report_exported event): "
                             f"{unrecorded}"))
    if verified.ok:
        blocks.append(Para(f"Keep this anchor outside the database: {verified.last_seq}:{verified.last_hash}. "
                           "mlmon audit verify --anchor SEQ:HASH later fails if that event was changed or removed."))
    else:
        assert verified.broken is not None
        blocks.append(Notice(f"The chain is broken at event {verified.broken.seq} ({verified.broken.kind}): "
                             f"{verified.broken.message}. Events from there on cannot be trusted."))
    return Section("Audit chain", f"tables audit_events and audit_head of {where}: the whole chain, {verified.events} "
                   "events read (AuditLog.verify(), as mlmon audit verify)", blocks)


def _coverage(summary: LogSummary, served: Sequence[AuditEvent], where: str) -> Section:
    if not summary.available:
        return Section("Monitoring coverage", f"table predictions of {where}", [Notice("No prediction log in this "
                                                                                       "database: nothing was monitored.")])
    empty = sum(1 for w in summary.windows if not w.predictions)
    rows = [[version, str(n)] for version, n in sorted(summary.versions.items())]
    return Section("Monitoring coverage", f"table predictions of {where} (columns version, ts, label, explanation) and "
                   f"table audit_events (first_served: {len(served)} events)", [
                       Para(f"{summary.predictions} predictions logged from {when(summary.first)} to {when(summary.last)}; "
                            f"{summary.labelled} labelled ({pct(summary.labelled, summary.predictions)}), "
                            f"{summary.explained} explained ({pct(summary.explained, summary.predictions)}); "
                            f"{empty} of {len(summary.windows)} windows without any logged prediction."),
                       Table(["version", "predictions"], rows, empty="no predictions logged in the period"),
                       events_table(served, empty="no version was served for the first time in the period")])


def _unacknowledged(events: Sequence[AuditEvent]) -> list[AuditEvent]:
    """Fired alerts whose id (details.id) no acknowledgement event names."""
    acknowledged = {e.details.get("id") for e in events if e.event_type == "alert_acknowledged"}
    return [e for e in events if e.event_type == "alert_fired" and e.details.get("id") not in acknowledged]


def _alerts(events: Sequence[AuditEvent], unacknowledged: Sequence[AuditEvent], where: str, model: str,
            span: str) -> Section:
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for e in events:
        counts[str(e.details.get("alertname", "?"))][e.event_type] += 1
    rows = [[name, str(c["alert_fired"]), str(c["alert_resolved"]), str(c["alert_acknowledged"])]
            for name, c in sorted(counts.items())]
    return Section("Alerts and acknowledgements", f"table audit_events of {where} ({', '.join(ALERT_EVENTS)} of model "
                   f"{model!r} in {span}: {len(events)} events; acknowledgements matched to alerts by details.id)", [
                       Table(["alert", "fired", "resolved", "acknowledged"], rows, empty="no alert events in the period"),
                       Para(f"{len(unacknowledged)} fired alert(s) without an acknowledgement:"),
                       events_table(unacknowledged, empty="none"),
                       Para("Every alert event:"), events_table(events, empty="none")])
