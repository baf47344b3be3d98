"""The prediction log and ground truth: store, writer, labels, feedback route, crash and restart.

The tests of the store's interface run on both backends (the ``store`` and ``new_location``
fixtures: an SQLite file, then a fresh PostgreSQL database); those about SQLite files stay
SQLite-only. The PostgreSQL-only tests at the end play several replicas on one database, and
a database that goes away; ``test_postgres_answers_exactly_as_sqlite`` compares every answer.
"""

import itertools
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import orjson
import psycopg
import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from mlmon_fastapi import instrument_app
from mlmon_middleware import Monitor, MonitorConfig, monitor
from mlmon_middleware.store import LogRow, SQLiteStore, StoreError, open_store
from mlmon_middleware.store_postgres import PostgresStore
from mlmon_middleware.store_writer import StoreWriter

from postgres_server import PostgresServer


def rows_in(path):
    with sqlite3.connect(path) as db:
        return db.execute("SELECT prediction_id, prediction, segments, features, label FROM predictions ORDER BY ts").fetchall()


@pytest.fixture(params=["sqlite", "postgres"])
def new_location(request, tmp_path):
    """Makes new, empty logs of the backend under test: SQLite files, or PostgreSQL databases."""
    files = itertools.count()
    if request.param == "sqlite":
        return lambda: str(tmp_path / f"log{next(files)}.db")
    return request.getfixturevalue("postgres_server").create_database


@pytest.fixture
def location(new_location):
    return new_location()


@pytest.fixture
def store(location):
    opened = open_store(location)
    yield opened
    opened.close()


def ids_in(location, model="m"):
    """The ids of ``model``'s logged predictions, oldest first (the log opened afresh)."""
    reader = open_store(location)
    try:
        return [r["prediction_id"] for r in reversed(reader.recent(model, 1_000_000))]
    finally:
        reader.close()


def test_store_labels_retention_and_counts(store):
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


def test_writer_drops_the_oldest_when_full_and_counts(location):
    dropped = []
    writer = StoreWriter(open_store(location), interval=60, max_queue=3, on_drop=dropped.append)
    writer.put([LogRow(f"p{i}", "m", "1", float(i), "{}", "{}", None) for i in range(5)])
    assert sum(dropped) == 2 and len(writer) == 3
    writer.put(LogRow(f"p{i}", "m", "1", float(i), "{}", "{}", None) for i in range(5, 7))  # any iterable
    writer.close()
    assert sum(dropped) == 4
    assert ids_in(location) == ["p4", "p5", "p6"]
    keeps_none = StoreWriter(open_store(location), interval=60, max_queue=0, on_drop=dropped.append)
    keeps_none.put([LogRow("p7", "m", "1", 7.0, "{}", "{}", None)])
    keeps_none.close()
    assert sum(dropped) == 5 and ids_in(location) == ["p4", "p5", "p6"]


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


def test_log_rows_without_segments_or_redaction_write_the_row_as_it_came(tmp_path, harness_factory):
    """The defaults take a shorter way (no dict built per row): the same text, for a dict row,
    a mapping that is not a dict, a list row (named by the schema) and keys that are not text."""
    import types

    h = harness_factory(tracing=False, check_interval=0, store_dir=str(tmp_path))
    mm = h.monitor.model("plain")
    first = mm.record({"amount": 5.0, "country": "fr", "n": 2**70}, {"prediction": 0.2})
    h.monitor.flush()  # the schema is known: list rows are named by it
    proxy = mm.record(types.MappingProxyType({"amount": 1.0, "country": "de", "n": 3}), {"prediction": 0.1})
    listed = mm.record([[2.0, "it", 4], [3.0, "es", 5]], [0.3, 0.4])
    keys = h.monitor.model("keys").record({1: 1.0, "b": "x"}, {"prediction": 1})
    h.monitor.flush()
    h.monitor.store_writer.flush()
    rows = {r[0]: r for r in rows_in(tmp_path / "predictions.sqlite")}
    assert orjson.loads(rows[first][3]) == {"amount": 5.0, "country": "fr", "n": 2**70}
    assert orjson.loads(rows[proxy][3]) == {"amount": 1.0, "country": "de", "n": 3}
    assert orjson.loads(rows[f"{listed}:1"][3]) == {"amount": 3.0, "country": "es", "n": 5}
    assert orjson.loads(rows[keys][3]) == {"1": 1.0, "b": "x"}
    assert {rows[pid][2] for pid in (first, proxy, f"{listed}:0", keys)} == {"{}"}


