"""The serving gate (issue 17.2): health, ``mlmon_model_approved`` and, with enforce_approval, a
503 instead of the endpoint for a version the registry does not mark deployed; first_served."""

import hashlib
import pathlib
import time

import governance_fixtures
import httpx
import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from mlmon_fastapi import instrument_app
from mlmon_middleware import Endpoint, Monitor, MonitorConfig, monitor
from mlmon_middleware.capture.asgi import MLMonitorMiddleware
from mlmon_middleware.config import ConfigError
from mlmon_middleware.governance import ModelRegistry
from mlmon_middleware.governance.gate import NO_REGISTRY
from mlmon_middleware.options import ModelOptions

from demo import free_port, kill_service, start_service  # examples/fastapi_sklearn, on sys.path via conftest

location, postgres_database = governance_fixtures.location, governance_fixtures.postgres_database  # both backends
ARTIFACT = b"the fraud model's bytes"
METRICS = {"accuracy": 0.9}


def registry_with(store, state, artifact=ARTIFACT, version="1"):
    """The registry in ``store`` holding fraud ``version`` in ``state`` (draft or deployed)."""
    registry = ModelRegistry(str(store), audit_key=b"")
    registry.register_model("fraud", version, artifact, METRICS, "ds@example.com")
    if state == "deployed":
        deploy(registry, version)
    return registry


def deploy(registry, version="1"):
    registry.submit_for_review("fraud", version, actor="ds@example.com")
    registry.approve_model("fraud", version, "lead@example.com", "reviewed")
    registry.deploy_model("fraud", version, actor="ops@example.com")


def make_app(mon, **options):
    app = FastAPI()

    @app.post("/predict")
    @monitor("fraud", "1", registry=mon, **options)
    def predict(row: dict) -> dict:
        return {"prediction": row["x"] * 2}

    instrument_app(app, registry=mon)
    return app


def gauge(client):
    lines = [line for line in client.get("/metrics").text.splitlines() if line.startswith("mlmon_model_approved{")]
    return [(line.split("{")[1].split("}")[0], float(line.rsplit(" ", 1)[1])) for line in lines]


@pytest.fixture
def mon_for(tmp_path):
    made = []

    def make(**config):
        config.setdefault("store_dir", str(tmp_path))
        mon = Monitor(MonitorConfig(tracing=False, check_interval=0, **config))
        made.append(mon)
        return mon

    yield make
    for mon in made:
        mon.shutdown()


@pytest.mark.parametrize("enforce", [False, True])
def test_a_draft_version_is_reported_and_refused_only_when_enforced(tmp_path, mon_for, enforce):
    registry_with(tmp_path, "draft").close()
    mon = mon_for(enforce_approval=enforce)
    with TestClient(make_app(mon)) as client:  # judged at start-up, before the first request
        answer = client.post("/predict", json={"x": 1.0})
        health = client.get("/mlmon/health").json()
        approved = gauge(client)
    assert health["status"] == "degraded"
    assert any("fraud version 1: not approved for serving: not deployed (state draft)" in i for i in health["issues"])
    assert health["serving_gate"]["models"]["fraud"]["approved"] is False
    assert approved == [('mlmon_model_name="fraud",mlmon_model_version="1"', 0.0)]
    if enforce:
        assert answer.status_code == 503
        assert answer.json() == {"error": "model_not_approved", "model": "fraud", "version": "1",
                                 "reason": "not deployed (state draft)"}
        mon.flush()
        assert mon.model("fraud").health()["predictions"] == {"ok": 0, "error": 0}  # never served, never counted
    else:
        assert answer.status_code == 200 and answer.json() == {"prediction": 2.0}


def test_a_deployed_version_serves_and_its_first_serve_is_audited_once(tmp_path, mon_for):
    registry = registry_with(tmp_path, "deployed")
    mon = mon_for(enforce_approval=True)
    with TestClient(make_app(mon, artifact_sha256=hashlib.sha256(ARTIFACT).hexdigest())) as client:
        mon.gate.refresh()
        assert client.post("/predict", json={"x": 1.0}).status_code == 200
        mon.flush()
        mon.gate.refresh()
        health = client.get("/mlmon/health").json()
        assert gauge(client) == [('mlmon_model_name="fraud",mlmon_model_version="1"', 1.0)]
    assert health["serving_gate"]["models"]["fraud"]["approved"] is True
    assert not [i for i in health["issues"] if "approved" in i]
    events = registry.audit.query(model="fraud", event_type="first_served")
    assert [(e.version, e.details["approved"]) for e in events] == [("1", True)]
    registry.close()


