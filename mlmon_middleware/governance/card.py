"""The model card of a registered version: the registry's facts plus live monitoring, as Markdown
or as one self-contained HTML page (``mlmon card render``, and the ``GET /mlmon/card`` route
through :func:`render_card`).

What the registry holds (:class:`~mlmon_middleware.governance.facts.ModelVersion`): the
overview, approvals, intended and out-of-scope uses, training data and its date range, the
evaluation metrics overall and per group, limitations, biases and mitigations. Then monitoring,
from a running service when the card is rendered by it (its :class:`~mlmon_middleware.model.ModelMonitor`
serving this version), else offline from the database:

============================  =====================================  ==============================================
section                       from a running service                 offline (the CLI)
============================  =====================================  ==============================================
drift                         its last drift report                  not available (says so)
performance                   its performance report's windows       the log's labelled predictions, per day, 7 days
fairness                      its protected attribute's fairness     four-fifths from the log's segments, 7 days
explanation coverage          the prediction log, 7 days             the same
alert history                 its alerts, and the audit log's        the audit log's alert events, 30 days
baseline age                  the baseline it loaded                 the audit log's last ``baseline_set``
============================  =====================================  ==============================================
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from mlmon_middleware.governance.audit import check_text
from mlmon_middleware.governance.document import FORMATS, Block, Bullets, Document, Notice, Para, Section, Table, render
from mlmon_middleware.governance.errors import UnknownVersion
from mlmon_middleware.governance.evidence import summarize_log
from mlmon_middleware.governance.facts import ModelVersion
from mlmon_middleware.governance.registry import ModelRegistry
from mlmon_middleware.governance.sections import (
    age,
    events_table,
    explanations_section,
    fairness_section,
    iso_ts,
    list_section,
    metric_names,
    num,
    performance_section,
    when,
)

if TYPE_CHECKING:
    from mlmon_middleware.model import ModelMonitor
    from mlmon_middleware.monitor import Monitor

RECENT = 7 * 86400.0  # the log's recent period on a card
ALERT_HISTORY = 30 * 86400.0
APPROVAL_EVENTS = ("registered", "submitted", "approved", "rejected", "deployed", "rolled_back", "retired")
ALERT_EVENTS = ("alert_fired", "alert_resolved", "alert_acknowledged")
REGISTRY = "table registry_versions"


def render_card(model: str, version: str | None = None, *, fmt: str = "html", registry: ModelRegistry | None = None,
                location: str | None = None, monitor: Monitor | None = None, now: float | None = None) -> str:
    """The model card of ``model`` ``version`` as ``fmt`` (``"md"`` or ``"html"``).

    ``version`` None: the registry's deployed version, else the one ``monitor`` serves.
    ``registry``: an open registry (left open); else one is opened (and closed) on ``location``,
    else on the monitor's prediction log (``Monitor.store_location``), else the environment's
    (``MLMON_STORE_URL``, else ``$MLMON_STORE_DIR/predictions.sqlite``). ``monitor``: the
    running ``Monitor``: when its model ``model`` serves this version, the live sections come from
    it (its last drift and performance reports, running a check if none has run yet, as the
    ``/mlmon/drift`` route does); otherwise they are read offline and the card says what is not
    available. ``now``: the time the card is rendered at (Unix seconds; default now). Raises
    ``UnknownVersion`` (a ``ValueError``) for a version the registry does not hold, ``ValueError``
    for another format, ``StoreError`` when the database cannot be used."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    check_text(model, "model")  # a name as the registry stores them: no message repeats an unbounded one
    check_text(version, "version", optional=True)
    if registry is None:
        with ModelRegistry(location or (None if monitor is None else monitor.store_location)) as opened:
            return render_card(model, version, fmt=fmt, registry=opened, monitor=monitor, now=now)
    live = None if monitor is None else monitor.models.get(model)
    if version is None:
        deployed = registry.deployed_version(model)
        version = deployed.version if deployed is not None else live.version if live is not None else None
        if version is None:
            raise UnknownVersion(f"model {model!r} has no deployed version: name the version")
    entry = registry.get_version(model, version)
    return render(build_card(registry, entry, live if live is not None and live.version == version else None,
                             served=None if live is None else live.version, now=time.time() if now is None else now), fmt)


