"""The compliance report (``mlmon report compliance``): the four-fifths rule against a hand
computation, every section and its source on both backends (tests/governance_fixtures.py), the
chain's verification (ok, and the first broken link after an edit), the ``report_exported`` audit
event, the CLI's one-line refusals, and the HTML in headless Chromium."""

import hashlib
import json
import time

import governance_fixtures
import pytest
from document_page import load_document

from mlmon_middleware.cli import main
from mlmon_middleware.governance import ModelRegistry
from mlmon_middleware.governance.evidence import summarize_log
from mlmon_middleware.governance.report import render_compliance_report
from mlmon_middleware.store import LogRow, open_store

location, postgres_database = governance_fixtures.location, governance_fixtures.postgres_database  # both backends

# (group, predictions, selected, how a prediction is written): selection rates 0.6, 0.42, 0.6
GROUPS = [("A", 50, 30, "score"), ("B", 50, 21, "score"), ("C", 20, 12, "class")]


def fill(location, now):
    """fraud v1 registered, approved (by another person, with a reason), deployed; two alerts
    fired, one acknowledged; and the GROUPS' predictions over the last hours (every 5th
    explained), those of group A labelled 1."""
    with ModelRegistry(location, audit_key=b"") as registry:
        registry.register_model("fraud", "v1", b"model", {"accuracy": 0.9}, "ds@company.com")
        registry.submit_for_review("fraud", "v1", "ds@company.com")
        registry.approve_model("fraud", "v1", "lead@company.com", "bias review <done> | ok")
        registry.deploy_model("fraud", "v1", "ops@company.com")
        registry.audit.append("alert_fired", "mlmon", "fraud", "v1", {"alertname": "DatasetDrift", "id": "a1"})
        registry.audit.append("alert_fired", "mlmon", "fraud", "v1", {"alertname": "LatencyHigh", "id": "a2"})
        registry.audit.append("alert_acknowledged", "oncall", "fraud", "v1", {"alertname": "DatasetDrift", "id": "a1"})
    rows, n = [], 0
    for group, count, selected, kind in GROUPS:
        for i in range(count):
            chosen = i < selected
            prediction = {"score": 0.8 if chosen else 0.3} if kind == "score" else {"label": 1 if chosen else 0}
            rows.append(LogRow(f"{group}{i}", "fraud", "v1", now - 7200 + n, json.dumps(prediction),
                               json.dumps({"region": group}), None, "{}" if n % 5 == 0 else None))
            n += 1
    log = open_store(location)
    log.write(rows)
    log.set_labels("fraud", [(f"A{i}", 1, now) for i in range(50)])
    log.close()


def test_four_fifths_matches_a_hand_computation(tmp_path):
    db_path = str(tmp_path / "predictions.sqlite")
    now = time.time()
    fill(db_path, now)
    with ModelRegistry(db_path, audit_key=b"") as registry:
        summary = summarize_log(registry.db, "fraud", now - 86400, now + 1)
    rates = {r.group: r for r in summary.fairness()["region"]}
    # by hand: A 30/50 = 0.6 (the highest), B 21/50 = 0.42 -> 0.42 / 0.6 = 0.7 < 0.8, C 12/20 = 0.6 -> 1.0
    assert (rates["A"].count, rates["A"].selected, rates["A"].ratio, rates["A"].flagged) == (50, 30, 1.0, False)
    assert (rates["B"].selected, rates["B"].rate, rates["B"].flagged) == (21, 0.42, True)
    assert rates["B"].ratio == pytest.approx(0.7)
    assert (rates["C"].rate, rates["C"].ratio, rates["C"].flagged, rates["C"].few) == (0.6, 1.0, False, True)
    assert (summary.predictions, summary.labelled, summary.explained) == (120, 50, 24)


