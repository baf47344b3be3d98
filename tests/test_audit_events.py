"""Monitoring's audit events (mlmon_middleware.governance.events): a drift alert firing and
resolving, a severity change, baselines set and replaced (once across processes sharing the log),
labels per hour, a failing log counted, and the compliance report matching the fired alert to its
acknowledgement by id."""

import hashlib
import os
import time

import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from mlmon_middleware import Baseline, Monitor, MonitorConfig
from mlmon_middleware.drift.policy import DriftPolicy
from mlmon_middleware.errors import ErrorLog
from mlmon_middleware.governance import AuditLog
from mlmon_middleware.governance.events import MonitoringEvents
from mlmon_middleware.governance.facts import sha256_file
from mlmon_middleware.governance.report import render_compliance_report
from mlmon_middleware.routes import routes

TOKEN = {"Authorization": "Bearer s3cret"}


def rows(n, rng, shift=0.0):
    return [{"a": float(a), "b": float(b)} for a, b in zip(rng.normal(shift, 1, n), rng.normal(0, 1, n))]


@pytest.fixture
def baseline_file(tmp_path):
    path = tmp_path / "baseline.json"
    Baseline.from_data(rows(3000, np.random.default_rng(0)), model="fraud").save(path)
    return str(path)


def monitor(store, baseline_file, **options):
    mon = Monitor(MonitorConfig(tracing=False, check_interval=0, store_dir=str(store), reservoir_size=400,
                                api_token="s3cret"))
    model = mon.model("fraud", version="v1", baseline=baseline_file,
                      drift_policy=DriftPolicy(fire_after=1, resolve_after=1), **options)
    return mon, model


def feed(model, data):
    return [model.record(row, {"prediction": float(row["a"] > 0)}) for row in data]


def test_alerts_baselines_and_labels_reach_the_audit_log(tmp_path, baseline_file):
    store = tmp_path / "log"
    store.mkdir()
    seen = []
    mon, model = monitor(store, baseline_file, on_alert=seen.append)
    other, _ = monitor(store, baseline_file)  # another worker or replica sharing the log, same baseline
    rng = np.random.default_rng(1)
    try:
        pids = feed(model, rows(400, rng, shift=2.0))
        mon.check_all()  # a scheduled check: FeatureDrift a fires; the events are written after it
        other.check_all()
        model.check_now(scheduled=False)  # on demand: counts toward no alert
        feed(model, rows(400, rng))
        mon.check_all()  # the window is clean again: resolved
        result = model.record_outcomes([(pids[0], 1, None), (pids[0], 0, None), (pids[1], 1, None), ("nope", 1, None)])
        assert (result["labelled"], result["relabelled"], result["unknown"]) == (2, 1, 1)
        mon.audit_events.write(mon.models.values())  # the hour is not over: nothing yet
        with AuditLog(str(store)) as log:
            assert log.query(event_type="labels_ingested") == []
        mon.audit_events.write(mon.models.values(), now=time.time() + 3600)
        replaced = Baseline.from_data(rows(3000, np.random.default_rng(2), shift=0.5), model="fraud")
        model.set_baseline(replaced)
        mon.audit_events.write(mon.models.values())
    finally:
        mon.shutdown()
        other.shutdown()
    drift = [e for e in seen if e["alertname"] == "FeatureDrift"]  # the user's callback is called too
    assert [e["state"] for e in drift] == ["firing", "resolved"]
    with AuditLog(str(store)) as log:
        assert log.verify().ok
        alerts = [e for e in log.query(model="fraud", event_type=["alert_fired", "alert_resolved"])
                  if e.details["alertname"] == "FeatureDrift"]
        baselines = log.query(model="fraud", event_type="baseline_set")
        (labels,) = log.query(model="fraud", event_type="labels_ingested")
    fired, resolved = alerts
    assert (fired.event_type, resolved.event_type) == ("alert_fired", "alert_resolved")
    assert fired.details["id"] == resolved.details["id"] == drift[0]["id"] and len(fired.details["id"]) == 16
    assert (fired.actor, fired.version, fired.details["subject"], fired.details["severity"]) == ("mlmon", "v1", "a",
                                                                                               "critical")
    first, second = baselines  # the second process loaded the same file: not written again
    assert first.details["sha256"] == sha256_file(baseline_file) and first.details["previous_sha256"] is None
    assert (first.details["rows"], first.details["features"], first.details["warmup"]) == (3000, 2, False)
    assert second.details["sha256"] == hashlib.sha256(replaced.to_json(indent=True)).hexdigest()
    assert second.details["previous_sha256"] == first.details["sha256"]
    assert labels.details["count"] == 4 and labels.details["pid"] == os.getpid()
    assert (labels.details["labelled"], labels.details["relabelled"], labels.details["unknown"]) == (2, 1, 1)
    assert labels.details["hour"].endswith(":00:00+00:00") and labels.details["partial"] is False


