"""The audit log: appending, querying and exporting; every kind of tampering found and named
(edit, delete, reorder, truncate, insert, rewrite), what the HMAC key and an anchor add, two
processes appending at once, and ``mlmon audit``.

Tests run on both backends (tests/governance_fixtures.py: an SQLite file, then a PostgreSQL
database); the tampering is done with plain SQL on the database, as someone with access to it would.
"""

import contextlib
import io
import json
import os
import subprocess
import sys
import textwrap
from unittest import mock

import governance_fixtures
import pytest
from governance_fixtures import sql

from mlmon_middleware.cli import main
from mlmon_middleware.errors import ErrorLog
from mlmon_middleware.governance import AuditLog, ChainBroken, GovernanceError, ModelRegistry, verify_jsonl
from mlmon_middleware.governance.chain import make_event
from mlmon_middleware.governance.events import MonitoringEvents

location, postgres_database = governance_fixtures.location, governance_fixtures.postgres_database  # both backends

TYPES = ["registered", "submitted", "approved", "deployed", "alert_fired", "alert_acknowledged"]


def filled(location, key=b""):
    """A log of six events of model fraud (and one of another model in the middle)."""
    log = AuditLog(location, key=key)
    events = [log.append(t, "ana" if i % 2 else "bo", "fraud" if i != 3 else "churn", "1", {"step": i})
              for i, t in enumerate(TYPES)]
    return log, events


def test_events_are_chained_queried_and_exported(location):
    log, events = filled(location)
    assert [e.seq for e in events] == [1, 2, 3, 4, 5, 6]
    assert all(b.prev_hash == a.hash for a, b in zip(events, events[1:]))
    assert [e.event_type for e in log.query(model="fraud")] == ["registered", "submitted", "approved", "alert_fired",
                                                                "alert_acknowledged"]
    assert [e.seq for e in log.query(event_type=["approved", "deployed"])] == [3, 4]
    assert [e.seq for e in log.query(since=events[2].time, until=events[4].time)] == [3, 4]
    assert [e.seq for e in log.query(model="fraud", since="1h", limit=2)] == [1, 2]
    assert log.query(until="2000-01-01") == [] and log.query(event_type=[]) == []
    assert log.query(model="fraud", version="1")[0].details == {"step": 0}
    out = io.StringIO()
    assert log.export_jsonl(out) == 6
    lines = out.getvalue().splitlines()
    assert json.loads(lines[3]) == events[3].to_json()
    assert verify_jsonl(lines).ok
    log.close()


@pytest.mark.parametrize("details, message", [
    ({"x": float("nan")}, "no NaN"), ({"x": object()}, "must be JSON"), ("text", "a JSON object"),
    ({"x": "y" * 70_000}, "larger than"),
])
def test_details_must_be_a_json_object(tmp_path, details, message):
    with AuditLog(str(tmp_path / "log.sqlite"), key=b"") as log:
        with pytest.raises(GovernanceError, match=message):
            log.append("baseline_set", "ana", "fraud", "1", details)
        with pytest.raises(GovernanceError, match="event type"):
            log.append("Baseline Set", "ana", "fraud")
        assert log.query() == []


def swap(location, a, b):
    sql(location, "UPDATE audit_events SET seq = -1 WHERE seq = ?", (a,))
    sql(location, "UPDATE audit_events SET seq = ? WHERE seq = ?", (a, b))
    sql(location, "UPDATE audit_events SET seq = ? WHERE seq = -1", (b,))


def rewrite(location, events, seq, actor):
    """Change an event and recompute its hash (what someone without the HMAC key can do)."""
    e = events[seq - 1]
    forged = make_event(e.seq, e.time, e.event_type, actor, e.model, e.version, e.details, e.prev_hash)
    sql(location, "UPDATE audit_events SET actor = ?, hash = ? WHERE seq = ?", (actor, forged.hash, seq))
    return forged


def insert(location, event):
    sql(location, "INSERT INTO audit_events (seq, time, event_type, actor, model, version, details, prev_hash, hash, mac) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (event.seq, event.time, event.event_type, event.actor, event.model, event.version, json.dumps(event.details),
         event.prev_hash, event.hash, event.mac))