@pytest.mark.parametrize("features", [None, ["amount", "country"]])
def test_list_rows_of_the_first_batch_are_logged_with_the_names_they_will_have(tmp_path, harness_factory, features):
    """Read before the schema is inferred from them, they are named as it names them: by the
    declared names, else f0, f1, ... (they used to be logged as ``{}``)."""
    h = harness_factory(tracing=False, check_interval=0, store_dir=str(tmp_path))
    mm = h.monitor.model("listed", **({} if features is None else {"features": features}))
    pid = mm.record([[2.0, "it"], [3.0, "es"]], [0.3, 0.4])
    h.monitor.flush()
    h.monitor.store_writer.flush()
    logged = orjson.loads({r[0]: r for r in rows_in(tmp_path / "predictions.sqlite")}[f"{pid}:1"][3])
    assert logged == dict(zip(mm.schema.names, [3.0, "es"])) and list(logged) == list(features or ["f0", "f1"])


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
    with pytest.raises(StoreError, match="no prediction log: set MLMON_STORE_DIR"):
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


def test_a_stuck_log_writer_never_holds_a_check(tmp_path):
    import threading

    mon = Monitor(MonitorConfig(tracing=False, check_interval=0, store_dir=str(tmp_path), store_interval=0.01))
    release = threading.Event()
    try:
        model = mon.model("m")
        for i in range(300):
            model.record({"a": float(i)}, 0.5)
        mon.flush()
        writer = mon.store_writer
        stuck = writer.store.write
        writer.store.write = lambda rows: (release.wait(), stuck(rows))  # a write that does not return
        model.record({"a": 1.0}, 0.5)
        mon.flush()
        time.sleep(0.2)  # the writer's thread is inside the stuck write, holding its flush lock
        done = threading.Event()
        checking = threading.Thread(target=lambda: (model.check_now(), done.set()), daemon=True)
        checking.start()
        assert done.wait(30), "a check waited for the log's writer"
        assert model.health()["rows_in_window"] == 301
    finally:
        release.set()
        mon.shutdown()


def test_a_failing_write_is_counted_and_serving_goes_on(store):
    errors = []
    dropped = []
    broken = FlakyStore(store, failures=10**9, message="disk I/O error")
    writer = StoreWriter(broken, interval=60, on_error=errors.append, on_drop=dropped.append)
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
    """A store whose first ``failures`` writes fail with its own transient error (as a locked or
    unreachable database does), then work."""

    def __init__(self, inner, failures, message="database is locked"):
        self.inner, self.failures, self.attempts, self.message = inner, failures, 0, message

    def write(self, rows):
        self.attempts += 1
        if self.attempts <= self.failures:
            raise self.inner.transient_errors[0](self.message)
        self.inner.write(rows)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def count_in(location, model="m"):
    reader = open_store(location)
    try:
        return reader.counts(model, since=0)[0]
    finally:
        reader.close()


def test_failed_log_writes_are_retried_with_backoff_and_bounded(new_location):
    first, second = new_location(), new_location()
    inner = open_store(first)
    dropped, errors = [], []
    store = FlakyStore(inner, failures=4)
    writer = StoreWriter(store, interval=0.01, max_queue=50, on_drop=dropped.append, on_error=errors.append)
    writer.put([LogRow(f"p{i}", "m", "1", float(i), "{}", "{}", None) for i in range(30)])
    deadline = time.monotonic() + 10
    while store.attempts < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    writer.close()
    assert store.attempts == 5 and len(errors) == 4 and dropped == []
    assert count_in(first) == 30  # every row, after four failures

    # while failing, the queue keeps its bound: the oldest rows go first, and are counted
    inner = open_store(second)
    store = FlakyStore(inner, failures=10**9)
    writer = StoreWriter(store, interval=0.01, max_queue=20, on_drop=dropped.append)
    writer.put([LogRow(f"p{i}", "m", "1", float(i), "{}", "{}", None) for i in range(15)])
    assert not writer.flush()
    writer.put([LogRow(f"q{i}", "m", "1", 100.0 + i, "{}", "{}", None) for i in range(15)])
    assert len(writer) == 20 and sum(dropped) == 10
    store.failures = 0  # the lock is gone
    writer.close()
    assert count_in(second) == 20 and sum(dropped) == 10


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


