"""What a client sends that no writer downstream can hold, or that must not become a label:
text that is not valid Unicode, objects as segment values, labels a regression cannot use.
Each is counted and left out (or made valid), and every route and check goes on."""

import json
import os
import stat
import time

import numpy as np
import orjson
import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from mlmon_middleware import Baseline
from mlmon_middleware.drift.policy import DriftPolicy
from mlmon_middleware.instruments import PREDICTION, PREDICTION_ID
from mlmon_middleware.metrics import compute_metrics
from mlmon_middleware.routes import routes
from mlmon_middleware.store import SQLiteStore
from mlmon_middleware.store_types import decode_json

TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def routes_of(h):
    return TestClient(Starlette(routes=routes(h.monitor)), raise_server_exceptions=False)


def test_a_lone_surrogate_in_names_and_values_is_counted_and_every_route_still_answers(harness_factory, tmp_path):
    h = harness_factory(tracing=False, check_interval=0, store_dir=str(tmp_path), api_token=TOKEN)
    model = h.monitor.model("m", warmup_rows=20, segments=["region"])
    # json.loads (Starlette's, FastAPI's) reads the escape "\ud800" as a lone surrogate
    rows = [json.loads('{"amount\\ud800": 1.0, "amount": %d, "country": "fr\\udfff", "region": "eu\\ud800"}' % i)
            for i in range(40)]
    ids = [model.record(row, {"prediction": 0.5, "echo\\ud800": row["country"]}) for row in rows]
    h.monitor.flush()
    assert model.schema.names == ("amount", "country", "region")  # the invalid name stays unmonitored
    counted = {a["reason"]: p.value for a, p in h.points("mlmon.capture.errors")}
    assert counted["invalid_text"] == 1 + 40  # the name once, then each row (its country and region)
    model.check_now()
    assert model.baseline is not None  # the warm-up baseline was built (its schema hash reads every name)
    with routes_of(h) as client:
        for path in ("/mlmon/health", "/mlmon/drift", "/mlmon/metrics", f"/mlmon/predictions/{ids[0]}"):
            response = client.get(path, headers=AUTH)
            assert response.status_code == 200, (path, response.text[:200])
        logged = client.get(f"/mlmon/predictions/{ids[0]}", headers=AUTH).json()
    # what was logged reads back, each lone surrogate as the six characters of its escape
    assert logged["features"]["amount\\ud800"] == 1.0 and logged["features"]["country"] == "fr\\udfff"
    assert logged["segments"] == {"region": "eu\\ud800"}
    assert any("amount\\ud800" in name for name in model.coverage()["unmonitored_fields"])
    orjson.dumps(model.coverage())


def test_a_category_with_a_lone_surrogate_leaves_a_declared_baseline_report_readable(harness):
    baseline = Baseline.from_data([{"amount": float(i), "region": "eu" if i % 2 else "us"} for i in range(200)])
    model = harness.monitor.model("m", baseline=baseline)
    for i in range(50):
        model.record({"amount": float(i), "region": "us"}, {"prediction": 0})
    model.record(json.loads('{"amount": 1.0, "region": "eu\\ud800"}'), {"prediction": 1})
    harness.monitor.flush()
    report = model.check_now()
    orjson.dumps(report)  # no text in it that UTF-8 cannot hold
    assert {a["reason"]: p.value for a, p in harness.points("mlmon.capture.errors")} == {"invalid_text": 1}


