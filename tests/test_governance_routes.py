"""The model registry over HTTP (/mlmon/registry): the domain text's exercise flow through the
routes, the token, bounded bodies, and each refusal's status (400, 404, 409, 413, 503)."""

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from mlmon_middleware import Monitor, MonitorConfig
from mlmon_middleware.governance import ModelRegistry
from mlmon_middleware.limits import MAX_GOVERNANCE_BYTES
from mlmon_middleware.routes import routes

TOKEN = {"Authorization": "Bearer s3cret"}
SHA = "ab" * 32
METRICS = {"accuracy": 0.95, "precision": 0.92, "recall": 0.88}


@pytest.fixture
def served(tmp_path):
    """A client of mlmon's routes with a prediction log (the registry's database) and a token;
    yields (client, the log's folder, the monitor)."""
    mon = Monitor(MonitorConfig(tracing=False, store_dir=str(tmp_path), api_token="s3cret"))
    with TestClient(Starlette(routes=routes(mon))) as client:
        yield client, str(tmp_path), mon
    mon.shutdown()


def post(client, path, body=None, **kwargs):
    return client.post(path, json=body, headers={**TOKEN, **kwargs.pop("headers", {})}, **kwargs)


def test_the_exercise_flow_through_the_routes(served):
    client, store, _ = served
    with ModelRegistry(store) as registry:  # a per-model policy, as `mlmon registry policy` sets it
        registry.set_policy("fraud", "risk-officer", required_metrics=["accuracy", "precision", "recall"])
    registration = {"name": "fraud", "version": "v1", "actor": "ds@example.com", "artifact_sha256": SHA,
                    "group_metrics": {"region=EU": {"recall": 0.86}}, "facts": {"owner": "risk-team"}}

    missing = post(client, "/mlmon/registry", {**registration, "metrics": {"accuracy": 0.95}})
    assert missing.status_code == 400, missing.text
    assert missing.json()["error"] == "MissingMetrics" and missing.json()["missing"] == ["precision", "recall"]
    created = post(client, "/mlmon/registry", {**registration, "metrics": METRICS})
    assert created.status_code == 201 and created.json()["state"] == "draft", created.text
    assert created.json()["facts"]["owner"] == "risk-team"
    again = post(client, "/mlmon/registry", {**registration, "metrics": METRICS})
    assert again.status_code == 409 and again.json()["error"] == "VersionExists"

    refused = post(client, "/mlmon/registry/fraud/v1/deploy", {"actor": "ops@example.com"})
    assert refused.status_code == 409 and refused.json()["error"] == "ApprovalRequired", refused.text
    assert post(client, "/mlmon/registry/fraud/v1/submit", {"actor": "ds@example.com"}).json()["state"] == "in_review"
    own = post(client, "/mlmon/registry/fraud/v1/approve", {"actor": "DS@example.com ", "reason": "fine"})
    assert own.status_code == 400 and own.json()["error"] == "FourEyesViolation"
    approved = post(client, "/mlmon/registry/fraud/v1/approve", {"actor": "lead@example.com", "reason": "reviewed"})
    assert approved.status_code == 200 and approved.json()["approved_by"] == "lead@example.com"
    deployed = post(client, "/mlmon/registry/fraud/v1/deploy", {"actor": "ops@example.com"})
    assert deployed.status_code == 200 and deployed.json()["state"] == "deployed"
    nothing_before = post(client, "/mlmon/registry/fraud/rollback", {"actor": "ops@example.com", "reason": "slow"})
    assert nothing_before.status_code == 409 and nothing_before.json()["error"] == "InvalidTransition"

    one = client.get("/mlmon/registry/fraud/v1", headers=TOKEN).json()
    model = client.get("/mlmon/registry/fraud", headers=TOKEN).json()
    listed = client.get("/mlmon/registry", params={"model": "fraud"}, headers=TOKEN).json()
    assert one["state"] == "deployed" and one["artifact_sha256"] == SHA and one["metrics"] == METRICS
    assert model["deployed"] == "v1" and model["policy"]["required_metrics"] == ["accuracy", "precision", "recall"]
    assert [v["version"] for v in listed["versions"]] == ["v1"]
    with ModelRegistry(store) as registry:  # the audit log has each step, with the actor the body named
        events = [(e.event_type, e.actor) for e in registry.get_audit_log("fraud")]
        assert registry.audit.verify().ok
    assert events == [("policy_changed", "risk-officer"), ("registered", "ds@example.com"),
                      ("submitted", "ds@example.com"), ("approved", "lead@example.com"), ("deployed", "ops@example.com")]