def build_card(registry: ModelRegistry, entry: ModelVersion, live: ModelMonitor | None, *, served: str | None = None,
               now: float) -> Document:
    """The card's document: the registry's facts, then monitoring (``live``: the model's monitor
    serving this version, or None to read it offline; ``served``: the version the running
    service serves, when it serves another)."""
    where = registry.db.where
    facts = entry.facts
    source = f"{REGISTRY} of {where}, model = {entry.name!r}, version = {entry.version!r}"
    mode = ("live: the running service serves this version" if live is not None else
            f"offline: the running service serves version {served!r}, not this one" if served is not None else
            "offline: read from the database (no running service)")
    sections = [
        Section("Overview", source, [Table(["", ""], [
            ["model", entry.name], ["version", entry.version], ["state", entry.state], ["owner", facts.owner or "not stated"],
            ["description", facts.description or "not stated"], ["registered", f"{entry.created_at} by {entry.created_by}"],
            ["artifact SHA-256", entry.artifact_sha256], ["baseline SHA-256", entry.baseline_sha256 or "none registered"],
            ["monitoring", mode]])]),
        _approvals(registry, entry, where),
        list_section("Intended use", facts.intended_use, source),
        list_section("Out-of-scope uses", facts.out_of_scope_uses, source),
        Section("Training data", source, [Table(["", ""], [
            ["description", facts.training_data or "not stated"],
            ["date range", f"{facts.training_data_start or '?'} to {facts.training_data_end or '?'}"
             if facts.training_data_start or facts.training_data_end else "not stated"],
            ["rows", "not stated" if facts.training_data_size is None else f"{facts.training_data_size:,}"],
            ["evaluation data", facts.evaluation_data or "not stated"]])]),
        Section("Evaluation metrics", source + " (columns metrics, group_metrics: as registered)", [
            Table(["metric", "value"], [[k, num(v)] for k, v in sorted(entry.metrics.items())], empty="no metrics registered"),
            Table(["group", "metric", "value"], [[g, k, num(v)] for g, ms in sorted(entry.group_metrics.items())
                                                 for k, v in sorted(ms.items())], empty="no per-group metrics registered")]),
        list_section("Limitations", facts.limitations, source),
        list_section("Biases", facts.biases, source),
        list_section("Mitigations", facts.mitigations, source),
        _drift(live),
    ]
    summary = summarize_log(registry.db, entry.name, now - RECENT, now, version=entry.version)
    if live is not None:
        sections += [_live_performance(live), _live_fairness(live)]
    else:
        sections += [performance_section(summary, where, "Performance per day (offline: the prediction log)"),
                     fairness_section(summary, where)]
    sections += [explanations_section(summary, where), _alerts(registry, entry, live, now), _baseline(registry, entry, live, now)]
    return Document(f"Model card: {entry.name} {entry.version}", f"Rendered {when(now)}; {mode}.", sections)


def _approvals(registry: ModelRegistry, entry: ModelVersion, where: str) -> Section:
    events = registry.audit.query(model=entry.name, version=entry.version, event_type=APPROVAL_EVENTS)
    approval = (f"approved by {entry.approved_by} at {entry.approved_at}: {entry.approval_reason or 'no reason given'}"
                if entry.approved_by else "not approved")
    return Section("Approvals", f"{REGISTRY} (columns approved_by, approved_at, approval_reason) and table audit_events "
                   f"of {where} (event types {', '.join(APPROVAL_EVENTS)}): {len(events)} events",
                   [Para(approval), events_table(events)])


def _drift(live: ModelMonitor | None) -> Section:
    if live is None:
        return Section("Drift", "the serving process's drift checks", [Notice(
            "Drift: not available offline. Drift is computed in the serving process from its window of recent "
            "traffic: render the card from the running service (GET /mlmon/card) or see GET /mlmon/drift. Drift "
            "alerts the service raised are under Alert history.")])
    report = live.drift_report()
    source = f"the service's last drift check (ModelMonitor.drift_report()) at {when(report.get('checked_at'))}"
    if report.get("status") == "warming_up":
        return Section("Drift", source, [Para(f"Warming up: {report.get('rows', 0)} of {report.get('warmup_rows', 0)} "
                                              "rows needed before the first check.")])
    features = report.get("features") or {}
    rows = [[name, f.get("kind", ""), num(f.get("psi")), num(f.get("p_adjusted")), f.get("severity", "none")]
            for name, f in sorted(features.items())]
    return Section("Drift", source, [
        Para(f"{len(report.get('drifted') or [])} of {len(features)} features drifted (share {num(report.get('share'))}) "
             f"on {report.get('rows', 0)} rows; dataset drift: {'yes' if report.get('dataset_drift') else 'no'}; "
             f"prediction drift: {'yes' if report.get('prediction_drift') else 'no'}."),
        Table(["feature", "kind", "PSI", "p (adjusted)", "severity"], rows, empty="no features checked")])