def test_segment_values_that_are_objects_never_reach_a_label(harness_factory, tmp_path):
    h = harness_factory(tracing=False, check_interval=0, store_dir=str(tmp_path))
    model = h.monitor.model("clf", segments=["region"])
    secret = {"ssn": "123-45-6789", "pad": "A" * 20_000}
    ids = [model.record({"x": 1.0, "region": value}, {"prediction": 1})
           for value in (secret, ["a", "b"], "B" * 20_000, 2**70, 10**5000, True, 7)]
    h.monitor.flush()
    model.record_outcomes([(pid, 1, None) for pid in ids])
    model.check_now()
    text, _ = h.monitor.telemetry.prometheus_text()
    assert b"123-45-6789" not in text
    assert max(len(line) for line in text.splitlines()) < 1_000
    segments = [model.lookup(pid)["segments"]["region"] for pid in ids]
    assert segments[:2] == [None, None]  # an object or a list is no segment
    assert len(segments[2]) < 300 and segments[3] == str(2**70) and segments[4] is None and segments[5:] == [True, 7]
    assert model.lookup(ids[4])["features"]["region"] == "<an integer of 16610 bits>"  # logged all the same


def test_numpy_segment_values_are_the_segments_their_python_values_are(harness_factory, tmp_path):
    # a row built from a DataFrame or an array holds numpy scalars where JSON gives Python values
    h = harness_factory(tracing=False, check_interval=0, store_dir=str(tmp_path))
    model = h.monitor.model("clf", segments=["flag", "tier"], performance={"task": "binary", "count_window": 1000})
    rows = [{"x": 1.0, "flag": flag, "tier": tier} for flag, tier in
            [(True, 3), (np.True_, np.int64(3)), (False, 4), (np.False_, np.int32(4))] * 10]
    ids = [model.record(row, {"prediction": 1}) for row in rows]
    h.monitor.flush()
    model.record_outcomes([(pid, 1, None) for pid in ids])
    assert [model.lookup(pid)["segments"] for pid in ids[:4]] == [
        {"flag": True, "tier": 3}, {"flag": True, "tier": 3}, {"flag": False, "tier": 4}, {"flag": False, "tier": 4}]
    segments = model.performance_report()["windows"]["last_1000"]["segments"]
    assert {value: m["count"] for value, m in segments["flag"].items()} == {"True": 20.0, "False": 20.0}
    assert {value: m["count"] for value, m in segments["tier"].items()} == {"3": 20.0, "4": 20.0}


def test_a_regression_label_that_is_not_a_number_is_refused_at_the_route_and_skipped_in_the_log(harness_factory, tmp_path):
    h = harness_factory(tracing=False, check_interval=0, store_dir=str(tmp_path), api_token=TOKEN)
    model = h.monitor.model("reg", performance={"task": "regression"})
    ids = [model.record({"x": float(i), "y": 1.0}, {"prediction": 0.5}) for i in range(60)]
    h.monitor.flush()
    with routes_of(h) as client:
        for bad in ("oops", None, True, [1.0], {"value": 1.0}, "inf"):
            refused = client.post("/mlmon/feedback", json=[{"prediction_id": ids[0], "actual": bad}], headers=AUTH)
            assert refused.status_code == 422 and "finite number" in refused.text, (bad, refused.text)
        assert client.post("/mlmon/feedback", json=[{"prediction_id": ids[1], "actual": 2.0}], headers=AUTH).status_code == 200
    # labels recorded in code are not checked: a bad one in the log is left out, and drift goes on
    model.record_outcomes([(ids[2], "oops", None), (ids[3], 1.5, None), (ids[4], "2.5", None)])
    model.check_now()
    window = model.performance_report()["windows"]["last_1000"]
    assert window["rows"] == 4 and window["overall"]["count"] == 3.0  # the unusable label is left out
    assert model.performance_report()["concept_drift"]["errors_seen"] == 3
    assert h.monitor.errors.counts() == {} and model.checker.last_run > 0


def test_regression_metrics_leave_out_what_is_no_finite_number():
    got = compute_metrics("regression", [1.0, 2.0, {"p": 3.0}, "x", 5.0, 10**400], [1.5, "oops", 2.0, 4.0, float("nan"), 1.0])
    expected = compute_metrics("regression", [1.0, 3.0], [1.5, 2.0])
    assert got == expected and got["count"] == 2.0
    # numbers of every kind the old conversion took still count: numpy scalars, text of a number
    assert compute_metrics("regression", [1.0, 2.0, 3.0], [np.int64(1), np.float32(2.5), "3"]) == \
        compute_metrics("regression", [1.0, 2.0, 3.0], [1.0, 2.5, 3.0])
    assert compute_metrics("regression", ["x"], ["y"]) == {"count": 0.0, "mae": None, "rmse": None, "mape": None, "r2": None}