def test_the_model_not_approved_alert_fires_in_mlmon_and_resolves_once_deployed(tmp_path, mon_for):
    """The gate's verdict is a condition of the scheduled checks: ModelNotApproved fires (events,
    webhook callback, audit log, mlmon_alert_active) and resolves like every policy alert."""
    from mlmon_middleware.drift.policy import DriftPolicy

    registry = registry_with(tmp_path, "draft")
    mon, seen = mon_for(), []
    model = mon.model("fraud", "1", drift_policy=DriftPolicy(fire_after=2, resolve_after=1), on_alert=seen.append)
    mon.gate.refresh()
    model.record({"x": 1.0}, {"prediction": 2.0})
    mon.check_all()
    assert seen == []  # sustained over fire_after checks, like every alert
    mon.check_all()
    assert [(e["alertname"], e["subject"], e["state"], e["severity"]) for e in seen] == [
        ("ModelNotApproved", "1", "firing", "critical")]
    assert ("ModelNotApproved", "1", "critical") in model.checker.alerts.active()
    deploy(registry)
    mon.gate.refresh()
    mon.check_all()
    assert [e["state"] for e in seen] == ["firing", "resolved"]
    assert [e.event_type for e in registry.audit.query(model="fraud") if e.event_type.startswith("alert_")] == [
        "alert_fired", "alert_resolved"]
    registry.close()


def test_a_version_deployed_without_approval_is_not_approved_once_the_policy_requires_one(tmp_path, mon_for):
    registry = ModelRegistry(str(tmp_path), audit_key=b"")
    registry.set_policy("fraud", "owner", approval_required=False)
    registry.register_model("fraud", "1", ARTIFACT, METRICS, "ds@example.com")
    registry.deploy_model("fraud", "1", actor="ops@example.com")  # allowed: no approval required
    mon = mon_for()
    mon.model("fraud", "1")
    mon.gate.refresh()
    assert mon.gate.verdicts["fraud"].approved
    registry.set_policy("fraud", "risk-officer", approval_required=True)
    mon.gate.refresh()
    assert mon.gate.verdicts["fraud"].reason == "deployed without an approval, which the model's policy now requires"
    registry.approve_model("fraud", "1", "lead@example.com", "reviewed in place")
    mon.gate.refresh()
    assert mon.gate.verdicts["fraud"].approved
    registry.close()


def test_first_served_is_one_event_for_every_process_sharing_the_database(location, tmp_path, mon_for):
    """Replicas (here two monitors) that serve the same version write one first_served between them."""
    registry = registry_with(location, "deployed")
    where = {"store_url": location, "store_dir": None} if location.startswith("postgresql://") else \
        {"store_dir": str(tmp_path)}
    replicas = [mon_for(**where), mon_for(**where)]
    for replica in replicas:
        replica.model("fraud", "1").record({"x": 1.0}, {"prediction": 2.0})
        replica.flush()
        replica.gate.refresh()
    events = registry.audit.query(model="fraud", event_type="first_served")
    assert [(e.version, e.details["approved"]) for e in events] == [("1", True)]
    assert registry.audit.verify().ok
    registry.close()


def test_a_different_artifact_is_not_approved(tmp_path, mon_for):
    registry_with(tmp_path, "deployed").close()
    served = tmp_path / "model.pkl"
    served.write_bytes(b"another model")
    mon = mon_for(enforce_approval=True)
    plain = FastAPI()
    plain.post("/score")(lambda row: {"prediction": 1.0})
    app = MLMonitorMiddleware(plain, registry=mon,  # an endpoint captured by path, not decorated
                              endpoints=[Endpoint("/score", "fraud", "1", artifact=str(served))])
    mon.gate.refresh()
    with TestClient(app) as client:
        answer = client.post("/score", json={"x": 1.0})
    assert answer.status_code == 503
    assert answer.json()["reason"].startswith("artifact hash differs (serving "
                                              f"{hashlib.sha256(b'another model').hexdigest()[:12]}")