TAMPERING = {  # name: (what is done, the kind and seq verify must name)
    "edit the actor": (lambda loc, ev: sql(loc, "UPDATE audit_events SET actor = 'mallory' WHERE seq = 3"), "edited", 3),
    "edit the details": (lambda loc, ev: sql(loc, "UPDATE audit_events SET details = '{\"step\": 9}' WHERE seq = 4"),
                         "edited", 4),
    "edit the time": (lambda loc, ev: sql(loc, "UPDATE audit_events SET time = '2020-01-01T00:00:00.000000+00:00' "
                                               "WHERE seq = 2"), "edited", 2),
    "delete one": (lambda loc, ev: sql(loc, "DELETE FROM audit_events WHERE seq = 3"), "deleted", 4),
    "delete the first": (lambda loc, ev: sql(loc, "DELETE FROM audit_events WHERE seq = 1"), "deleted", 2),
    "reorder two": (lambda loc, ev: swap(loc, 3, 4), "reordered", 3),
    "reorder the first two": (lambda loc, ev: swap(loc, 1, 2), "reordered", 1),
    "truncate the end": (lambda loc, ev: sql(loc, "DELETE FROM audit_events WHERE seq > 4"), "truncated", 6),
    "truncate everything": (lambda loc, ev: sql(loc, "DELETE FROM audit_events"), "truncated", 6),
    "remove the head": (lambda loc, ev: sql(loc, "DELETE FROM audit_head"), "truncated", 6),
    "rewrite one with its hash": (lambda loc, ev: rewrite(loc, ev, 3, "mallory"), "replaced", 4),
    "add one behind the log's back": (lambda loc, ev: insert(loc, make_event(7, ev[-1].time, "approved", "mallory", "fraud",
                                                                             "2", {}, ev[-1].hash)), "inserted", 7),
}


@pytest.mark.parametrize("name", TAMPERING)
def test_tampering_is_found_and_the_first_broken_link_named(location, name):
    log, events = filled(location)
    assert log.verify().ok
    tamper, kind, seq = TAMPERING[name]
    tamper(location, events)
    result = log.verify()
    assert not result.ok
    assert (result.broken.kind, result.broken.seq) == (kind, seq), str(result)
    assert str(result).startswith(f"BROKEN at event {seq} ({kind})")
    log.close()


def test_the_hmac_key_finds_a_rewrite_that_recomputes_every_hash(location):
    key = b"audit-secret"
    log, events = filled(location, key=key)
    forged, prev = [], events[1].hash  # rewrite event 3, then re-link and re-hash everything after it, and the head
    for e in events[2:]:
        f = make_event(e.seq, e.time, e.event_type, "mallory" if e.seq == 3 else e.actor, e.model, e.version, e.details,
                       prev)
        sql(location, "UPDATE audit_events SET actor = ?, prev_hash = ?, hash = ? WHERE seq = ?",
            (f.actor, f.prev_hash, f.hash, f.seq))
        forged.append(f)
        prev = f.hash
    sql(location, "UPDATE audit_head SET hash = ?", (prev,))
    assert AuditLog(location, key=b"").verify().ok  # without the key the rewrite is consistent...
    result = log.verify()
    assert (result.broken.kind, result.broken.seq) == ("bad_mac", 3)  # ...with it, it is not
    anchored = AuditLog(location, key=b"").verify(anchor=(6, events[-1].hash))  # nor against an anchor kept elsewhere
    assert (anchored.broken.kind, anchored.broken.seq) == ("anchor", 6)
    log.close()


def test_with_a_key_a_truncation_that_moves_the_head_back_is_found(location):
    log, events = filled(location, key=b"k")
    sql(location, "DELETE FROM audit_events WHERE seq > 4")
    sql(location, "UPDATE audit_head SET seq = 4, hash = ?, mac = NULL", (events[3].hash,))
    assert AuditLog(location, key=b"").verify().ok  # consistent without the key: what an anchor is for
    assert AuditLog(location, key=b"").verify(anchor=(6, events[-1].hash)).broken.kind == "anchor"
    assert log.verify().broken.kind == "bad_mac"
    log.close()


TRUNCATIONS = {  # name: how the head is hidden after the last events are deleted
    "move the head back": lambda loc, ev: sql(loc, "UPDATE audit_head SET seq = 3, hash = ?, mac = NULL", (ev[2].hash,)),
    "delete the head": lambda loc, ev: sql(loc, "DELETE FROM audit_head"),
}


@pytest.mark.parametrize("name", TRUNCATIONS)
def test_an_append_after_a_cut_off_end_is_refused_and_the_break_stays_visible(location, name):
    log, events = filled(location, key=b"k")
    sql(location, "DELETE FROM audit_events WHERE seq > 3")
    TRUNCATIONS[name](location, events)
    with pytest.raises(ChainBroken, match="head does not match its last event|no valid HMAC"):
        log.append("approved", "bo", "fraud", "2")
    with pytest.raises(ChainBroken):  # a registry change is refused with its event
        ModelRegistry(location, audit_key=b"k").set_policy("fraud", "ana", required_metrics=["auc"])
    assert [e.seq for e in log.query()] == [1, 2, 3]  # nothing appended, the head not repaired
    assert not log.verify().ok
    log.close()


