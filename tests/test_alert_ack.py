"""Alert acknowledgement: stable alert ids, POST /mlmon/alerts/{id}/ack (token, body, audit
event), and health's "alerts are being ignored" and overdue critical alerts (ack_max_age)."""

import time

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from mlmon_middleware import Monitor, MonitorConfig
from mlmon_middleware.alerts import Alerts
from mlmon_middleware.config import ConfigError
from mlmon_middleware.governance import AuditLog
from mlmon_middleware.routes import routes

TOKEN = {"Authorization": "Bearer s3cret"}
DRIFT = ("FeatureDrift", "income")


def fire(alerts, severity="critical", key=DRIFT):
    """Feed checks until ``key`` fires at ``severity``; the firing alert's id."""
    for _ in range(alerts.fire_after):
        alerts.update({key: severity})
    return next(a["id"] for a in alerts.summary()["active"] if (a["alertname"], a["subject"]) == key)


def test_an_episode_keeps_its_id_until_it_resolves_and_a_new_one_gets_another():
    alerts = Alerts(fire_after=1, resolve_after=1, model="m")
    first = fire(alerts, "warning")
    alerts.update({DRIFT: "critical"})  # severity changed: the same episode
    alerts.update({})
    second = fire(alerts)
    events = [(e["state"], e["id"]) for e in alerts.recent]
    assert events == [("firing", first), ("severity_changed", first), ("resolved", first), ("firing", second)]
    assert first != second and len(first) == 16
    assert alerts.acknowledge("0" * 16, "ana") is None
    assert alerts.acknowledge(first, "ana", "looked at it")["severity"] == "critical"  # a resolved one, from recent
    assert alerts.acknowledge(first, "bob")["actor"] == "bob"  # a second acknowledgement replaces the first
    assert list(alerts.summary()["acknowledged"]) == [first]


def test_a_worker_adopting_the_leaders_alerts_keeps_ids_and_both_sides_acknowledgements():
    leader, worker = Alerts(fire_after=1, model="m"), Alerts(fire_after=1, model="m")
    ours, theirs = fire(leader), fire(leader, key=("DatasetDrift", ""))
    leader.acknowledge(ours, "leader-side")
    worker.adopt(leader.summary())
    worker.acknowledge(theirs, "worker-side")
    worker.adopt(leader.summary())  # the leader's next check: the worker's own acknowledgement stays
    active = {a["id"]: a["acknowledged"]["actor"] for a in worker.summary()["active"]}
    assert active == {ours: "leader-side", theirs: "worker-side"}


def test_health_says_alerts_are_ignored_until_one_is_acknowledged():
    alerts = Alerts(fire_after=1, model="m")
    now = time.time()
    assert alerts.ack_issues(now, 3600.0) == []
    alert_id = fire(alerts)
    ignored, overdue = alerts.ack_issues(now + 7200, 3600.0)
    assert "alerts are being ignored" in ignored and overdue.endswith("over 1 h: FeatureDrift income")
    assert alerts.ack_issues(now, 3600.0) == [ignored]  # not yet an hour old
    fire(alerts, "warning", ("PredictionDrift", "score"))  # warnings are never overdue
    alerts.acknowledge(alert_id, "ana")
    assert alerts.ack_issues(now + 7200, 3600.0) == []
    assert alerts.ack_issues(now + 31 * 86400, 3600.0) == []  # the old alerts left the 30 days with their ack


@pytest.fixture
def served(tmp_path):
    """mlmon's routes over a monitor with a prediction log, a token, ack_max_age of 0.05 s and one
    model whose critical FeatureDrift alert fires; yields (client, monitor, alert id, log folder)."""
    mon = Monitor(MonitorConfig(tracing=False, store_dir=str(tmp_path), api_token="s3cret", ack_max_age=0.05))
    alerts = mon.model("fraud").checker.alerts
    alert_id = fire(alerts)
    with TestClient(Starlette(routes=routes(mon))) as client:
        yield client, mon, alert_id, str(tmp_path)
    mon.shutdown()


def test_acknowledging_through_the_route_records_who_and_appends_to_the_audit_log(served):
    client, mon, alert_id, store = served
    time.sleep(0.06)
    before = [i for i in mon.issues() if i.startswith("fraud: ") and "alert(s) firing" not in i]
    denied = client.post(f"/mlmon/alerts/{alert_id}/ack", json={"actor": "ana"})
    unknown = client.post("/mlmon/alerts/0123456789abcdef/ack", json={"actor": "ana"}, headers=TOKEN)
    other_model = client.post(f"/mlmon/alerts/{alert_id}/ack?model=nope", headers=TOKEN)
    bad = [client.post(f"/mlmon/alerts/{alert_id}/ack", json=body, headers=TOKEN)
           for body in ({"actor": ""}, {"note": 3}, {"actor": "ana", "by": "x"}, [1])]
    acked = client.post(f"/mlmon/alerts/{alert_id}/ack", json={"actor": "ana@example.com", "note": "retraining"},
                        headers=TOKEN)
    summary = client.get("/mlmon/alerts", headers=TOKEN).json()["fraud"]

    assert before == ["fraud: 1 alert(s) fired in the last 30 days and none was acknowledged or acted on: alerts are being ignored",
                      "fraud: critical alert(s) unacknowledged for over 0.05 s: FeatureDrift income"]
    assert denied.status_code == 401
    assert unknown.status_code == other_model.status_code == 404 and "0123456789abcdef" in unknown.json()["detail"]
    assert [r.status_code for r in bad] == [400] * 4, [r.text for r in bad]
    assert acked.status_code == 200, acked.text
    ack = acked.json()["acknowledged"]
    assert (ack["actor"], ack["note"], ack["alertname"], ack["severity"]) == ("ana@example.com", "retraining",
                                                                              "FeatureDrift", "critical")
    assert summary["active"][0]["acknowledged"] == ack and summary["acknowledged"] == {alert_id: ack}
    assert [i for i in mon.issues() if "acknowledged" in i or "ignored" in i] == []
    with AuditLog(store) as log:
        (event,) = log.query(event_type="alert_acknowledged")
        assert log.verify().ok
    assert (event.seq, event.actor, event.model) == (acked.json()["audit_seq"], "ana@example.com", "fraud")
    assert event.details == {"id": alert_id, "alertname": "FeatureDrift", "subject": "income", "severity": "critical",
                             "note": "retraining"}