def test_an_unregistered_version_then_an_unreachable_registry_keeps_the_last_verdict(tmp_path, mon_for):
    mon = mon_for(enforce_approval=True)
    app = make_app(mon)
    refused = mon.gate.refusal("fraud")  # no verdict yet: refused (enforcing fails closed until judged)
    assert refused is not None and refused.verdict.reason.startswith("not judged yet")
    with TestClient(app) as client:
        mon.gate.refresh()
        assert client.post("/predict", json={"x": 1.0}).json()["reason"] == "not registered"
        mon.gate.stop()
        (tmp_path / "broken.sqlite").write_bytes(b"not a database" * 100)
        mon.gate.location = str(tmp_path / "broken.sqlite")  # the registry cannot be read any more
        mon.gate.refresh()
        assert client.post("/predict", json={"x": 1.0}).status_code == 503  # fail-closed on the last verdict
        assert mon.errors.counts().get("governance") == 1


def test_without_a_registry_the_gate_is_inactive(mon_for):
    mon = mon_for(store_dir=None, enforce_approval=True)
    with TestClient(make_app(mon)) as client:
        mon.gate.refresh()
        assert client.post("/predict", json={"x": 1.0}).status_code == 200
        health = client.get("/mlmon/health").json()
        assert gauge(client) == []
    assert health["serving_gate"] == {"active": False, "enforce": True, "reason": NO_REGISTRY, "models": {},
                                      "not_in_registry": []}
    assert health["status"] == "ok"


def test_a_model_the_registry_never_heard_of_is_judged_only_when_enforcing(tmp_path, mon_for):
    registry_with(tmp_path, "deployed").close()  # fraud is governed; "other" is not
    mon = mon_for()
    with TestClient(make_app(mon)) as client:
        mon.model("other", "7")
        mon.gate.refresh()
        health = client.get("/mlmon/health").json()
        assert gauge(client) == [('mlmon_model_name="fraud",mlmon_model_version="1"', 1.0)]
    assert health["status"] == "ok" and health["serving_gate"]["not_in_registry"] == ["other"]
    strict = mon_for(enforce_approval=True)
    strict.model("other", "7")
    strict.gate.refresh()
    assert strict.gate.refusal("other").verdict.reason == "not registered"


def test_settings_are_checked(tmp_path):
    assert MonitorConfig().with_env({"MLMON_ENFORCE_APPROVAL": "on"}).enforce_approval is True
    with pytest.raises(ConfigError, match="enforce_approval"):
        MonitorConfig(enforce_approval="yes")
    with pytest.raises(ConfigError, match="artifact_sha256"):
        ModelOptions.create(artifact_sha256="abc")
    with pytest.raises(ConfigError, match="artifact must be"):
        ModelOptions.create(artifact=str(tmp_path / "missing.pkl"))


@pytest.mark.integration
def test_real_uvicorn_refuses_until_the_version_is_approved_and_deployed(tmp_path):
    registry = ModelRegistry(str(tmp_path), audit_key=b"")
    registry.register_model("alpha", "1", b"alpha", METRICS, "ds@example.com")
    port = free_port(0)
    proc = start_service(tmp_path, port, tmp_path / "service.log", app="two_models_app:app",
                         app_dir=pathlib.Path(__file__).parent,
                         env={"MLMON_STORE_DIR": str(tmp_path), "MLMON_ENFORCE_APPROVAL": "true",
                              "MLMON_CHECK_INTERVAL": "0.2", "MLMON_AUDIT_KEY": ""})
    url = f"http://127.0.0.1:{port}"
    try:
        answers = [until(lambda: httpx.post(f"{url}/alpha", json={"x": 1.0}), lambda r: r.status_code == 503)]
        assert answers[0].json() == {"error": "model_not_approved", "model": "alpha", "version": "1",
                                     "reason": "not deployed (state draft)"}
        assert httpx.post(f"{url}/beta", json={"x": 1.0}).json()["reason"] == "not registered"
        registry.submit_for_review("alpha", "1", actor="ds@example.com")
        registry.approve_model("alpha", "1", "lead@example.com", "reviewed")
        registry.deploy_model("alpha", "1", actor="ops@example.com")
        served = until(lambda: httpx.post(f"{url}/alpha", json={"x": 1.0}), lambda r: r.status_code == 200)
        assert served.json() == {"prediction": 2.0}
        until(lambda: registry.audit.query(model="alpha", event_type="first_served"), bool)
    finally:
        kill_service(proc)
        registry.close()


def until(get, ok, timeout=10.0):
    """``get()`` again until ``ok`` of it (or the timeout: then the last answer, for the assert)."""
    deadline = time.monotonic() + timeout
    while True:
        found = get()
        if ok(found) or time.monotonic() > deadline:
            assert ok(found), found
            return found
        time.sleep(0.1)
