"""Secure by default: who may use which route, tokens, on-demand checks, and the bounds on what a
client controls (bodies, labels, names, values, schema width, models), each counted when hit."""

import sqlite3

import numpy as np
import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from mlmon_fastapi import instrument_app
from mlmon_middleware import Baseline, DriftPolicy, monitor
from mlmon_middleware.limits import MAX_CATEGORY_CHARS, MAX_FEEDBACK_ITEMS, MAX_LABEL_BYTES, MAX_NAME_CHARS

TOKEN = "s3cret"
AUTH = {"Authorization": "Bearer " + TOKEN}
READS = ["/mlmon/drift", "/mlmon/performance", "/mlmon/alerts", "/mlmon/predictions", "/mlmon/predictions/some-id",
         "/metrics", "/mlmon/metrics"]  # the metrics hold inferred feature names and declared segment values


def make_app(mon, baseline=None, policy=None):
    app = FastAPI()

    @app.post("/predict")
    @monitor(model="m", registry=mon, baseline=baseline, drift_policy=policy)
    def predict(row: dict) -> dict:
        return {"prediction": 0.25}

    instrument_app(app, registry=mon)
    return app


def auth_bytes(value: bytes):
    """Headers with a raw Authorization value (httpx would refuse non-ASCII text)."""
    return [(b"authorization", value)]


def test_without_a_token_writes_are_off_and_reads_hide_process_details(tmp_path, harness_factory):
    h = harness_factory(tracing=False, check_interval=0, store_dir=str(tmp_path))
    with TestClient(make_app(h.monitor)) as client:
        pid = client.post("/predict", json={"a": 1.0}).headers["x-prediction-id"]
        feedback = client.post("/mlmon/feedback", json={"prediction_id": pid, "actual": 1})
        refresh = client.get("/mlmon/drift", params={"refresh": "true"})
        reads = [client.get(path).status_code for path in READS[:4]]
        health = client.get("/mlmon/health").json()
        logged = h.monitor.model("m").lookup(pid)
    assert feedback.status_code == 403 and refresh.status_code == 403
    for answer in (feedback, refresh):
        detail = answer.json()["detail"]
        assert "MLMON_API_TOKEN" in detail and "MLMON_ALLOW_ANONYMOUS_WRITES=true" in detail
    assert reads == [200, 200, 200, 200]  # no token set: the reports are open (see guide.md)
    assert health["models"]["m"]["predictions"]["ok"] == 1 and health["prediction_log_enabled"] is True
    assert not {"pid", "prediction_log", "last_errors"} & set(health)
    assert "last_capture_errors" not in health["models"]["m"]
    assert logged["actual"] is None  # nothing was written


def test_with_a_token_every_input_derived_route_needs_it(tmp_path, harness_factory):
    h = harness_factory(tracing=False, check_interval=0, store_dir=str(tmp_path), api_token=TOKEN)
    with TestClient(make_app(h.monitor)) as client:
        pid = client.post("/predict", json={"region": "alice@example.com"}).headers["x-prediction-id"]
        anonymous = {path: client.get(path) for path in READS}
        wrong = [client.get("/mlmon/drift", headers={"Authorization": "Bearer nope"}),
                 client.get("/mlmon/drift", headers={"Authorization": "Basic " + TOKEN.encode().hex()}),
                 client.get("/mlmon/drift", headers={"Authorization": ""}),
                 client.get("/mlmon/drift", headers=auth_bytes("Bearer s3crét".encode())),
                 client.get("/mlmon/drift", headers=auth_bytes(b"Bearer \xff\xfe\x00")),
                 client.get("/mlmon/drift", headers=auth_bytes(b"Bearer " + b"x" * 8000)),
                 client.post("/mlmon/feedback", json={"prediction_id": pid, "actual": 1})]
        probe = client.get("/mlmon/health").json()
        open_routes = [client.get(p).status_code for p in ("/mlmon/",)]
        allowed = {path: client.get(path.replace("some-id", pid), headers=auth_bytes(b"Bearer " + TOKEN.encode()))
                   for path in READS}
        full = client.get("/mlmon/health", headers=AUTH).json()
        labelled = client.post("/mlmon/feedback", json={"prediction_id": pid, "actual": 1}, headers=AUTH)
    assert {p: r.status_code for p, r in anonymous.items()} == dict.fromkeys(READS, 401)
    assert all("alice" not in r.text for r in anonymous.values())
    assert anonymous["/mlmon/drift"].headers["www-authenticate"].startswith("Bearer")
    assert [r.status_code for r in wrong] == [401] * 7
    assert probe == {"status": "ok", "token_required": True}
    assert open_routes == [200]
    assert {p: r.status_code for p, r in allowed.items()} == dict.fromkeys(READS, 200)
    assert full["pid"] > 0 and full["prediction_log"].endswith("predictions.sqlite")
    assert labelled.json()["labelled"] == 1