def test_a_failing_performance_step_leaves_drift_going_and_its_alerts_as_they_were(harness_factory, tmp_path, monkeypatch):
    h = harness_factory(tracing=False, check_interval=0, store_dir=str(tmp_path))
    events = []
    model = h.monitor.model("m", warmup_rows=20, on_alert=events.append, drift_policy=DriftPolicy(fire_after=1, resolve_after=1),
                            performance={"task": "binary", "count_window": 50, "reference": {"accuracy": 0.99}})
    for i in range(60):  # every label wrong: accuracy 0 against 0.99
        model.record_outcome(model.record({"x": float(i)}, {"prediction": 0.9}), 0)
    model.check_now()
    fired = [(e["alertname"], e["state"]) for e in events]
    assert fired and set(fired) == {("PerformanceDegradation", "firing")}  # both windows'

    def broken(*args, **kwargs):
        raise RuntimeError("performance broke")

    monkeypatch.setattr(model.checker.performance, "compute", broken)
    for _ in range(3):
        report = model.check_now()
    assert [(e["alertname"], e["state"]) for e in events] == fired  # not resolved by a step that could not judge
    assert report["performance_status"].startswith("failed") and report["features"]  # drift was judged
    assert model.performance_report()["status"].startswith("failed")  # no stale "ok" report served
    assert h.monitor.errors.counts().get("check_performance") == 3


def test_rows_logged_by_an_earlier_version_with_surrogate_escapes_still_read():
    assert decode_json('{"k\\ud800": ["fr\\udfff", 1]}') == {"k\\ud800": ["fr\\udfff", 1]}
    assert decode_json('{"ok": "\\ud83d\\ude00"}') == {"ok": "😀"}  # a valid pair stays itself


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_a_new_prediction_log_is_readable_by_its_owner_only(tmp_path):
    umask = os.umask(0)  # the most permissive: nothing but the store's own modes keeps others out
    try:
        store = SQLiteStore(tmp_path / "logs" / "predictions.sqlite")
    finally:
        os.umask(umask)
    try:
        for path in (tmp_path / "logs", tmp_path / "logs" / "predictions.sqlite"):
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, oct(path.stat().st_mode)
    finally:
        store.close()


def test_an_answer_that_echoes_many_client_names_stays_bounded_in_spans_and_the_output_schema(harness_factory):
    h = harness_factory(max_features=16)
    model = h.monitor.model("m")
    answer = {json.loads('"k\\ud800"'): json.loads('"v\\udfff"'), "big": 2**70}
    answer.update({f"echo{i}": "x" * 5_000 for i in range(500)})
    model.record({"x": 1.0}, {"prediction": answer})
    (span,) = h.finished_spans()
    outputs = {k: v for k, v in span.attributes.items() if k.startswith(f"{PREDICTION}.") and k != PREDICTION_ID}
    assert len(outputs) == 32 and max(len(str(v)) for v in outputs.values()) < 300
    assert all(isinstance(v, str) and v.encode() and k.encode() for k, v in outputs.items())  # valid text; 2**70 as text
    assert len(model.output_schema.names) == 16
    assert {a["reason"]: p.value for a, p in h.points("mlmon.capture.errors")}["prediction_too_wide"] == 502 - 16