def test_monitoring_counts_a_refused_append_and_never_raises(tmp_path):
    location = str(tmp_path / "predictions.sqlite")
    log, events = filled(location, key=b"k")
    sql(location, "DELETE FROM audit_head")
    errors = ErrorLog()
    monitoring = MonitoringEvents(location, errors)
    monitoring.queue({"alertname": "DatasetDrift", "subject": "", "state": "firing", "severity": "critical",
                      "time": 0.0, "id": "cd" * 8, "model": "fraud", "version": "1"})
    with mock.patch.dict(os.environ, {"MLMON_AUDIT_KEY": "k"}):
        monitoring.write([])
    monitoring.close()
    assert errors.counts()["audit"] == 1 and len(log.query()) == 6
    log.close()


def test_an_append_after_a_head_that_names_another_event_is_refused_even_without_a_key(location):
    log, events = filled(location)
    sql(location, "DELETE FROM audit_events WHERE seq > 4")
    with pytest.raises(ChainBroken, match=r"the head record names event 6, the log ends at event 4"):
        log.append("approved", "bo", "fraud", "2")
    assert log.verify().broken.kind == "truncated"
    log.close()


def strip_and_rehash(location, events, rewrite_seq=None):
    """Remove every HMAC, rewrite one event (if given), re-link and re-hash the chain and set the
    head to its end without an HMAC: all that someone without the key can do."""
    sql(location, "UPDATE audit_events SET mac = NULL")
    prev = events[0].prev_hash
    for e in events:
        f = make_event(e.seq, e.time, e.event_type, "mallory" if e.seq == rewrite_seq else e.actor, e.model,
                       e.version, e.details, prev)
        sql(location, "UPDATE audit_events SET actor = ?, prev_hash = ?, hash = ? WHERE seq = ?",
            (f.actor, f.prev_hash, f.hash, f.seq))
        prev = f.hash
    sql(location, "UPDATE audit_head SET seq = ?, hash = ?, mac = NULL", (events[-1].seq, prev))


@pytest.mark.parametrize("truncate", [False, True])
def test_stripping_every_hmac_does_not_turn_the_key_off(location, truncate):
    log, events = filled(location, key=b"k")
    if truncate:
        sql(location, "DELETE FROM audit_events WHERE seq > 4")
        strip_and_rehash(location, events[:4])
    else:
        strip_and_rehash(location, events, rewrite_seq=2)
    assert AuditLog(location, key=b"").verify().ok  # consistent without the key
    result = log.verify()
    assert (result.broken.kind, result.broken.seq) == ("unsigned", 1), str(result)
    assert str(result).startswith("BROKEN at event 1 (unsigned): it has no HMAC")
    assert log.verify(allow_unsigned_before=7).broken.kind == "bad_mac"  # a stated unsigned start: the head is unsigned
    out = io.StringIO()
    log.export_jsonl(out)
    assert verify_jsonl(out.getvalue().splitlines(), key=b"k").broken.kind == "unsigned"
    log.close()


def test_an_unsigned_start_passes_only_as_stated_and_a_writer_without_the_key_breaks_the_chain(location):
    plain = AuditLog(location, key=b"")
    plain.append("registered", "ana", "fraud", "1")
    signed = AuditLog(location, key=b"k")
    signed.append("submitted", "ana", "fraud", "1")  # the key set from event 2 on: record that outside the database
    assert signed.verify().broken.kind == "unsigned"  # not taken from the database
    result = signed.verify(allow_unsigned_before=2)
    assert result.ok and (result.signed, result.unsigned) == (1, 1)
    assert "1 before the first signed one unsigned" in str(result)
    assert signed.verify(allow_unsigned_before=3).broken.kind == "boundary"
    plain.append("approved", "bo", "fraud", "1")  # a replica started without MLMON_AUDIT_KEY
    assert signed.verify(allow_unsigned_before=2).broken.kind == "unsigned"
    assert AuditLog(location, key=b"other").verify(allow_unsigned_before=2).broken.kind == "bad_mac"
    plain.close()
    signed.close()