def ignored(mon):
    return [i.split(": ", 1)[1] for i in mon.issues() if "acted on" in i or "unacknowledged" in i]


def test_health_reads_acknowledgements_and_actions_of_every_process_from_the_audit_log(tmp_path):
    """Two processes sharing the log (workers of a server, replicas): an acknowledgement the
    other one took, or a change that acts on the model after the alert fired, reaches health
    through the audit log at the next round; the alert's own process never saw either."""
    config = MonitorConfig(tracing=False, check_interval=0, store_dir=str(tmp_path), ack_max_age=0.05,
                           api_token="s3cret")
    here, there = Monitor(config), Monitor(config)
    try:
        alerts = here.model("fraud", "1").checker.alerts
        there.model("fraud", "1")
        alert_id = fire(alerts)
        here.audit_events.write([here.model("fraud")])  # a round: alert_fired appended, the log read back
        time.sleep(0.06)
        assert ignored(here) == ["1 alert(s) fired in the last 30 days and none was acknowledged or acted on: "
                                 "alerts are being ignored",
                                 "critical alert(s) unacknowledged for over 0.05 s: FeatureDrift income"]
        with AuditLog(here.store_path, key=b"") as log:  # an action after the alert: a new version deployed
            log.append("deployed", "ops", "fraud", "2", {})
        here.audit_events.write([here.model("fraud")])
        assert ignored(here) == ["critical alert(s) unacknowledged for over 0.05 s: FeatureDrift income"]
        with TestClient(Starlette(routes=routes(there))) as client:  # the other process never saw the alert
            acked = client.post(f"/mlmon/alerts/{alert_id}/ack", json={"actor": "ana"}, headers=TOKEN)
            unknown = client.post("/mlmon/alerts/0123456789abcdef/ack", json={"actor": "ana"}, headers=TOKEN)
        assert acked.status_code == 200, acked.text
        assert acked.json()["acknowledged"]["alertname"] == "FeatureDrift" and unknown.status_code == 404
        with TestClient(Starlette(routes=routes(there))) as client:  # ?model= names another model: not found
            assert client.post(f"/mlmon/alerts/{alert_id}/ack?model=churn", headers=TOKEN).status_code == 404
        assert ignored(here)  # not read yet: the next round reads it
        here.audit_events.write([here.model("fraud")])
        assert ignored(here) == []
    finally:
        here.shutdown()
        there.shutdown()


def test_only_people_acting_after_the_alert_fired_count_as_acting_on_it(tmp_path):
    """By time, not by place in the log: alert_fired lands a round late, so an action between
    the alert and its event counts, one before it does not; a warm-up baseline the monitor
    built itself is no one acting."""
    from mlmon_middleware.governance.attention import read_attention

    with AuditLog(str(tmp_path / "predictions.sqlite"), key=b"") as log:
        log.append("baseline_set", "mlmon", "fraud", "1", {"warmup": True})  # after the alert, but automatic
        fired_at = time.time()
        log.append("alert_fired", "mlmon", "fraud", "1", {"id": "a1", "alert_time": fired_at - 30})
        assert read_attention(log, ["fraud"])["fraud"].acted_on == ()
        log.append("retired", "ops", "fraud", "0", {})
        log.append("alert_fired", "mlmon", "fraud", "1", {"id": "a2", "alert_time": fired_at + 3600})  # not yet
        found = read_attention(log, ["fraud"])["fraud"]
        assert (found.fired, found.acted_on) == (frozenset({"a1", "a2"}), ("retired",))
        assert read_attention(log, ["fraud"], now=fired_at + 31 * 86400)["fraud"].fired == frozenset()
    with AuditLog(str(tmp_path / "other.sqlite"), key=b"") as log:
        log.append("deployed", "ops", "fraud", "2", {})  # acted on before the alert's event landed, after it fired
        log.append("alert_fired", "mlmon", "fraud", "1", {"id": "a1", "alert_time": time.time() - 30})
        assert read_attention(log, ["fraud"])["fraud"].acted_on == ("deployed",)


def test_without_a_log_an_acknowledgement_is_kept_in_the_process_only():
    mon = Monitor(MonitorConfig(tracing=False, allow_anonymous_writes=True))
    alert_id = fire(mon.model("m").checker.alerts)
    try:
        with TestClient(Starlette(routes=routes(mon))) as client:
            answer = client.post(f"/mlmon/alerts/{alert_id}/ack")  # no body: the actor is "anonymous"
        assert answer.status_code == 200 and answer.json()["audit_seq"] is None
        assert answer.json()["acknowledged"]["actor"] == "anonymous"
    finally:
        mon.shutdown()


def test_ack_max_age_is_a_validated_setting():
    assert MonitorConfig().ack_max_age == 86400.0
    assert MonitorConfig().with_env({"MLMON_ACK_MAX_AGE": "3600"}).ack_max_age == 3600.0
    for bad in (0, -1.0, float("inf"), "1h", True):
        with pytest.raises(ConfigError, match="ack_max_age"):
            MonitorConfig(ack_max_age=bad)