def test_metrics_public_opens_the_metrics_alone_to_scrapers_without_the_token(harness_factory):
    scraped = {}
    for public in (False, True):
        h = harness_factory(tracing=False, check_interval=0, api_token=TOKEN, metrics_public=public)
        app = FastAPI()

        @app.post("/predict")
        @monitor(model="m", registry=h.monitor, warmup_rows=10)  # a baseline from the first rows: drift per feature
        def predict(row: dict) -> dict:
            return {"prediction": 0.25}

        instrument_app(app, registry=h.monitor)
        with TestClient(app) as client:
            for i in range(30):
                client.post("/predict", json={"region": "eu", "amount": float(i)})
            h.monitor.flush()
            h.monitor.model("m").check_now()
            scraped[public] = {path: client.get(path) for path in ("/metrics", "/mlmon/metrics")}
            drift = client.get("/mlmon/drift")
    closed, opened = scraped[False], scraped[True]
    assert {path: r.status_code for path, r in closed.items()} == {"/metrics": 401, "/mlmon/metrics": 401}
    assert all("region" not in r.text for r in closed.values())
    assert {path: r.status_code for path, r in opened.items()} == {"/metrics": 200, "/mlmon/metrics": 200}
    assert 'feature="region"' in opened["/metrics"].text  # a client-chosen field name: why it is closed by default
    assert drift.status_code == 401  # every other input-derived read still needs the token


def test_metrics_public_reads_its_environment_variable():
    from mlmon_middleware import MonitorConfig
    from mlmon_middleware.config import ConfigError

    assert MonitorConfig().metrics_public is False
    assert MonitorConfig().with_env({"MLMON_METRICS_PUBLIC": "true"}).metrics_public is True
    with pytest.raises(ConfigError, match="MLMON_METRICS_PUBLIC"):
        MonitorConfig().with_env({"MLMON_METRICS_PUBLIC": "maybe"})


def test_on_demand_checks_are_rate_limited_and_never_fire_an_alert(harness_factory):
    rng = np.random.default_rng(3)
    baseline = Baseline.from_data([{"a": float(v)} for v in rng.normal(size=2000)])
    h = harness_factory(tracing=False, check_interval=0, api_token=TOKEN, refresh_interval=3600)
    app = make_app(h.monitor, baseline, DriftPolicy(fire_after=1, resolve_after=1))
    with TestClient(app) as client:
        for v in rng.normal(3.0, 1.0, 300):  # far from the baseline: every check sees drift
            client.post("/predict", json={"a": float(v)})
        first = client.get("/mlmon/drift", params={"refresh": "true"}, headers=AUTH)
        again = [client.get("/mlmon/alerts", params={"refresh": "true"}, headers=AUTH) for _ in range(5)]
        h.monitor.model("m")._last_on_demand = None  # the interval is over
        second = client.get("/mlmon/alerts", params={"refresh": "true"}, headers=AUTH)
        events_after_on_demand = sum(h.monitor.model("m").checker.alerts.events.values())
        h.monitor.model("m").check_now()  # a scheduled check (the analyzer's) does count
        fired = client.get("/mlmon/alerts", headers=AUTH).json()["m"]
    assert first.status_code == 200 and first.json()["m"]["drifted"] == ["a"]
    assert first.json()["m"]["alerts"] == []  # drift reported, no alert from an on-demand check
    assert "x-mlmon-refresh" not in first.headers
    assert all(r.headers["x-mlmon-refresh"] == "limited" and r.headers["retry-after"] == "3600" for r in again)
    assert second.status_code == 200 and "x-mlmon-refresh" not in second.headers
    assert events_after_on_demand == 0
    assert ("FeatureDrift", "a") in {(a["alertname"], a["subject"]) for a in fired["active"]}
    assert h.monitor.limits.counts() == {"refresh_rate": 5}
    assert ({"limit": "refresh_rate"}, 5) in [(a, p.value) for a, p in h.points("mlmon.limit.hits")]