def test_a_cut_into_the_unsigned_start_is_found_after_the_next_append(location):
    plain = AuditLog(location, key=b"")
    for step in range(3):
        plain.append("registered", "ana", "fraud", str(step))
    signed = AuditLog(location, key=b"k")
    last = signed.append("submitted", "ana", "fraud", "1")
    sql(location, "DELETE FROM audit_events WHERE seq > 2")
    sql(location, "UPDATE audit_head SET seq = 2, hash = (SELECT hash FROM audit_events WHERE seq = 2), mac = NULL")
    signed.append("approved", "bo", "fraud", "1")  # an unsigned end: taken as the start of a log the key is new to
    assert signed.verify(allow_unsigned_before=last.seq).broken.kind == "boundary"
    plain.close()
    signed.close()


def test_a_registry_change_and_its_event_commit_together(location):
    """An event that cannot be written undoes the change it records (one transaction)."""
    with ModelRegistry(location, audit_key=b"") as registry:
        with pytest.raises(GovernanceError, match="actor"):
            registry.set_policy("fraud", "bad\nactor", required_metrics=["auc"])
        assert registry.policy("fraud").required_metrics == ()
        assert registry.audit.query() == []


WRITER = textwrap.dedent("""
    import os, sys, time
    from mlmon_middleware.governance import AuditLog
    log = AuditLog(sys.argv[1], key=b"k")
    while not os.path.exists(sys.argv[2]):  # both start appending at once
        time.sleep(0.002)
    for i in range(200):
        log.append("labels_ingested", "writer" + sys.argv[3], "fraud", "1", {"i": i})
    log.close()
""")


def test_two_processes_appending_at_once_keep_one_valid_chain(location, tmp_path):
    go = tmp_path / "go"
    AuditLog(location, key=b"k").close()  # the tables exist before the race
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, location, str(go), str(n)], stderr=subprocess.PIPE,
                                text=True) for n in (1, 2)]
    go.touch()
    for writer in writers:
        assert writer.wait(timeout=120) == 0, writer.stderr.read()
        writer.stderr.close()
    with AuditLog(location, key=b"k") as log:
        result = log.verify()
        assert result.ok and result.events == 400 and result.signed == 400, str(result)
        events = log.query()
    assert [e.seq for e in events] == list(range(1, 401))
    for n in (1, 2):
        assert [e.details["i"] for e in events if e.actor == f"writer{n}"] == list(range(200))


# ---------------------------------------------------------------------------------- mlmon audit
def mlmon(*args, key=""):
    out, err = io.StringIO(), io.StringIO()
    with mock.patch.dict(os.environ, {"MLMON_AUDIT_KEY": key}), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        status = main(list(args))
    return status, out.getvalue(), err.getvalue()


def test_mlmon_audit_verify_query_and_export(tmp_path):
    location = str(tmp_path / "predictions.sqlite")
    log, events = filled(location, key=b"k")
    log.close()
    status, out, _ = mlmon("audit", "verify", "--store", str(tmp_path), key="k")
    assert status == 0 and out.startswith(f"ok: 6 events, head 6:{events[-1].hash}; 6 signed")
    status, out, _ = mlmon("audit", "query", "--store", location, "--model", "fraud", "--type", "approved", "deployed")
    assert status == 0 and out.split("\n")[0].split() == ["seq", "time", "event_type", "actor", "model", "version", "details"]
    assert [line.split()[2] for line in out.strip().split("\n")[1:]] == ["approved"]
    export = tmp_path / "audit.jsonl"
    status, _, err = mlmon("audit", "export", "--store", location, "--out", str(export))
    assert status == 0 and err == f"{export}: 6 events\n"
    assert mlmon("audit", "verify", "--jsonl", str(export), "--anchor", f"6:{events[-1].hash}", key="k")[0] == 0
    status, out, _ = mlmon("audit", "verify", "--jsonl", str(export), "--allow-unsigned-before", "7", key="k")
    assert status == 1 and out.startswith("BROKEN at event 1 (boundary)")
    lines = export.read_text().splitlines()
    lines[2] = lines[2].replace('"actor": "bo"', '"actor": "eve"')
    export.write_text("\n".join(lines) + "\n")
    status, out, _ = mlmon("audit", "verify", "--jsonl", str(export))
    assert status == 1 and out.startswith("BROKEN at event 3 (edited)")
    sql(location, "DELETE FROM audit_events WHERE seq = 2")
    status, out, _ = mlmon("audit", "verify", "--store", location)
    assert status == 1 and out.startswith("BROKEN at event 3 (deleted): 1 event(s) before it are missing")
    status, _, err = mlmon("audit", "query", "--store", location, "--since", "yesterday")
    assert status == 2 and err.startswith("mlmon: error: --since: not a time: 'yesterday'")
    status, _, err = mlmon("audit", "verify", "--store", location, "--anchor", "6:abc")
    assert status == 2 and "SEQ:HASH" in err