def test_a_row_too_long_to_log_whole_is_logged_cut_and_counted(harness_factory, tmp_path):
    h = harness_factory(tracing=False, check_interval=0, store_dir=str(tmp_path))
    model = h.monitor.model("m")
    row = {"x": 1.0, "essay": "w" * 200_000, **{f"extra{i}": i for i in range(5_000)}}
    small, big = model.record({"x": 2.0, "essay": "short"}, {"prediction": 0}), model.record(row, {"prediction": 1})
    h.monitor.flush()
    assert model.lookup(small)["features"] == {"x": 2.0, "essay": "short"}  # a row within the bound, whole
    logged = model.lookup(big)["features"]
    assert len(logged) == 1_000 and logged["x"] == 1.0 and logged["extra0"] == 0
    assert logged["essay"].startswith("w" * 256 + "…#") and len(orjson.dumps(logged)) < 100_000
    assert h.monitor.limits.counts() == {"logged_row": 1}


def test_a_cut_row_stays_within_the_bound_and_so_does_a_logged_answer(harness_factory, tmp_path):
    h = harness_factory(tracing=False, check_interval=0, store_dir=str(tmp_path))
    model = h.monitor.model("m")
    row = {"x": 1.0, **{f"field{i}" + "n" * 120: "t" * 1_000 for i in range(900)}, "huge": 10**4000}
    pid = model.record(row, {"prediction": {f"class{i}": "p" * 1_000 for i in range(900)}})
    h.monitor.flush()
    logged = model.lookup(pid)
    for column in ("features", "prediction"):
        assert len(orjson.dumps(logged[column])) <= 65_536 + 1_000, column
    assert h.monitor.limits.counts() == {"logged_row": 2}


def test_segment_values_logged_by_an_earlier_version_are_bounded_when_read(harness_factory, tmp_path):
    from mlmon_middleware.store import LogRow

    h = harness_factory(tracing=False, check_interval=0, store_dir=str(tmp_path))
    model = h.monitor.model("clf", segments=["region"])
    model.record({"x": 1.0, "region": "eu"}, {"prediction": 1})
    h.monitor.flush()
    old = orjson.dumps({"region": {"ssn": "123-45-6789", "pad": "A" * 20_000}}).decode()
    store = SQLiteStore(h.monitor.store_path)  # a second connection, as an older replica's
    store.write([LogRow("old-row", "clf", "unknown", time.time(), '{"prediction": 1}', old, None, None)])
    store.close()
    model.record_outcomes([("old-row", 1, None)])
    model.check_now()
    text, _ = h.monitor.telemetry.prometheus_text()
    assert b"123-45-6789" not in text and max(len(line) for line in text.splitlines()) < 1_000


def test_the_queue_holds_bodies_captured_by_path_up_to_its_byte_bound(harness_factory, monkeypatch):
    """Records are bounded in number; one captured by path holds its bodies too, so their bytes
    are bounded as well: past the bound a record is dropped and counted, and once the pipeline
    has taken the queued ones, records are accepted again. Serving never changes."""
    import asyncio

    from mlmon_middleware import Endpoint, MLMonitorMiddleware, pipeline

    monkeypatch.setattr(pipeline, "MAX_QUEUED_BODY_BYTES", 10_000)
    h = harness_factory(tracing=False, check_interval=0, flush_interval=3600)
    body = orjson.dumps({"x": 1.0, "note": "n" * 2_000})

    async def app(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"prediction": 0.5}'})

    wrapped = MLMonitorMiddleware(app, registry=h.monitor, endpoints=[Endpoint("/predict", model="m")])

    async def call():
        sent = []

        async def receive():
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/predict", "headers": [(b"content-type", b"application/json")]}
        await wrapped(scope, receive, send)
        return sent[0]["status"]

    h.monitor.current_context()  # started: its pipeline thread waits an hour between flushes
    assert [asyncio.run(call()) for _ in range(8)] == [200] * 8  # served, every one
    assert len(h.monitor.pipeline) == 4 and h.monitor.errors.counts() == {"queue_full": 4}  # 4 × 2,042 bytes fit
    h.monitor.flush()
    assert asyncio.run(call()) == 200 and len(h.monitor.pipeline) == 1  # room again
    h.monitor.flush()
    assert h.monitor.model("m").health()["predictions"]["ok"] == 5