def test_feedback_bounds(tmp_path, harness_factory):
    h = harness_factory(tracing=False, check_interval=0, store_dir=str(tmp_path), api_token=TOKEN,
                        max_feedback_bytes=10_000)
    with TestClient(make_app(h.monitor)) as client:
        pid = client.post("/predict", json={"a": 1.0}).headers["x-prediction-id"]
        big = client.post("/mlmon/feedback", content=b"[" + b'{"prediction_id": "p", "actual": 1},' * 400 + b"{}]",
                          headers={**AUTH, "content-type": "application/json"})

        def chunks():  # no Content-Length: the limit holds while the body streams in
            for _ in range(100):
                yield b" " * 1000

        streamed = client.post("/mlmon/feedback", content=chunks(), headers=AUTH)
        label = client.post("/mlmon/feedback", json={"prediction_id": pid, "actual": "x" * (MAX_LABEL_BYTES + 1)},
                            headers=AUTH)
        long_id = client.post("/mlmon/feedback", json={"prediction_id": "p" * (MAX_NAME_CHARS + 1), "actual": 1},
                              headers=AUTH)
        ok = client.post("/mlmon/feedback", json={"prediction_id": pid, "actual": 1}, headers=AUTH)
    assert big.status_code == 413 and "max_feedback_bytes" in big.json()["detail"]
    assert streamed.status_code == 413
    assert label.status_code == 422 and f"larger than {MAX_LABEL_BYTES} bytes" in label.json()["detail"]
    assert long_id.status_code == 422 and len(long_id.text) < 300
    assert ok.json()["labelled"] == 1
    assert h.monitor.limits.counts() == {"feedback_body": 2, "label_value": 1}


def test_too_many_feedback_items(tmp_path, harness_factory):
    h = harness_factory(tracing=False, check_interval=0, store_dir=str(tmp_path), allow_anonymous_writes=True)
    with TestClient(make_app(h.monitor)) as client:
        client.post("/predict", json={"a": 1.0})
        many = client.post("/mlmon/feedback", json=[{"prediction_id": "p", "actual": 1}] * (MAX_FEEDBACK_ITEMS + 1))
    assert many.status_code == 422 and f"at most {MAX_FEEDBACK_ITEMS}" in many.json()["detail"]
    assert h.monitor.limits.counts() == {"feedback_items": 1}


def test_a_locked_log_answers_503_and_the_labels_can_be_sent_again(tmp_path, harness_factory):
    h = harness_factory(tracing=False, check_interval=0, store_dir=str(tmp_path), allow_anonymous_writes=True)
    with TestClient(make_app(h.monitor)) as client:
        pid = client.post("/predict", json={"a": 1.0}).headers["x-prediction-id"]
        h.monitor.flush()
        h.monitor.store_writer.flush()
        locker = sqlite3.connect(h.monitor.store_path, timeout=0)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            store = h.monitor.store_writer.store
            store._db.execute("PRAGMA busy_timeout = 100")  # don't wait the default 5 s in a test
            locked = client.post("/mlmon/feedback", json={"prediction_id": pid, "actual": 1})
        finally:
            locker.rollback()
            locker.close()
        again = client.post("/mlmon/feedback", json={"prediction_id": pid, "actual": 1})
    assert locked.status_code == 503 and locked.headers["retry-after"] == "1"
    assert "retry" in locked.json()["detail"]
    assert again.status_code == 200 and again.json()["labelled"] == 1


def test_models_beyond_the_cap_are_dropped_and_counted(harness_factory):
    h = harness_factory(tracing=False, check_interval=0, max_models=2)
    mon = h.monitor
    for name in ("a", "b", "c", "d"):
        mon.model(name).record({"x": 1.0}, 0.5)
    mon.flush()
    with pytest.raises(Exception, match="at most 128 characters"):
        mon.model("n" * 129)
    predicted = {attrs["mlmon.model.name"] for attrs, _ in h.points("mlmon.predictions")}
    assert sorted(mon.models) == ["a", "b"] and predicted == {"a", "b"}
    assert mon.limits.counts()["models"] == 2  # one per dropped record
    assert mon.health()["limit_hits"]["models"] == 2
    assert mon.model("e") is mon.model("f")  # one cheap stand-in, whatever the names


def test_an_inferred_schema_is_bounded(harness_factory):
    h = harness_factory(tracing=False, check_interval=0, max_features=16)
    model = h.monitor.model("wide")
    first = {f"k{i}": float(i) for i in range(20_000)}
    first["n" * 300_000] = 1.0  # a 300 kB field name
    model.record(first, 0.5)
    for i in range(50):
        model.record({"k0": float(i), "k1": "x" * 1_000_000, "k2": 2.0, "z" * 5000: 1.0}, 0.5)
    h.monitor.flush()
    health = model.health()
    errors = health["capture_errors"]
    assert len(model.schema.names) == 16 and all(len(n) <= MAX_NAME_CHARS for n in model.schema.names)
    assert errors["too_wide"] == 20_000 - 16 and errors["name_too_long"] == 1
    assert errors["type_mismatch"] == 50  # k1 was numeric in the first row: the long text is no number
    unmonitored = health["coverage"]["unmonitored_fields"]
    assert len(unmonitored) <= 1000 and all(len(name) <= MAX_NAME_CHARS + 13 for name in unmonitored)