def test_a_second_deployment_rolls_back_and_a_version_retires(served):
    client, _, _ = served
    for version in ("v1", "v2"):
        post(client, "/mlmon/registry", {"name": "m", "version": version, "actor": "ds", "artifact_sha256": SHA})
        post(client, f"/mlmon/registry/m/{version}/submit", {"actor": "ds"})
        assert post(client, f"/mlmon/registry/m/{version}/approve", {"actor": "lead"}).status_code == 400  # why?
        post(client, f"/mlmon/registry/m/{version}/approve", {"actor": "lead", "reason": "reviewed"})
        assert post(client, f"/mlmon/registry/m/{version}/deploy", {"actor": "ops"}).status_code == 200
    back = post(client, "/mlmon/registry/m/rollback", {"actor": "ops", "reason": "latency doubled"})
    assert back.status_code == 200 and back.json()["version"] == "v1" and back.json()["state"] == "deployed"
    assert client.get("/mlmon/registry/m/v2", headers=TOKEN).json()["state"] == "rolled_back"
    no_reason = post(client, "/mlmon/registry/m/v2/reject", {"actor": "lead"})
    assert no_reason.status_code == 400 and "reason is required" in no_reason.json()["detail"]
    not_in_review = post(client, "/mlmon/registry/m/v2/reject", {"actor": "lead", "reason": "too slow"})
    assert not_in_review.status_code == 409 and "rolled_back" in not_in_review.json()["detail"]
    retired = post(client, "/mlmon/registry/m/v1/retire", {"actor": "ops", "reason": "replaced"})
    assert retired.json()["state"] == "retired" and client.get("/mlmon/registry/m", headers=TOKEN).json()["deployed"] is None


def test_bad_input_is_a_clear_400_unknown_things_a_404(served):
    client, _, mon = served
    post(client, "/mlmon/registry", {"name": "m", "version": "1", "actor": "ds", "artifact_sha256": SHA})
    cases = {
        "not JSON": client.post("/mlmon/registry/m/1/submit", content=b"{nope", headers=TOKEN),
        "a list": post(client, "/mlmon/registry/m/1/submit", [1]),
        "no actor": post(client, "/mlmon/registry/m/1/submit", {}),
        "no registrant": post(client, "/mlmon/registry", {"name": "m", "version": "2", "artifact_sha256": SHA}),
        "unknown field": post(client, "/mlmon/registry/m/1/submit", {"actor": "ds", "who": "x"}),
        "server path": post(client, "/mlmon/registry", {"name": "m", "version": "2", "actor": "ds",
                                                        "model_artifact": "/etc/passwd"}),
        "bad hash": post(client, "/mlmon/registry", {"name": "m", "version": "2", "actor": "ds", "artifact_sha256": "x"}),
        "bad metric": post(client, "/mlmon/registry", {"name": "m", "version": "2", "actor": "ds",
                                                       "artifact_sha256": SHA, "metrics": {"a": "high"}}),
        "long reason": post(client, "/mlmon/registry/m/1/retire", {"actor": "ds", "reason": "x" * 5000}),
    }
    for case, response in cases.items():
        assert response.status_code == 400 and response.json()["detail"], (case, response.text)
    assert "SHA-256" in cases["server path"].json()["detail"]
    assert client.get("/mlmon/registry/m/9", headers=TOKEN).status_code == 404
    assert client.get("/mlmon/registry/nobody", headers=TOKEN).status_code == 404
    assert post(client, "/mlmon/registry/m/9/submit", {"actor": "ds"}).status_code == 404
    step = post(client, "/mlmon/registry/m/1/publish", {"actor": "ds"})
    assert step.status_code == 404 and "submit" in step.json()["detail"]

    huge = client.post("/mlmon/registry/m/1/submit", content=b" " * (MAX_GOVERNANCE_BYTES + 1), headers=TOKEN)
    assert huge.status_code == 413 and mon.limits.counts()["governance_body"] == 1
    assert client.get("/mlmon/registry/m/1", headers=TOKEN).json()["state"] == "draft"  # nothing changed