def test_a_row_the_database_cannot_store_never_blocks_the_log(location):
    """Only a failure that may pass (locked, disk full, connection lost) is retried; a row the
    database refuses for good is reported and dropped, and the rest of its batch is written.
    SQLite refuses a UUID object, PostgreSQL a NUL character in text."""
    errors = []
    store = open_store(location)
    bad = uuid.uuid4() if isinstance(store, SQLiteStore) else "p\x00"
    writer = StoreWriter(store, interval=60, on_error=errors.append)
    writer.put([LogRow("p1", "m", "1", 1.0, "{}", "{}", None), LogRow(bad, "m", "1", 2.0, "{}", "{}", None),
                LogRow("p3", "m", "1", 3.0, "{}", "{}", None)])
    assert writer.flush() and len(writer) == 0
    writer.put([LogRow("p4", "m", "1", 4.0, "{}", "{}", None)])
    writer.close()
    assert [type(e).__name__ for e in errors] == ["ProgrammingError" if isinstance(store, SQLiteStore) else "DataError"]
    assert ids_in(location) == ["p1", "p3", "p4"]


def test_a_uuid_prediction_id_is_logged_as_text(tmp_path, harness_factory):
    h = harness_factory(tracing=False, check_interval=0, store_dir=str(tmp_path))
    pid = uuid.uuid4()
    model = h.monitor.model("m")
    assert model.record({"a": 1.0}, 0.5, prediction_id=pid) == str(pid)
    assert model.lookup(str(pid))["prediction_id"] == str(pid)


# ------------------------------------------------------------------ both backends: the new calls
def test_results_keep_the_latest_body_per_model_and_kind(store):
    assert store.get_result("m", "performance") is None
    before = time.time()
    store.put_result("m", "performance", '{"accuracy": 0.5}')
    store.put_result("m", "performance", '{"accuracy": 0.75}')  # the latest wins
    store.put_result("m", "drift", '{"drifted": []}')
    store.put_result("other", "performance", '{"accuracy": 0.25}')
    after = time.time()
    updated, body = store.get_result("m", "performance")
    assert body == '{"accuracy": 0.75}' and before <= updated <= after
    assert store.get_result("m", "drift")[1] == '{"drifted": []}'
    assert store.get_result("other", "performance")[1] == '{"accuracy": 0.25}'
    assert store.get_result("other", "drift") is None


def test_an_id_with_a_nul_character_is_unknown_not_an_error(store):
    """PostgreSQL cannot hold one (so it was never logged there); labels and look-ups asking for
    it answer as for any id not logged, on both backends."""
    store.write([LogRow("p1", "m", "1", 1.0, "{}", "{}", None)])
    assert store.set_labels("m", [("p\x00", 1, 2.0), ("p1", 1, 3.0)]) == [("p\x00", "unknown", None), ("p1", "labelled", 2.0)]
    assert store.lookup("m", "p\x00") is None and store.lookup("m", "p1")["actual"] == 1


def test_one_store_leads_every_role_it_asks_for(store):
    assert [store.try_lead("labels"), store.try_lead("labels"), store.try_lead("drift")] == [True, True, True]


def test_the_transient_errors_are_the_backends_own(store):
    assert store.transient_errors == ((sqlite3.OperationalError,) if isinstance(store, SQLiteStore)
                                      else (psycopg.OperationalError,))
    assert store.shared_by_replicas == (not isinstance(store, SQLiteStore))


def test_a_log_of_one_host_stores_no_fleet_result(tmp_path, harness_factory):
    """With SQLite nobody reads a fleet leader's stored report: checks compute and store none."""
    h = harness_factory(tracing=False, check_interval=0, store_dir=str(tmp_path))
    model = h.monitor.model("m", performance={"task": "binary"})
    model.record_outcome(model.record({"x": 1.0}, 0.9), 1)
    model.check_now()
    assert model.performance_report()["windows"]  # computed here
    assert h.monitor.store_writer.store.get_result("m", "performance") is None