def test_report_sections_sources_and_export_event(location):
    now = time.time()
    fill(location, now)
    with ModelRegistry(location, audit_key=b"") as registry:
        report = render_compliance_report("fraud", now - 86400, now + 1, fmt="md", registry=registry, actor="auditor")
        exported = registry.audit.query(event_type="report_exported")
        assert registry.audit.verify().ok
    sections = {part.split("\n", 1)[0]: part for part in report.split("\n## ")[1:]}
    assert list(sections) == ["Summary", "Registry history", "Audit chain", "Monitoring coverage", "Drift",
                              "Performance per window", "Fairness: the four-fifths rule", "Alerts and acknowledgements",
                              "Explanation coverage"]
    assert all("*Source: " in part for part in sections.values())
    assert "- 1 group(s) below four-fifths" in sections["Summary"]
    assert "- 1 fired alert(s) without an acknowledgement" in sections["Summary"]
    assert "| v1 | deployed | ds@company.com at " in sections["Registry history"]
    history = sections["Registry history"]
    assert "| lead@company.com | " in history and "bias review \\<done\\> \\| ok" in history
    assert "Result: ok: 7 events, head 7:" in sections["Audit chain"]
    assert "120 predictions logged" in sections["Monitoring coverage"] and "| v1 | 120 |" in sections["Monitoring coverage"]
    assert "DatasetDrift" in sections["Drift"] and "LatencyHigh" not in sections["Drift"]
    # group A is labelled 1 and 30 of its 50 predictions are selections: accuracy 0.6, recall 0.6
    assert "| 120 | 50 | 0.6 | 1 | 0.6 | 0.75 |" in sections["Performance per window"]
    assert "| region | B | 50 | 21 | 0.420 | 0.700 | below 0.8 |  |" in sections["Fairness: the four-fifths rule"]
    assert "| region | C | 20 | 12 | 0.600 | 1.000 | ok | fewer than 30 |" in sections["Fairness: the four-fifths rule"]
    assert "| DatasetDrift | 1 | 0 | 1 |" in sections["Alerts and acknowledgements"]
    assert "| LatencyHigh | 1 | 0 | 0 |" in sections["Alerts and acknowledgements"]
    assert "24 of 120 logged predictions (20.0%)" in sections["Explanation coverage"]
    assert len(exported) == 1
    event = exported[0]
    assert (event.actor, event.model, event.details["format"], event.details["chain_ok"]) == ("auditor", "fraud", "md", True)
    assert event.details["sha256"] == hashlib.sha256(report.encode()).hexdigest()


def test_a_broken_chain_is_reported(tmp_path):
    db_path = str(tmp_path / "predictions.sqlite")
    now = time.time()
    fill(db_path, now)
    governance_fixtures.sql(db_path, "UPDATE audit_events SET actor = 'mallory' WHERE seq = 3")
    report = render_compliance_report("fraud", now - 86400, fmt="md", location=db_path, actor="auditor")
    assert "| audit chain | BROKEN |" in report
    assert "Result: BROKEN at event 3 (edited)" in report
    assert "The chain is broken at event 3 (edited)" in report


def test_a_cut_off_log_still_gets_its_report_which_says_it_is_not_recorded(tmp_path, capsys, caplog):
    db_path = str(tmp_path / "predictions.sqlite")
    now = time.time()
    fill(db_path, now)
    governance_fixtures.sql(db_path, "DELETE FROM audit_events WHERE seq = (SELECT MAX(seq) FROM audit_events)")
    out = tmp_path / "report.md"
    assert main(["report", "compliance", "fraud", "--since", "1d", "--store", db_path, "--out", str(out),
                 "--format", "md", "--actor", "auditor"]) == 0
    report = out.read_text()
    assert "| audit chain | BROKEN |" in report
    assert "this report's export is not recorded in the audit log" in report
    assert r"(no report\_exported event)" in report  # Markdown-escaped
    assert "not recorded in the audit log" in caplog.text
    with ModelRegistry(db_path, audit_key=b"") as registry:
        assert registry.audit.query(event_type="report_exported") == []


def test_cli_writes_the_report_and_refuses_in_one_line(tmp_path, capsys):
    db_path = str(tmp_path / "predictions.sqlite")
    fill(db_path, time.time())
    out = tmp_path / "report.html"
    assert main(["report", "compliance", "fraud", "--since", "1d", "--store", db_path, "--out", str(out),
                 "--actor", "auditor", "--window", "6h"]) == 0
    assert capsys.readouterr().err.startswith(f"{out}: report written")
    html = out.read_text()
    assert html.startswith("<!doctype html>") and "bias review &lt;done&gt; | ok" in html
    for argv, message in (
            (["--since", "yesterday"], "mlmon: error: --since: not a time: 'yesterday'"),
            (["--since", "1d", "--until", "2d"], "mlmon: error: the period is empty"),
            (["--since", "30d", "--window", "1m"], "mlmon: error: a window of 60 s cuts the period into more than 1000"),
            (["--since", "1d", "--window", "soon"], "mlmon: error: --window 'soon': expected a duration")):
        assert main(["report", "compliance", "fraud", "--store", db_path, *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(message), err
    with ModelRegistry(db_path, audit_key=b"") as registry:
        assert len(registry.audit.query(event_type="report_exported")) == 1  # refusals record nothing

    page = load_document(html)
    assert page.problems == []
    assert page.headings[0] == "Summary" and "Alerts and acknowledgements" in page.headings
    assert "bias review <done> | ok" in page.text
