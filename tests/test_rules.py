"""The generated Prometheus rules pass promtool's checks and unit tests."""

import pathlib
import shutil
import subprocess

import pytest

from mlmon_middleware.alerts import KINDS
from mlmon_middleware.cli import main
from mlmon_middleware.rules import RuleConfig, render

HERE = pathlib.Path(__file__).parent / "rules"


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: `make test` installs Debian's prometheus package"
    return path


def test_promtool_checks_and_unit_tests_the_rules(tmp_path):
    (tmp_path / "mlmon-rules.yml").write_text(render(RuleConfig(runbook_base="https://wiki.example.com/ml/runbooks")))
    shutil.copy(HERE / "alerts_test.yml", tmp_path / "alerts_test.yml")
    check = subprocess.run([promtool(), "check", "rules", "mlmon-rules.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert check.returncode == 0 and "SUCCESS: 32 rules found" in check.stdout, check.stdout + check.stderr
    test = subprocess.run([promtool(), "test", "rules", "alerts_test.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert test.returncode == 0, test.stdout + test.stderr


def test_every_alert_is_unit_tested_firing_then_resolving():
    import yaml

    def minutes(eval_time: str) -> int:
        return int(eval_time.removesuffix("m"))

    cases = [a for t in yaml.safe_load((HERE / "alerts_test.yml").read_text())["tests"] for a in t["alert_rule_test"]]
    mirrored = {kind.rule for kind in KINDS}  # replayed check by check in tests/test_alert_replay.py
    names = [r["alert"] for g in yaml.safe_load(render(RuleConfig()))["groups"] for r in g["rules"]
             if "alert" in r and r["alert"] not in mirrored]
    for name in names:
        fired = [minutes(a["eval_time"]) for a in cases if a["alertname"] == name and a["exp_alerts"]]
        quiet = [minutes(a["eval_time"]) for a in cases if a["alertname"] == name and not a["exp_alerts"]]
        assert fired and any(q > min(fired) for q in quiet), f"{name}: no promtool case showing it fire, then resolve"


def test_every_alert_has_severity_summary_description_and_runbook():
    import yaml

    groups = yaml.safe_load(render(RuleConfig()))["groups"]
    alerts = [r for g in groups for r in g["rules"] if "alert" in r]
    assert len(alerts) == 23
    for rule in alerts:
        if "labels" in rule:
            assert rule["labels"]["severity"] in ("warning", "critical")
        else:  # the policy's own severity, carried by the series: never overwritten
            assert "severity" in rule["expr"], rule
        assert set(rule["annotations"]) == {"summary", "description"}  # no runbook link to nowhere by default
    base = "https://wiki.example.com/ml/runbooks"
    linked = yaml.safe_load(render(RuleConfig(runbook_base=base)))["groups"]
    for rule in (r for g in linked for r in g["rules"] if "alert" in r):
        assert rule["annotations"]["runbook_url"] == f"{base}#{rule['alert'].lower()}"


def test_cli_renders_with_a_config(tmp_path, capsys):
    config = tmp_path / "thresholds.yml"
    config.write_text("psi_critical: 0.3\nlatency_p95_seconds: 0.2\n")
    assert main(["rules", "render", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert ">= 0.3" in out and "> 0.2" in out
    config.write_text("psi_critcal: 0.3\n")
    assert main(["rules", "render", "--config", str(config)]) == 2
    assert "unknown rule settings ['psi_critcal']" in capsys.readouterr().err
    config.write_text("psi_critical: high\n")
    assert main(["rules", "render", "--config", str(config)]) == 2
    assert "rule setting psi_critical must be a number > 0, got 'high'" in capsys.readouterr().err
    config.write_text("drift_for: soon\n")
    assert main(["rules", "render", "--config", str(config)]) == 2
    assert "drift_for must be a Prometheus duration" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["mlmon:feature_bin_share:fleet", "mlmon:feature_psi:fleet", "mlmon:feature_chi2:fleet",
                                  "mlmon:feature_effect:fleet", "mlmon:feature_drifted:fleet", "mlmon:feature_baseline_rows",
                                  "mlmon:feature_drift_alert:replica"])
def test_recording_rules_for_the_fleet_view(name):
    assert f"record: {name}" in render(RuleConfig())


def test_every_alert_has_a_runbook_section():
    import yaml

    runbooks = (pathlib.Path(__file__).parent.parent / "docs" / "runbooks.md").read_text()
    for group in yaml.safe_load(render(RuleConfig()))["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                assert f"\n## {rule['alert']}\n" in runbooks, rule["alert"]
