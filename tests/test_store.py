"""The prediction log and ground truth: store, writer, labels, feedback route, crash and restart."""

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import orjson
import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from mlmon_fastapi import instrument_app
from mlmon_middleware import Monitor, MonitorConfig, monitor
from mlmon_middleware.store import LogRow, SQLiteStore, StoreError
from mlmon_middleware.store_writer import StoreWriter


def rows_in(path):
    with sqlite3.connect(path) as db:
        return db.execute("SELECT prediction_id, prediction, segments, features, label FROM predictions ORDER BY ts").fetchall()


def test_store_labels_retention_and_counts(tmp_path):
    store = SQLiteStore(tmp_path / "log.db")
    now = time.time()
    store.write([LogRow(f"p{i}", "m", "1", now - 100 + i, "{}", "{}", None) for i in range(10)])
    store.write([LogRow("q", "other", "1", now - 500, "{}", "{}", None)])
    assert store.set_labels("m", [("p1", 1, now), ("p1", 0, now + 1), ("zz", 1, now)]) == [
        ("p1", "labelled", pytest.approx(99.0)), ("p1", "relabelled", pytest.approx(100.0)), ("zz", "unknown", None)]
    assert store.set_labels("other", [("p2", 1, now)]) == [("p2", "unknown", None)]  # ids are per model
    assert store.counts("m", since=0) == (10, 1)
    assert store.labelled("m", since=0)[0][3] == 0  # the latest label wins
    assert store.apply_retention(max_age=300, max_rows=None) == 1  # "q" is 500 s old
    assert store.apply_retention(max_age=None, max_rows=4) == 6
    assert store.counts("m", since=0) == (4, 0)
    store.close()


