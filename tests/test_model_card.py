"""The model card (``mlmon card render``, ``render_card``): the registry's facts in Markdown and in
self-contained HTML with hostile text escaped, the numbers it reads offline from the prediction log
and the audit log, the live sections from a running Monitor, and the HTML in headless Chromium
(no console message, no request, no script run)."""

import json
import time

import pytest
from document_page import load_document

from mlmon_middleware import Monitor, MonitorConfig
from mlmon_middleware.cli import main
from mlmon_middleware.governance import ModelFacts, ModelRegistry, UnknownVersion
from mlmon_middleware.governance.card import render_card
from mlmon_middleware.store import LogRow, open_store

HOSTILE = "<script>alert(1)</script> | **bold** [link](http://example.com)"
FACTS = {"owner": "risk-team@company.com", "description": "Scores card payments for fraud.",
         "intended_use": [HOSTILE, "real-time scoring of card payments"],
         "out_of_scope_uses": ["credit decisions"], "training_data": "EU card payments, labelled by chargebacks",
         "training_data_start": "2024-01-01", "training_data_end": "2024-06-30", "training_data_size": 1200000,
         "evaluation_data": "July 2024", "limitations": ["merchants younger than 30 days"],
         "biases": ["customers aged 18-21 are under-represented"], "mitigations": ["reweighting by age band"]}


@pytest.fixture
def store(tmp_path):
    """A database with fraud v1 registered, approved by another person and deployed; an alert
    fired; and 40 logged predictions of the last 2 days (every 4th explained, half labelled)."""
    location = str(tmp_path / "predictions.sqlite")
    with ModelRegistry(location, audit_key=b"") as registry:
        registry.register_model("fraud", "v1", b"model bytes", {"accuracy": 0.95, "recall": 0.88}, "ds@company.com",
                                group_metrics={"region=EU": {"recall": 0.86}}, facts=ModelFacts.from_dict(FACTS))
        registry.submit_for_review("fraud", "v1", "ds@company.com")
        registry.approve_model("fraud", "v1", "lead@company.com", "metrics and card reviewed")
        registry.deploy_model("fraud", "v1", "ops@company.com")
        registry.audit.append("alert_fired", "mlmon", "fraud", "v1", {"alertname": "FeatureDrift", "subject": "amount"})
    log = open_store(location)
    now = time.time()
    # 40 predictions over the last ~2 days: score 0.9 for even i (predicted 1), 0.2 for odd i
    log.write([LogRow(f"p{i}", "fraud", "v1", now - 60 - 3600 * i, json.dumps({"score": 0.9 if i % 2 == 0 else 0.2}),
                      json.dumps({"region": "EU"}), None, "{}" if i % 4 == 0 else None) for i in range(40)])
    # labels for i < 20: all 1, so the even ones (10 of 20) are right
    log.set_labels("fraud", [(f"p{i}", 1, now) for i in range(20)])
    log.close()
    return location


def test_markdown_card_has_the_facts_escaped(store):
    card = render_card("fraud", "v1", fmt="md", location=store)
    for text in ("# Model card: fraud v1", "risk-team@company.com", "| date range | 2024-01-01 to 2024-06-30 |",
                 "| rows | 1,200,000 |", "- credit decisions", "- reweighting by age band", "| region=EU | recall | 0.86 |",
                 "| accuracy | 0.95 |", "approved by lead@company.com", "metrics and card reviewed", "| state | deployed |"):
        assert text in card, text
    assert "<script>" not in card
    assert "\\<script\\>alert(1)\\</script\\> \\| \\*\\*bold\\*\\* \\[link\\](http://example.com)" in card
    assert "Drift: not available offline" in card