def test_open_store_picks_the_backend_by_location(tmp_path, postgres_url):
    for location, kind in ((str(tmp_path / "a.db"), SQLiteStore), (postgres_url, PostgresStore),
                           (postgres_url.replace("postgresql://", "postgres://"), PostgresStore),
                           (postgres_url.replace("postgresql://", "PostgreSQL://"), PostgresStore)):
        opened = open_store(location)
        assert type(opened) is kind
        opened.close()


def test_without_psycopg_a_postgresql_url_says_what_to_install():
    code = ("import sys; sys.modules['psycopg'] = None\n"  # as if it were not installed
            "from mlmon_middleware.store import StoreError, open_store\n"
            "try:\n    open_store('postgresql://u:s3cret@127.0.0.1:1/db')\n"
            "except StoreError as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pip install 'mlmon-middleware[postgres]'" in out and "s3cret" not in out


WRITES = [
    [LogRow(f"p{i}", "m", "1", 1000.0 + i * 0.25, orjson.dumps({"prediction": i / 10}).decode(),
            orjson.dumps({"region": "eu" if i % 2 else "us"}).decode(), orjson.dumps({"x": i}).decode(),
            orjson.dumps({"x": 0.1 * i}).decode() if i % 3 == 0 else None) for i in range(40)],
    [LogRow("q1", "other", "7", 1003.5, '{"prediction": 1}', "{}", None), LogRow("p5", "m", "2", 1020.125, '{"prediction": 0.9}',
                                                                                 '{"region": "eu"}', None, '{"x": 1.5}'),
     LogRow("dup", "m", "1", 1030.0, '{"prediction": 0}', "{}", None), LogRow("dup", "m", "3", 1031.0, '{"prediction": 1}',
                                                                             "{}", None)],
]


def exercise(store, now):
    """Every call of the interface, on the same input; what each answers."""
    out = []
    store.write(WRITES[0])
    out.append(store.set_labels("m", [("p1", 1, 1100.0), ("p2", {"score": 0.5}, 1101.5), ("p1", 0, 1102.0), ("nope", 1, 1.0),
                                      ("p5", [1, 2], 999.0), ("p7", "yes", 1200), ("p9", None, 1300.0)]))
    out.append(store.set_labels("other", [("p3", 1, 1200.0)]))
    store.write(WRITES[1])  # p5 logged again: its label is gone; dup twice in a batch: the last wins
    out.append(store.set_labels("m", [("p7", 2, 1400.0), ("dup", 1, 1500.0), ("p11", 0.5, 1050.0)]))
    out.append(store.set_labels("other", [("q1", True, 1010.0)]))
    out.append(store.set_labels("m", []))
    for model in ("m", "other", "none"):
        out += [store.labelled(model, since=0), store.labelled(model, since=1001.0), store.labelled(model, 0, limit=2),
                store.newly_labelled(model, 0), store.newly_labelled(model, 2), store.counts(model, 0),
                store.counts(model, 1005.0), store.recent(model, 5), store.recent(model, 100, explained=True)]
    out += [store.lookup("m", pid) for pid in ("p1", "p5", "dup", "p2", "nope")] + [store.lookup("other", "p1")]
    store.write([LogRow(f"old{i}", "m", "1", now - 1000 - i, "{}", "{}", None) for i in range(3)])
    store.write([LogRow(f"new{i}", "m", "1", now + i, "{}", "{}", None) for i in range(3)])
    out += [store.apply_retention(None, 10), store.counts("m", 0), store.recent("m", 100),
            store.apply_retention(max_age=500, max_rows=None), store.counts("m", 0), store.counts("other", 0),
            store.apply_retention(None, 1), store.recent("m", 100)]
    return out


def test_postgres_answers_exactly_as_sqlite(tmp_path, postgres_url):
    """The same calls on the same input give the same answers, value for value and type for type."""
    sqlite, postgres = SQLiteStore(tmp_path / "log.db"), PostgresStore(postgres_url)
    now = time.time()
    try:
        expected, got = exercise(sqlite, now), exercise(postgres, now)
    finally:
        sqlite.close()
        postgres.close()
    assert len(got) == len(expected)
    for i, (a, b) in enumerate(zip(expected, got)):
        assert repr(b) == repr(a), f"answer {i}"
    assert expected[0][2] == ("p1", "relabelled", 1102.0 - 1000.25)  # the comparison is not of empty answers


# ------------------------------------------------------------- PostgreSQL: replicas and outages
def test_two_replicas_share_predictions_and_labels(postgres_url):
    a, b = PostgresStore(postgres_url), PostgresStore(postgres_url)
    try:
        a.write([LogRow("from-a", "m", "1", 10.0, "{}", "{}", None)])
        b.write([LogRow("from-b", "m", "1", 20.0, "{}", "{}", None)])
        assert b.set_labels("m", [("from-a", 1, 15.0)]) == [("from-a", "labelled", 5.0)]
        assert a.set_labels("m", [("from-b", 0, 26.0), ("from-a", 0, 30.0)]) == [("from-b", "labelled", 6.0),
                                                                                 ("from-a", "relabelled", 20.0)]
        assert [(r.prediction_id, r.label) for r in b.labelled("m", 0)] == [("from-a", 0), ("from-b", 0)]
        assert [n.seq for n in a.newly_labelled("m", 0)] == [2, 2] and b.newly_labelled("m", 2) == []
        a.put_result("m", "performance", '{"n": 2}')
        assert b.get_result("m", "performance")[1] == '{"n": 2}'
    finally:
        a.close()
        b.close()


def test_concurrent_labels_get_distinct_increasing_batches(postgres_url):
    """Two replicas label the same predictions at once: every batch gets its own number, each
    replica sees its numbers increase, and each prediction is ``labelled`` once in all."""
    writer = PostgresStore(postgres_url)
    ids = [f"p{i}" for i in range(50)]
    writer.write([LogRow(pid, "m", "1", float(i), "{}", "{}", None) for i, pid in enumerate(ids)])
    writer.close()
    answers = {0: [], 1: []}

    def label(k):
        replica = PostgresStore(postgres_url)
        try:
            for round_ in range(30):
                mine = ids[round_ % 5::5]
                answers[k].append(replica.set_labels("m", [(pid, k, 100.0 + round_) for pid in mine]))
        finally:
            replica.close()

    threads = [threading.Thread(target=label, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reader = PostgresStore(postgres_url)
    seqs = {k: [] for k in answers}
    for row in reader.newly_labelled("m", 0):
        seqs[row.label].append(row.seq)
    reader.close()
    outcomes = [o for k in answers for batch in answers[k] for o in batch]
    assert sorted(o.prediction_id for o in outcomes if o.outcome == "labelled") == sorted(ids)
    assert sum(o.outcome == "relabelled" for o in outcomes) == 2 * 30 * 10 - 50
    # each prediction's last batch: no number was given to a batch of each replica, the last is 60
    assert len(set(seqs[0]) & set(seqs[1])) == 0 and max(seqs[0] + seqs[1]) == 60


def test_batch_numbers_are_distinct_and_in_order_per_replica(postgres_url):
    stores = [PostgresStore(postgres_url) for _ in range(2)]
    stores[0].write([LogRow(f"p{i}", "m", "1", float(i), "{}", "{}", None) for i in range(200)])
    seen = {0: [], 1: []}

    def label(k):
        for i in range(k, 200, 2):
            stores[k].set_labels("m", [(f"p{i}", 1, 500.0)])
            seen[k].append(next(r.seq for r in stores[k].newly_labelled("m", 0) if r.timestamp == float(i)))

    threads = [threading.Thread(target=label, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    assert seen[0] == sorted(seen[0]) and seen[1] == sorted(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(1, 201))


def test_one_replica_leads_and_another_takes_over(postgres_server, postgres_url):
    a, b = PostgresStore(postgres_url), PostgresStore(postgres_url)
    try:
        assert [a.try_lead("labels"), b.try_lead("labels"), a.try_lead("labels"), b.try_lead("labels")] == [
            True, False, True, False]
        assert b.try_lead("drift") and not a.try_lead("drift")  # each role its own lock
        a.close()  # the leader stops: it unlocks before its session closes, so the lead passes at once
        assert b.try_lead("labels") and b.try_lead("labels")
        c = PostgresStore(postgres_url)
        assert not c.try_lead("labels")
        # the leader's session is killed (the server restarted it, the network dropped it): the
        # lock is free, another replica takes it, and the old leader learns it no longer leads
        with psycopg.connect(postgres_server.url, autocommit=True) as admin:
            killed = admin.execute("SELECT pg_terminate_backend(pid) FROM (SELECT DISTINCT pid FROM pg_locks "
                                   "WHERE locktype = 'advisory' AND granted AND database = "
                                   "(SELECT oid FROM pg_database WHERE datname = %s)) AS holders",
                                   (postgres_url.rsplit("/", 1)[1],)).fetchall()
        assert killed == [(True,)]  # one session holds both of b's locks
        deadline = time.monotonic() + 10  # the server ends the session asynchronously
        while not c.try_lead("labels") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert c.try_lead("labels") and not b.try_lead("labels")
        assert b.try_lead("drift")  # b's new session took the lock its old one lost
        c.close()
    finally:
        a.close()
        b.close()


def test_a_user_who_may_only_use_the_tables_opens_a_log_its_owner_created(postgres_server, postgres_url):
    PostgresStore(postgres_url).close()  # the owner creates the tables
    with psycopg.connect(postgres_url, autocommit=True) as owner:
        owner.execute("CREATE ROLE app_user LOGIN")
        owner.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        owner.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO app_user")
    store = PostgresStore(postgres_url.replace("postgresql://postgres@", "postgresql://app_user@"))
    try:
        store.write([LogRow("p1", "m", "1", 1.0, "{}", "{}", None)])
        assert store.set_labels("m", [("p1", 1, 3.0)]) == [("p1", "labelled", 2.0)]
        store.put_result("m", "performance", "{}")
        assert store.get_result("m", "performance")[1] == "{}" and store.try_lead("labels")
        # where the tables are missing and the user may not create them: a clear error at open
        empty = postgres_server.create_database().replace("postgresql://postgres@", "postgresql://app_user@")
        with pytest.raises(StoreError, match="cannot be used: permission denied for schema public"):
            PostgresStore(empty)
    finally:
        store.close()
        with psycopg.connect(postgres_url, autocommit=True) as owner:  # roles are the server's, not the database's
            # a session's server process ends (dropping its temporary table, which the role owns)
            # a moment after the client closed it: wait for app_user's sessions to be gone
            sessions = "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app_user'"
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and owner.execute(sessions).fetchone()[0]:
                time.sleep(0.05)
            assert owner.execute(sessions).fetchone()[0] == 0, "app_user's sessions did not end within 10 s"
            owner.execute("DROP OWNED BY app_user")
            owner.execute("DROP ROLE app_user")


def test_a_killed_connection_raises_a_transient_error_and_the_next_call_works(postgres_server, postgres_url):
    store = PostgresStore(postgres_url)
    store.write([LogRow("p1", "m", "1", 1.0, "{}", "{}", None)])
    with psycopg.connect(postgres_server.url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                      (postgres_url.rsplit("/", 1)[1],))
    with pytest.raises(store.transient_errors):
        store.write([LogRow("p2", "m", "1", 2.0, "{}", "{}", None)])
    store.write([LogRow("p2", "m", "1", 2.0, "{}", "{}", None)])
    assert store.counts("m", 0) == (2, 0)
    store.close()


@pytest.fixture
def own_server():
    """A PostgreSQL server of its own, for a test that stops it."""
    server = PostgresServer({"fsync": "off"})
    server.start()
    yield server
    server.close()


@pytest.mark.timeout(120)  # a hang fails here, not at the suite's 300 s
def test_the_database_going_away_and_back(own_server):
    """The server stops: calls raise one of ``transient_errors`` (no hang) while it is down; the
    writer keeps its rows meanwhile; once the server is back, the next call works and no row
    the writer held is lost."""
    url = own_server.create_database()
    store = PostgresStore(url, connect_timeout=2, statement_timeout=5)
    errors, dropped = [], []
    writer = StoreWriter(store, interval=0.05, on_error=errors.append, on_drop=dropped.append)
    writer.put([LogRow(f"a{i}", "m", "1", float(i), "{}", "{}", None) for i in range(100)])
    assert writer.flush()
    own_server.stop()
    writer.put([LogRow(f"b{i}", "m", "1", 100.0 + i, "{}", "{}", None) for i in range(100)])
    for _ in range(3):  # the call that meets the lost connection, then connection refused
        with pytest.raises(store.transient_errors):
            store.counts("m", 0)
    deadline = time.monotonic() + 30
    while len(errors) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(errors) >= 2 and all(isinstance(e, store.transient_errors) for e in errors) and len(writer) == 100
    own_server.start()
    assert store.counts("m", 0)[0] >= 100
    writer.close()  # writes what is still queued
    assert dropped == [] and count_in(url) == 200


def silent_server():
    """A TCP port that accepts connections and never answers (a server hung, a half-open link)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    return listener


@pytest.mark.timeout(60)  # the connect timeout must end the wait
def test_an_unreachable_or_silent_server_fails_at_open_without_the_password(postgres_server):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    listener = silent_server()
    silent = listener.getsockname()[1]
    try:
        for url in (f"postgresql://mlmon:s3cr%40t@127.0.0.1:{port}/log",
                    f"postgresql://mlmon@127.0.0.1:{port}/log?password=s3cr@t",
                    f"postgresql://mlmon:s3cr%40t@127.0.0.1:{silent}/log",
                    f"postgresql://mlmon:s3cr%40t@127.0.0.1:{postgres_server.port}/no_such_db",
                    "postgresql://mlmon:s3cr%40t@127.0.0.1:notaport/log"):
            with pytest.raises(StoreError) as caught:
                PostgresStore(url, connect_timeout=2)
            message = str(caught.value)
            assert "cannot be used" in message and "mlmon@127.0.0.1" in message, message
            assert "s3cr" not in message and "s3cr" not in repr(caught.value), message
    finally:
        listener.close()


@pytest.mark.timeout(120)
def test_labels_answer_503_while_postgresql_is_away_and_work_when_it_is_back(own_server, harness_factory):
    h = harness_factory(tracing=False, check_interval=0, store_url=own_server.create_database(),
                        allow_anonymous_writes=True, api_token=None)
    with TestClient(make_app(h.monitor)) as client:
        pid = client.post("/predict", json={"a": 1.0}).headers["x-prediction-id"]
        assert client.get(f"/mlmon/predictions/{pid}?model=m").status_code == 200  # logged
        own_server.stop()
        away = [client.post("/mlmon/feedback", json={"prediction_id": pid, "actual": 1}),
                client.get(f"/mlmon/predictions/{pid}?model=m")]
        own_server.start()
        back = client.post("/mlmon/feedback", json={"prediction_id": pid, "actual": 1})
    assert [r.status_code for r in away] == [503, 503] and all(r.headers["Retry-After"] == "1" for r in away)
    assert "retry later" in away[0].json()["detail"]
    assert back.status_code == 200 and back.json()["labelled"] == 1  # nothing was half-applied
    assert h.monitor.errors.counts()["store"] >= 2  # counted


def test_only_a_scheduled_check_takes_the_fleets_lead_of_the_label_checks(postgres_url):
    """An on-demand check (a dashboard's first request, in a worker that does not check on
    schedule) reads the leader's stored performance; it never takes the lead, which would leave
    the fleet without anyone computing it."""
    from mlmon_middleware.shared_model import LABEL_CHECKS, fleet_performance

    model = Monitor(MonitorConfig(tracing=False, check_interval=0)).model("m")
    a, b = PostgresStore(postgres_url), PostgresStore(postgres_url)
    try:
        assert fleet_performance(model, a, scheduled=False) == {
            "status": "another replica checks performance on the shared log; no result yet"}
        assert not a.leads(LABEL_CHECKS)  # asking did not take it
        assert fleet_performance(model, b, scheduled=True) is None and b.leads(LABEL_CHECKS)  # b computes
        b.put_result("m", "performance", '{"status": "ok", "checked_at": 1.0}')
        assert fleet_performance(model, a, scheduled=True) == {"status": "ok", "checked_at": 1.0}  # b leads
    finally:
        a.close()
        b.close()


def test_a_logged_row_adds_no_label_index_entry_and_labels_are_found_through_it(location):
    """The label index holds labelled rows only: logging (unlabelled rows) pays for no entry in
    it, and ``newly_labelled`` (``label_seq > ?``) still finds them, on both backends."""
    store = open_store(location)
    try:
        store.write([LogRow(f"p{i}", "m", "1", 1000.0 + i, '{"prediction": 1}', "{}", None) for i in range(50)])
        store.set_labels("m", [("p3", 1, 2000.0), ("p7", 0, 2000.0)])
        assert [(n.timestamp, n.label, n.seq) for n in store.newly_labelled("m", 0)] == [(1003.0, 1, 1), (1007.0, 0, 1)]
        assert store.newly_labelled("m", 1) == []
    finally:
        store.close()
    if isinstance(location, str) and not location.startswith("postgresql"):
        with sqlite3.connect(location) as db:
            indexes = {name: sql for name, sql in db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index'")}
            entries = db.execute("SELECT count(*) FROM predictions INDEXED BY predictions_labelled_by_seq "
                                 "WHERE model = 'm' AND label_seq > 0").fetchone()[0]
            plan = " ".join(str(r) for r in db.execute("EXPLAIN QUERY PLAN SELECT prediction FROM predictions "
                                                       "WHERE model = 'm' AND label_seq > 0 ORDER BY ts"))
        assert "WHERE label_seq IS NOT NULL" in indexes["predictions_labelled_by_seq"] and entries == 2
        assert "predictions_labelled_by_seq" in plan
    else:
        with psycopg.connect(location) as db:
            [(definition,)] = db.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'predictions_labelled_by_seq'")
        assert "WHERE (label_seq IS NOT NULL)" in definition


def test_newly_labelled_reads_whole_label_batches_up_to_a_limit_and_the_rest_next_time(location):
    """A backfill of many labels is read a part at a time: whole label batches (never half of
    one), until one reaches the limit; going on after the last batch returned reads the rest, on
    both backends."""
    store = open_store(location)
    try:
        store.write([LogRow(f"p{i}", "m", "1", 1000.0 + i, '{"prediction": 1}', "{}", None) for i in range(30)])
        for start in (0, 10, 20):  # three label batches of 10, the last one's labels back-dated
            store.set_labels("m", [(f"p{i}", i % 2, 500.0 if start == 20 else 2000.0) for i in range(start, start + 10)])
        first = store.newly_labelled("m", 0, limit=15)
        assert [n.seq for n in first] == [1] * 10 + [2] * 10  # the batch that reaches 15 is read whole
        assert [n.timestamp for n in first] == sorted(n.timestamp for n in first)  # in prediction order
        rest = store.newly_labelled("m", max(n.seq for n in first), limit=15)
        assert [n.seq for n in rest] == [3] * 10 and store.newly_labelled("m", 3, limit=15) == []
        assert store.newly_labelled("m", 0) == first + rest  # within the default limit: everything
    finally:
        store.close()


def test_a_log_of_an_earlier_version_loses_its_full_label_indexes(tmp_path):
    path = str(tmp_path / "old.db")
    SQLiteStore(path).close()
    with sqlite3.connect(path) as db:  # the two label indexes of earlier versions
        db.execute("DROP INDEX predictions_labelled_by_seq")
        db.execute("CREATE INDEX predictions_by_label_time ON predictions (model, label_ts)")
        db.execute("CREATE INDEX predictions_by_label_seq ON predictions (model, label_seq)")
    SQLiteStore(path).close()
    with sqlite3.connect(path) as db:
        names = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
    assert names == {"predictions_by_time", "predictions_labelled_by_seq"}


def test_the_monitor_counts_every_dropped_log_row_and_warns_once(tmp_path, harness_factory, caplog):
    """Past ``store_queue_size``, each row dropped counts once in ``store_queue_full`` however
    the writer hands them over (one put, a retried batch), and the warning is rate-limited."""
    h = harness_factory(tracing=False, check_interval=0, store_dir=str(tmp_path), store_interval=60,
                        store_queue_size=3)
    h.monitor.start()
    writer = h.monitor.store_writer
    with caplog.at_level("WARNING", logger="mlmon_middleware"):
        for n in (2, 3, 4, 5):
            writer.put([LogRow(f"p{n}-{i}", "m", "1", float(i), "{}", "{}", None) for i in range(n)])
    assert h.monitor.errors.counts()["store_queue_full"] == 2 + 3 + 4 + 5 - 3 and len(writer) == 3
    assert sum("store_queue_full" in r.getMessage() for r in caplog.records) == 1