def test_without_a_log_nothing_is_queued():
    mon = Monitor(MonitorConfig(tracing=False, check_interval=0))
    mon.model("m").checker.alerts.update({("DatasetDrift", ""): "critical"})
    assert mon.model("m").checker.alerts.callback is None and not mon.audit_events._pending
    mon.audit_events.write(mon.models.values())  # nothing to write to: a no-op


def test_severity_changes_and_the_compliance_report_with_acknowledgements(tmp_path, baseline_file):
    mon, model = monitor(tmp_path, baseline_file)
    alerts = model.checker.alerts
    try:
        alerts.update({("DatasetDrift", ""): "warning"})
        alerts.update({("DatasetDrift", ""): "critical"})
        alerts.update({("DatasetDrift", ""): "critical", ("PredictionDrift", "prediction"): "warning"})
        mon.audit_events.write(mon.models.values())  # what the analyzer thread does after its checks
        drift_id, other_id = (a["id"] for a in alerts.summary()["active"])
        report = render_compliance_report("fraud", time.time() - 60, fmt="md", location=mon.store_path, actor="t")
        assert "- 2 fired alert(s) without an acknowledgement" in report
        with TestClient(Starlette(routes=routes(mon))) as client:
            acked = client.post(f"/mlmon/alerts/{drift_id}/ack", json={"actor": "ana"}, headers=TOKEN)
        assert acked.status_code == 200, acked.text
        report = render_compliance_report("fraud", time.time() - 60, fmt="md", location=mon.store_path, actor="t")
    finally:
        mon.shutdown()
    with AuditLog(mon.store_path) as log:
        changes = [(e.event_type, e.details["id"], e.details["severity"])
                   for e in log.query(event_type=["alert_fired", "alert_severity_changed"])]
        assert log.verify().ok
    assert changes == [("alert_fired", drift_id, "warning"), ("alert_severity_changed", drift_id, "critical"),
                       ("alert_fired", other_id, "warning")]
    assert "| DatasetDrift | 1 | 0 | 1 |" in report and "| PredictionDrift | 1 | 0 | 0 |" in report
    assert "- 1 fired alert(s) without an acknowledgement" in report


def test_a_failing_audit_log_is_counted_and_retried_never_raised(tmp_path):
    errors = ErrorLog()
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    events = MonitoringEvents(str(blocker / "predictions.sqlite"), errors)
    events.queue({"alertname": "DatasetDrift", "subject": "", "state": "firing", "severity": "critical",
                  "time": 0.0, "id": "cd" * 8, "model": "m", "version": "1"})
    events.write([])
    assert errors.counts()["audit"] >= 1 and len(events._pending) == 1  # kept for the next round
    events.location = str(tmp_path / "predictions.sqlite")
    events.write([])
    assert not events._pending
    with AuditLog(events.location) as log:
        assert [e.event_type for e in log.query()] == ["alert_fired"]
    events.close()


def test_a_broken_chain_holds_the_events_until_it_is_repaired(tmp_path):
    """A cut-off chain refuses every append (ChainBroken): the events wait, counted, and are
    written once the chain takes appends again; none is dropped."""
    import sqlite3

    errors = ErrorLog()
    path = str(tmp_path / "predictions.sqlite")
    with AuditLog(path, key=b"") as log:
        log.append("registered", "ds", "m", "1", {})
    with sqlite3.connect(path) as db:
        head = db.execute("SELECT chain, seq, hash, mac FROM audit_head").fetchone()
        db.execute("DELETE FROM audit_head")  # the head record gone: nothing may be appended after it
    events = MonitoringEvents(path, errors)
    for n in range(3):
        events.queue({"alertname": "DatasetDrift", "subject": "", "state": "firing", "severity": "critical",
                      "time": float(n), "id": f"{n:016x}", "model": "m", "version": "1"})
        events.write([])
    assert errors.counts()["audit"] == 3 and len(events._pending) == 3 and "ChainBroken" in errors.last_kinds()["audit"]
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO audit_head VALUES (?, ?, ?, ?)", head)  # repaired
    events.write([])
    assert not events._pending
    with AuditLog(path, key=b"") as log:
        assert [e.details.get("id") for e in log.query(event_type="alert_fired")] == [f"{n:016x}" for n in range(3)]
        assert log.verify().ok
    events.close()


def test_the_analyzer_writes_what_is_left_when_the_monitor_shuts_down(tmp_path):
    mon = Monitor(MonitorConfig(tracing=False, check_interval=3600, store_dir=str(tmp_path)))
    model = mon.model("m", version="1", drift_policy=DriftPolicy(fire_after=1))
    pid = model.record({"x": 1.0}, {"prediction": 1.0})
    model.record_outcome(pid, 1)
    model.checker.alerts.update({("DatasetDrift", ""): "critical"})  # as a scheduled check would
    mon.shutdown()  # no round ran: the analyzer's last act writes the queue and the hour in progress
    with AuditLog(mon.store_path) as log:
        events = {e.event_type: e.details for e in log.query(model="m")}
    assert events["alert_fired"]["alertname"] == "DatasetDrift"
    assert (events["labels_ingested"]["labelled"], events["labels_ingested"]["partial"]) == (1, True)