def test_offline_numbers_come_from_the_logs(store):
    card = render_card("fraud", fmt="md", location=store)  # the deployed version
    assert "10 of 40 logged predictions (25.0%) carry an explanation" in card
    assert "40 predictions, 20 labelled" in card
    # the last day's window: 24 predictions, the 20 labelled ones (all 1) among them, 10 predicted 1:
    # accuracy 0.5, precision 1, recall 0.5; the day before: 16 predictions, none labelled
    windows = [line for line in card.splitlines() if line.startswith("| ") and " UTC | " in line]
    assert windows[-1].endswith("| 24 | 20 | 0.5 | 1 | 0.5 | 0.6667 | n/a | 0.8574 |"), windows
    assert windows[-2].endswith("| 16 | 0 | n/a | n/a | n/a | n/a | n/a | n/a |"), windows
    # the four-fifths table: one group, all 40 predictions, 20 selected
    assert "| region | EU | 40 | 20 | 0.500 | 1.000 | ok |  |" in card
    assert "FeatureDrift" in card.split("## Alert history")[1]
    assert "no baseline registered or set" in card


def test_live_sections_come_from_the_running_monitor(store, tmp_path):
    mon = Monitor(MonitorConfig(tracing=False, store_dir=str(tmp_path / "live")))  # a log of its own
    try:
        model = mon.model("fraud", "v1", segments=["region"], performance={"protected": "region", "task": "binary"})
        # EU: 10 predictions, all positive; US: 10, 4 positive; all labelled 1
        ids = [model.record({"amount": float(i), "region": "EU" if i < 10 else "US"},
                            {"score": 0.9 if i < 14 else 0.1}) for i in range(20)]
        assert model.record_outcomes([(pid, 1, None) for pid in ids])["labelled"] == 20
        card = render_card("fraud", fmt="md", location=store, monitor=mon)
        assert "live: the running service serves this version" in card
        drift = card.split("## Drift")[1].split("## ")[0]
        assert "the service's last drift check" in drift and "Warming up: 20 of" in drift
        performance = card.split("## Performance over recent windows")[1].split("## ")[0]
        assert "| last\\_1000 | 20 | 0.7 | 1 | 0.7 |" in performance  # 14 of 20 predicted 1, all labelled 1
        # US's positive rate 0.4, its ratio to EU's 1.0: 0.4; TPR 0.4, no negatives (FPR n/a)
        fairness = card.split("## Fairness over recent windows")[1].split("## ")[0]
        assert "| last\\_1000 | region | US | 10 | 0.400 | 0.400 | 0.4 | n/a |" in fairness
        assert "no alert firing now" in card
        other = Monitor(MonitorConfig(tracing=False, store_dir=str(tmp_path)))
        try:
            other.model("fraud", "v2")
            card = render_card("fraud", "v1", fmt="md", monitor=other)
            assert "offline: the running service serves version 'v2', not this one" in card
            assert "Drift: not available offline" in card
        finally:
            other.shutdown()
    finally:
        mon.shutdown()


def test_cli_renders_and_refuses_in_one_line(store, tmp_path, capsys):
    out = tmp_path / "card.html"
    assert main(["card", "render", "fraud", "v1", "--store", store, "--format", "html", "--out", str(out)]) == 0
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out.read_text()
    assert main(["card", "render", "fraud", "v9", "--store", store]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == "mlmon: error: model 'fraud' version 'v9' is not registered"
    assert main(["card", "render", "x" * 100_000, "--store", store]) == 2  # a bounded message for any name
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("mlmon: error: model must be at most 200 characters") and len(err) < 400
    with ModelRegistry(store, audit_key=b"") as registry:
        registry.retire_model("fraud", "v1", "ops@company.com")
    with pytest.raises(UnknownVersion, match="no deployed version"):
        render_card("fraud", location=store)
    with pytest.raises(ValueError, match="format must be one of md, html, got 'pdf'"):
        render_card("fraud", "v1", fmt="pdf", location=store)


def test_html_card_in_headless_chromium(store):
    html = render_card("fraud", "v1", fmt="html", location=store)
    assert "<script" not in html.lower() and "http://example.com" in html  # as text only
    page = load_document(html)
    assert page.problems == []
    assert HOSTILE in page.text  # shown as written, not run
    assert page.headings[:4] == ["Overview", "Approvals", "Intended use", "Out-of-scope uses"]
    assert "Explanation coverage" in page.headings and "Alert history" in page.headings
    assert page.tables >= 6