def test_the_token_guards_reads_and_writes(served):
    client, _, _ = served
    assert client.get("/mlmon/registry").status_code == 401
    assert client.get("/mlmon/registry", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.post("/mlmon/registry", json={"name": "m"}).status_code == 401
    assert client.get("/mlmon/registry", headers=TOKEN).json() == {"versions": []}


def test_without_a_token_the_registry_is_off_and_without_a_log_it_is_503(tmp_path):
    open_reads = Monitor(MonitorConfig(tracing=False, store_dir=str(tmp_path)))
    no_log = Monitor(MonitorConfig(tracing=False, api_token="s3cret"))
    try:
        with TestClient(Starlette(routes=routes(open_reads))) as client:
            for path in ("/mlmon/registry", "/mlmon/registry/m", "/mlmon/registry/m/1", "/mlmon/card?model=m"):
                closed = client.get(path)  # no token on this service: the registry is off, reads included
                assert closed.status_code == 403 and "MLMON_API_TOKEN" in closed.json()["detail"], path
            off = client.post("/mlmon/registry/m/1/submit", json={"actor": "ds"})
            assert off.status_code == 403 and "MLMON_API_TOKEN" in off.json()["detail"]
        with TestClient(Starlette(routes=routes(no_log))) as client:
            for response in (client.get("/mlmon/registry", headers=TOKEN),
                             post(client, "/mlmon/registry/m/1/submit", {"actor": "ds"})):
                assert response.status_code == 503 and "MLMON_STORE_DIR" in response.json()["detail"]
        with TestClient(Starlette(routes=routes(no_log, registry=None))) as client:
            assert client.get("/mlmon/registry", headers=TOKEN).status_code == 404
    finally:
        open_reads.shutdown()
        no_log.shutdown()


def test_the_model_card_over_http(served):
    client, store, _ = served
    with ModelRegistry(store) as registry:
        registry.register_model("fraud", "v1", None, METRICS, "ds@example.com", artifact_sha256=SHA,
                                facts={"owner": "risk-team", "intended_use": "flag <b>card</b> fraud"})
    html = client.get("/mlmon/card", params={"model": "fraud", "version": "v1"}, headers=TOKEN)
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html"), html.text
    assert "risk-team" in html.text and "flag &lt;b&gt;card&lt;/b&gt; fraud" in html.text
    md = client.get("/mlmon/card", params={"model": "fraud", "version": "v1", "format": "md"}, headers=TOKEN)
    assert md.headers["content-type"].startswith("text/markdown") and "risk-team" in md.text
    assert client.get("/mlmon/card", params={"model": "fraud", "version": "v1"}).status_code == 401
    assert client.get("/mlmon/card", params={"model": "fraud", "version": "v9"}, headers=TOKEN).status_code == 404
    assert client.get("/mlmon/card", params={"model": "fraud", "format": "pdf"}, headers=TOKEN).status_code == 400


def test_a_broken_audit_chain_refuses_registry_changes_with_a_503(served):
    import sqlite3

    client, store, mon = served
    created = post(client, "/mlmon/registry", {"name": "m", "version": "v1", "actor": "ds", "artifact_sha256": SHA})
    assert created.status_code == 201
    with sqlite3.connect(f"{store}/predictions.sqlite") as db:  # the head removed: the end may have been cut
        db.execute("DELETE FROM audit_head")
    refused = post(client, "/mlmon/registry/m/v1/submit", {"actor": "ds"})
    assert refused.status_code == 503 and refused.json()["error"] == "ChainBroken", refused.text
    assert "mlmon audit verify" in refused.json()["detail"] and mon.errors.counts().get("audit")
    assert client.get("/mlmon/registry/m/v1", headers=TOKEN).json()["state"] == "draft"  # nothing changed