def test_long_category_values_are_cut_and_stay_distinct(harness_factory):
    h = harness_factory(tracing=False, check_interval=0)
    model = h.monitor.model("cats", features={"city": "categorical"})
    values = ["a" * 5_000_000 + str(i) for i in range(3)] + ["short"]
    for v in values:
        model.record({"city": v}, 1)
    h.monitor.flush()
    held = model.window_snapshot()["features"]["categorical"][:, 0].tolist()
    assert held[-1] == "short" and len(set(held)) == 4
    assert all(len(v) <= MAX_CATEGORY_CHARS + 13 for v in held)
    assert model.health()["capture_errors"] == {"value_truncated": 3}


def test_non_string_keys_are_read_as_text(harness_factory):
    h = harness_factory(tracing=False, check_interval=0)
    model = h.monitor.model("ints", features=["0", "1"])
    for i in range(5):
        model.record({0: float(i), 1: 2.0 * i}, 0.5)
    h.monitor.flush()
    numeric = model.window_snapshot()["features"]["numeric"]
    assert numeric.tolist() == [[float(i), 2.0 * i] for i in range(5)]
    assert model.health()["capture_errors"] == {}


def test_tokens_are_compared_as_utf8_bytes(harness_factory):
    """A non-ASCII token works when sent as UTF-8 (as curl sends it); any other bytes are a 401.
    Raw ASGI scopes: the test client re-encodes header values as latin-1."""
    from starlette.requests import Request

    from mlmon_middleware.routes import Access

    access = Access(harness_factory(tracing=False, check_interval=0, api_token="tök€n").monitor)

    def request(value: bytes) -> Request:
        return Request({"type": "http", "headers": [(b"authorization", value)]})

    assert access.authorized(request("Bearer tök€n".encode()))
    assert not access.authorized(request("Bearer tök€n".encode("utf-16")))
    assert not access.authorized(request(b"Bearer t\xf6k\x80n"))
    assert access.read(request(b"\xff" * 10_000)).status_code == 401


def test_the_anonymous_writes_warning_names_the_real_path_and_needs_a_log(tmp_path, harness_factory, caplog):
    import logging

    from starlette.applications import Starlette

    from mlmon_middleware.routes import routes

    with caplog.at_level(logging.WARNING, logger="mlmon_middleware"):
        no_log = harness_factory(tracing=False, check_interval=0, allow_anonymous_writes=True)
        routes(no_log.monitor)  # labels need the log: nothing to warn about
        quiet = caplog.text
        logged = harness_factory(tracing=False, check_interval=0, allow_anonymous_writes=True, store_dir=str(tmp_path))
        Starlette(routes=routes(logged.monitor, feedback="/feedback", mounted_at="/mlmon"))  # as under BentoML
    assert "anyone" not in quiet
    assert caplog.text.count("can post ground-truth labels to /mlmon/feedback and run checks") == 1


def test_memory_of_oversized_input_goes_back_to_the_system_after_its_batch(harness_factory, monkeypatch):
    """After a batch with a value over its bound the pipeline trims the C heap (what freed
    megabyte values held would otherwise stay resident); ordinary batches never pay for it."""
    import mlmon_middleware.pipeline as pipeline

    calls = []
    monkeypatch.setattr(pipeline, "give_back", lambda: calls.append(1) or True)
    h = harness_factory(tracing=False, check_interval=0)
    model = h.monitor.model("cats", features={"city": "categorical"})
    model.record({"city": "short"}, 1)
    h.monitor.flush()
    assert calls == []
    model.record({"city": "v" * 1_000_000}, 1)
    h.monitor.flush()
    assert calls == [1]
    model.record({"city": "w" * 1_000_000}, 1)
    h.monitor.flush()
    assert calls == [1]  # at most one trim per TRIM_INTERVAL: this one is owed
    monkeypatch.setattr(pipeline, "TRIM_INTERVAL", 0.0)
    h.monitor.flush()  # nothing queued: the owed trim runs
    h.monitor.flush()
    assert calls == [1, 1]


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_give_back_returns_free_heap_pages_where_glibc_can():
    from mlmon_middleware.memory import give_back

    assert give_back() is True