def _live_performance(live: ModelMonitor) -> Section:
    report = live.performance_report()
    windows = report.get("windows") or {}
    names = metric_names(m for w in windows.values() for m in (w.get("overall") or {}))
    rows = [[window, str(w.get("rows", 0)), *(num((w.get("overall") or {}).get(m)) for m in names),
             ", ".join(f"{m}: {d['severity']}" for m, d in sorted((w.get("degradation") or {}).items())
                       if d["severity"] != "none") or "none"] for window, w in windows.items()]
    given = report.get("reference")
    reference = (given["source"] if given is not None else None) or "none yet"
    return Section("Performance over recent windows", "the service's last performance check "
                   f"(ModelMonitor.performance_report()) at {when(report.get('checked_at'))}: labelled predictions of "
                   "the prediction log", [
                       Para(f"Status: {report.get('status', 'unknown')}; reference: {reference}."),
                       Table(["window", "labelled", *names, "degradation"], rows, empty="no windows")])


def _live_fairness(live: ModelMonitor) -> Section:
    report = live.performance_report()
    rows = []
    for window, w in (report.get("windows") or {}).items():
        fairness = w.get("fairness")
        if not fairness:
            continue
        rates = [g["positive_rate"] for g in fairness["groups"].values()]
        highest = max(rates, default=0.0)
        for group, g in sorted(fairness["groups"].items()):
            rows.append([window, str(fairness["attribute"]), group, str(g["count"]), f"{g['positive_rate']:.3f}",
                         f"{g['positive_rate'] / highest:.3f}" if highest else "1.000", num(g["tpr"]), num(g["fpr"]),
                         "violated" if fairness["four_fifths_violated"] else "ok"])
    protected = live.options.performance_options.protected
    note = (Para(f"Protected attribute: {protected}. The four-fifths rule is violated when a group's positive rate is "
                 "below 0.8 of the highest and the gap is unlikely by chance (Fisher's exact test).") if protected else
            Notice("No protected attribute is configured (performance={'protected': ...}): no live fairness."))
    return Section("Fairness over recent windows", "the service's last performance check (ModelMonitor.performance_report(), "
                   "fairness of its labelled predictions per window)",
                   [note, Table(["window", "attribute", "group", "labelled", "positive rate", "ratio to highest", "TPR",
                                 "FPR", "four-fifths"], rows, empty="no fairness computed yet")])


def _alerts(registry: ModelRegistry, entry: ModelVersion, live: ModelMonitor | None, now: float) -> Section:
    events = registry.audit.query(model=entry.name, event_type=ALERT_EVENTS, since=now - ALERT_HISTORY)
    blocks: list[Block] = []
    if live is not None:
        summary = live.checker.alerts.summary()
        blocks.append(Table(["firing alert", "subject", "severity", "since"],
                            [[a["alertname"], a["subject"], a["severity"], when(a["since"])] for a in summary["active"]],
                            empty="no alert firing now"))
        blocks.append(Table(["alert", "subject", "change", "severity", "time"],
                            [[e.get("alertname", ""), e.get("subject", ""), e.get("state", ""), e.get("severity", ""),
                              when(e.get("time"))] for e in summary["recent"]], empty="no recent alert changes"))
    blocks.append(events_table(events, empty="no alert events in the audit log in the last 30 days"))
    source = (("the service's alerts (firing, recent changes), and " if live is not None else "") +
              f"table audit_events of {registry.db.where} (event types {', '.join(ALERT_EVENTS)}, model = "
              f"{entry.name!r}, since {when(now - ALERT_HISTORY)}): {len(events)} events")
    return Section("Alert history", source, blocks)


def _baseline(registry: ModelRegistry, entry: ModelVersion, live: ModelMonitor | None, now: float) -> Section:
    if live is not None and live.baseline is not None:
        summary = live.baseline.summary()
        created = summary["created_at"]
        try:
            text = f"created {created} ({age(now - iso_ts(created))} ago), {summary['rows']} rows"
        except ValueError:
            text = f"created {created}, {summary['rows']} rows"
        return Section("Baseline", "the baseline the service loaded (its created_at)", [Para(text)])
    events = registry.audit.query(model=entry.name, event_type="baseline_set")
    source = f"table audit_events of {registry.db.where} (event type baseline_set, model = {entry.name!r})"
    if events:
        last = events[-1]
        return Section("Baseline", source, [Para(f"set {last.time} ({age(now - iso_ts(last.time))} ago) by {last.actor} "
                                                 f"(audit event {last.seq}).")])
    if entry.baseline_sha256:
        return Section("Baseline", source + f" and {REGISTRY} (column baseline_sha256)", [Para(
            f"registered with the version {entry.created_at} ({age(now - iso_ts(entry.created_at))} ago); no baseline_set "
            "event since.")])
    return Section("Baseline", source, [Bullets([], empty="no baseline registered or set")])