def test_unusable_logs_fail_at_start_up(tmp_path):
    corrupt = tmp_path / "bad"
    corrupt.mkdir()
    (corrupt / "predictions.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="predictions.sqlite' cannot be used: file is not a database"):
        Monitor(MonitorConfig(store_dir=str(corrupt)))
    blocked = tmp_path / "file"
    blocked.write_text("a file where the folder should be")
    with pytest.raises(StoreError, match="cannot be used"):
        Monitor(MonitorConfig(store_dir=str(blocked / "sub")))


def test_writer_drops_the_oldest_when_full_and_counts(tmp_path):
    dropped = []
    writer = StoreWriter(SQLiteStore(tmp_path / "log.db"), interval=60, max_queue=3, on_drop=dropped.append)
    writer.put([LogRow(f"p{i}", "m", "1", float(i), "{}", "{}", None) for i in range(5)])
    writer.close()
    assert len(dropped) == 2
    assert [r[0] for r in rows_in(tmp_path / "log.db")] == ["p2", "p3", "p4"]


def test_log_rows_segments_redaction_and_batch_ids(tmp_path, harness_factory):
    h = harness_factory(tracing=False, check_interval=0, store_dir=str(tmp_path))
    mm = h.monitor.model("m", segments=["region"], redact=["ssn"])
    single = mm.record({"amount": 5.0, "region": "eu", "ssn": "123"}, {"prediction": 0.2})
    batch = mm.record([{"amount": 1.0, "region": "us", "ssn": "9"}, {"amount": 2.0, "region": "eu", "ssn": "8"}], [0.1, 0.7])
    h.monitor.flush()
    h.monitor.store_writer.flush()
    rows = {r[0]: r for r in rows_in(tmp_path / "predictions.sqlite")}
    assert set(rows) == {single, f"{batch}:0", f"{batch}:1"}
    assert orjson.loads(rows[single][1]) == {"prediction": 0.2}
    assert orjson.loads(rows[single][2]) == {"region": "eu"}
    assert orjson.loads(rows[single][3]) == {"amount": 5.0, "region": "eu", "ssn": "[redacted]"}
    assert orjson.loads(rows[f"{batch}:1"][1]) == {"prediction": 0.7}
    none = h.monitor.model("quiet", log_features=None)
    pid = none.record({"a": 1.0}, 0.5)
    h.monitor.flush()
    h.monitor.store_writer.flush()
    assert {r[0]: r for r in rows_in(tmp_path / "predictions.sqlite")}[pid][3] is None


def test_record_outcomes_counts_labels_and_delays(tmp_path, harness_factory):
    h = harness_factory(tracing=False, check_interval=0, store_dir=str(tmp_path))
    mm = h.monitor.model("m")
    pid = mm.record({"a": 1.0}, 0.5)  # still in the pipeline queue: labels flush it first
    answer = mm.record_outcomes([(pid, 1, time.time() + 30), (pid, 0, None), ("nope", 1, None)])
    assert [r["status"] for r in answer["results"]] == ["labelled", "relabelled", "unknown"]
    assert (answer["labelled"], answer["relabelled"], answer["unknown"]) == (1, 1, 1)
    assert answer["results"][0]["delay_seconds"] == pytest.approx(30, abs=2)
    outcomes = {a["outcome"]: p.value for a, p in h.points("mlmon.labels")}
    assert outcomes == {"labelled": 1, "relabelled": 1, "unknown": 1}
    [(_, delay)] = h.points("mlmon.label.delay")
    assert delay.count == 2
    assert mm.label_coverage(since=0) == (1, 1)
    assert mm.health()["labels"] == {"labelled": 1, "relabelled": 1, "unknown": 1}
    report = mm.check_now()
    assert report["labels"]["coverage"]["1h"] == {"predictions": 1, "labelled": 1, "share": 1.0}
    coverage = {a["window"]: p.value for a, p in h.points("mlmon.label.coverage")}
    assert coverage == {"1h": 1.0, "24h": 1.0, "7d": 1.0}
    assert h.monitor.model("x").record_outcome(pid, 1)["status"] == "unknown"  # ids are per model


def test_record_outcome_needs_the_log(harness_factory):
    h = harness_factory(tracing=False, check_interval=0)
    with pytest.raises(StoreError, match="no prediction log: set MonitorConfig"):
        h.monitor.model("m").record_outcome("p", 1)


def make_app(mon):
    app = FastAPI()

    @app.post("/predict")
    @monitor(model="m", registry=mon)
    def predict(row: dict) -> dict:
        return {"prediction": 0.5}

    instrument_app(app, registry=mon)
    return app


def test_feedback_route(tmp_path, harness_factory, caplog):
    h = harness_factory(tracing=False, check_interval=0, store_dir=str(tmp_path), allow_anonymous_writes=True)
    with caplog.at_level(logging.WARNING, logger="mlmon_middleware"):
        app = make_app(h.monitor)
    assert caplog.text.count("anyone who reaches this service can post ground-truth labels to /mlmon/feedback") == 1
    with TestClient(app) as client:
        pid = client.post("/predict", json={"a": 1.0}).headers["x-prediction-id"]
        one = client.post("/mlmon/feedback", json={"prediction_id": pid, "actual": 1, "timestamp": "2030-01-01T00:00:00Z"})
        many = client.post("/mlmon/feedback", json=[{"prediction_id": pid, "actual": 0}, {"prediction_id": "x", "actual": 1}])
        bad = [client.post("/mlmon/feedback", content=body, headers={"content-type": "application/json"})
               for body in (b"{", b"[]", b'{"actual": 1}', b'{"prediction_id": "p"}', b'[1]',
                            b'{"prediction_id": "p", "actual": 1, "timestamp": "yesterday"}',
                            b'{"prediction_id": "p", "actual": 1, "model": "nope"}')]
    assert one.status_code == 200 and one.json()["results"][0]["status"] == "labelled"
    assert many.json()["relabelled"] == 1 and many.json()["unknown"] == 1
    assert [r["status"] for r in many.json()["results"]] == ["relabelled", "unknown"]
    assert [r.status_code for r in bad] == [422] * 7
    details = [r.json()["detail"] for r in bad]
    assert details[0].startswith("body is not JSON") and details[1] == "no labels in the body"
    assert details[2] == "item 0: prediction_id must be a non-empty string of at most 128 characters"
    assert details[3] == "item 0: actual is missing" and details[4].startswith("item 0: expected an object")
    assert "timestamp must be Unix seconds or ISO 8601" in details[5] and "model 'nope' is not monitored" in details[6]


def test_feedback_requires_the_token_when_set(tmp_path, harness_factory, caplog):
    h = harness_factory(tracing=False, check_interval=0, store_dir=str(tmp_path), api_token="s3cret")
    with caplog.at_level(logging.WARNING, logger="mlmon_middleware"):
        app = make_app(h.monitor)
    assert "anyone who reaches this service" not in caplog.text
    with TestClient(app) as client:
        pid = client.post("/predict", json={"a": 1.0}).headers["x-prediction-id"]
        body = {"prediction_id": pid, "actual": 1}
        assert client.post("/mlmon/feedback", json=body).status_code == 401
        assert client.post("/mlmon/feedback", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = client.post("/mlmon/feedback", json=body, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200 and ok.json()["labelled"] == 1


def test_feedback_without_a_log_says_how_to_get_one(harness_factory):
    h = harness_factory(tracing=False, check_interval=0, allow_anonymous_writes=True)
    with TestClient(make_app(h.monitor)) as client:
        answer = client.post("/mlmon/feedback", json={"prediction_id": "p", "actual": 1})
    assert answer.status_code == 409 and "MLMON_STORE_DIR" in answer.json()["detail"]


CHILD = textwrap.dedent("""
    import sys, time
    from mlmon_middleware import Monitor, MonitorConfig
    mon = Monitor(MonitorConfig(tracing=False, check_interval=0, store_dir=sys.argv[1]))
    model = mon.model("crash")
    i = 0
    while True:
        pid = model.record({"a": float(i)}, 0.5, prediction_id=f"id{i}")
        print(pid, time.time(), flush=True)
        i += 1
        time.sleep(0.002)
""")


def test_kill_9_loses_at_most_the_last_second(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    made = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not made or made[-1][1] - made[0][1] < 3.0):
        pid, when = proc.stdout.readline().split()
        made.append((pid, float(when)))
    killed_at = time.time()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    made += [(pid, float(when)) for pid, when in (line.split() for line in proc.stdout.read().splitlines())]
    stored = {r[0] for r in rows_in(tmp_path / "predictions.sqlite")}
    old_enough = [pid for pid, when in made if when <= killed_at - 1.0]
    assert len(old_enough) > 500
    assert [pid for pid in old_enough if pid not in stored] == []
    assert stored <= {pid for pid, _ in made}


def test_labels_join_after_a_restart(tmp_path):
    first = Monitor(MonitorConfig(tracing=False, check_interval=0, store_dir=str(tmp_path)))
    pid = first.model("m").record({"a": 1.0}, 0.9)
    first.shutdown()  # a clean shutdown writes everything queued
    second = Monitor(MonitorConfig(tracing=False, check_interval=0, store_dir=str(tmp_path)))
    try:
        assert second.model("m").record_outcome(pid, 1)["status"] == "labelled"
    finally:
        second.shutdown()


def test_a_failing_write_is_counted_and_serving_goes_on(tmp_path):
    errors = []

    class Broken(SQLiteStore):
        def write(self, rows):
            raise sqlite3.OperationalError("disk I/O error")

    dropped = []
    writer = StoreWriter(Broken(tmp_path / "log.db"), interval=60, on_error=errors.append, on_drop=dropped.append)
    writer.CLOSE_RETRIES = 0.5  # close retries a failing write this long, then counts what is left
    writer.put([LogRow("p", "m", "1", 1.0, "{}", "{}", None)])
    assert not writer.flush()
    writer.close()
    assert {str(e) for e in errors} == {"disk I/O error"} and len(errors) >= 2 and dropped == [1]


def test_performance_route(tmp_path, harness_factory):
    h = harness_factory(tracing=False, check_interval=0, store_dir=str(tmp_path), allow_anonymous_writes=True)
    app = make_app(h.monitor)
    with TestClient(app) as client:
        for _ in range(3):
            pid = client.post("/predict", json={"a": 1.0}).headers["x-prediction-id"]
            client.post("/mlmon/feedback", json={"prediction_id": pid, "actual": 1})
        fresh = client.get("/mlmon/performance", params={"refresh": "true", "model": "m"}).json()
        missing = client.get("/mlmon/performance", params={"model": "nope"})
    overall = fresh["m"]["windows"]["last_1000"]["overall"]
    assert overall["count"] == 3 and overall["accuracy"] == 1.0
    assert missing.status_code == 404


class FlakyStore:
    """A store whose first ``failures`` writes fail (as a locked database does), then work."""

    def __init__(self, inner, failures):
        self.inner, self.failures, self.attempts = inner, failures, 0

    def write(self, rows):
        self.attempts += 1
        if self.attempts <= self.failures:
            raise sqlite3.OperationalError("database is locked")
        self.inner.write(rows)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_failed_log_writes_are_retried_with_backoff_and_bounded(tmp_path):
    inner = SQLiteStore(tmp_path / "log.db")
    dropped, errors = [], []
    store = FlakyStore(inner, failures=4)
    writer = StoreWriter(store, interval=0.01, max_queue=50, on_drop=dropped.append, on_error=errors.append)
    writer.put([LogRow(f"p{i}", "m", "1", float(i), "{}", "{}", None) for i in range(30)])
    deadline = time.monotonic() + 10
    while store.attempts < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    writer.close()
    assert store.attempts == 5 and len(errors) == 4 and dropped == []
    assert SQLiteStore(tmp_path / "log.db").counts("m", since=0)[0] == 30  # every row, after four failures

    # while failing, the queue keeps its bound: the oldest rows go first, and are counted
    inner = SQLiteStore(tmp_path / "log2.db")
    store = FlakyStore(inner, failures=10**9)
    writer = StoreWriter(store, interval=0.01, max_queue=20, on_drop=dropped.append)
    writer.put([LogRow(f"p{i}", "m", "1", float(i), "{}", "{}", None) for i in range(15)])
    assert not writer.flush()
    writer.put([LogRow(f"q{i}", "m", "1", 100.0 + i, "{}", "{}", None) for i in range(15)])
    assert len(writer) == 20 and sum(dropped) == 10
    store.failures = 0  # the lock is gone
    writer.close()
    assert SQLiteStore(tmp_path / "log2.db").counts("m", since=0)[0] == 20 and sum(dropped) == 10


def test_a_lock_longer_than_the_busy_timeout_loses_no_prediction(tmp_path, harness_factory):
    """The prediction log is locked by another process for longer than SQLite's busy timeout:
    the writes that fail are retried, and every acknowledged prediction reaches the log."""
    h = harness_factory(tracing=False, check_interval=0, store_dir=str(tmp_path), store_interval=0.05)
    app = make_app(h.monitor)
    with TestClient(app) as client:
        h.monitor.store_writer.store._db.execute("PRAGMA busy_timeout = 50")
        locker = sqlite3.connect(h.monitor.store_path, timeout=0)
        locker.execute("BEGIN EXCLUSIVE")
        ids = [client.post("/predict", json={"a": float(i)}).headers["x-prediction-id"] for i in range(40)]
        h.monitor.flush()
        time.sleep(0.5)  # several failed attempts
        locker.rollback()
        locker.close()
        found = [h.monitor.model("m").lookup(pid) is not None for pid in ids]
    assert all(found)
    assert h.monitor.errors.counts().get("store", 0) >= 1 and "store_queue_full" not in h.monitor.errors.counts()


def test_a_row_sqlite_cannot_store_never_blocks_the_log(tmp_path):
    """Only a failure that may pass (locked, disk full) is retried; a row SQLite refuses for good
    is reported and dropped, and the rest of its batch is written."""
    import uuid

    errors = []
    store = SQLiteStore(tmp_path / "log.db")
    writer = StoreWriter(store, interval=60, on_error=errors.append)
    writer.put([LogRow("p1", "m", "1", 1.0, "{}", "{}", None), LogRow(uuid.uuid4(), "m", "1", 2.0, "{}", "{}", None),
                LogRow("p3", "m", "1", 3.0, "{}", "{}", None)])
    assert writer.flush() and len(writer) == 0
    writer.put([LogRow("p4", "m", "1", 4.0, "{}", "{}", None)])
    writer.close()
    assert [type(e).__name__ for e in errors] == ["ProgrammingError"]
    assert SQLiteStore(tmp_path / "log.db").counts("m", since=0)[0] == 3


def test_a_uuid_prediction_id_is_logged_as_text(tmp_path, harness_factory):
    import uuid

    h = harness_factory(tracing=False, check_interval=0, store_dir=str(tmp_path))
    pid = uuid.uuid4()
    model = h.monitor.model("m")
    assert model.record({"a": 1.0}, 0.5, prediction_id=pid) == str(pid)
    assert model.lookup(str(pid))["prediction_id"] == str(pid)
