"""One alert truth: recorded check sequences replayed through mlmon's alert state machine and,
as the series mlmon exports after each check, through the rendered Prometheus rules in promtool.
The same alerts must fire and resolve at the same checks, with the same severities."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from mlmon_middleware import Monitor, MonitorConfig
from mlmon_middleware.alerts import KINDS
from mlmon_middleware.gauges import observe
from mlmon_middleware.instruments import ALERT_ACTIVE, ANALYSIS_LAST_RUN
from mlmon_middleware.rules import RuleConfig, render

RULE = {kind.name: kind.rule for kind in KINDS}
N, W, C = "none", "warning", "critical"

# check by check, the severity of each condition (alertname, subject) the checks raised
SCENARIOS = {
    "drift rises, is sustained, turns critical, resolves": {
        ("FeatureDrift", "income"): [N, W, N, W, W, W, C, C, C, N, N, N, N],
        ("DatasetDrift", ""): [N, N, N, N, C, C, C, C, N, N, N, N, N],
        ("PredictionDrift", "prediction"): [N, N, W, W, W, N, N, N, N, N, N, N, N],
    },
    "a performance drop": {
        ("PerformanceDegradation", "accuracy@last_1000"): [N, W, C, C, C, C, W, N, N, N, N],
        ("ConceptDrift", "error_stream"): [N, W, W, W, N, N, N, N, N, N, N],
    },
    "a fairness breach, and attributions that move": {
        ("DisparateImpact", "group@last_1000"): [N, N, W, W, W, W, N, W, N, N, N, N],
        ("AttributionDrift", "debt_ratio"): [W, W, N, N, W, W, W, N, N, N, N, N],
    },
    "a feature trending toward its warning level, which it then reaches": {
        ("DriftForecast", "income"): [N, W, W, W, W, N, N, N, N, N],
        ("FeatureDrift", "income"): [N, N, N, N, W, W, W, N, N, N],
    },
    "the features' correlations break, then hold again": {
        ("MultivariateDrift", "pca"): [N, W, W, W, N, N, N, N],
        ("MultivariateDrift", "classifier"): [N, N, W, W, W, N, N, N],
    },
    "the estimate of a metric falls before any label, then recovers": {
        ("EstimatedPerformanceDrop", "accuracy"): [N, W, C, C, W, N, N, N],
    },
    "a version served before it is approved, then approved and deployed": {
        ("ModelNotApproved", "2"): [C, C, C, C, N, N, N, N],
    },
}


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: `make test` installs Debian's prometheus package"
    return path


def prometheus_labels(attrs: dict) -> dict[str, str]:
    return {key.replace(".", "_"): str(value) for key, value in attrs.items()}


def fill(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m.group(1), ""), template)


def replay(conditions: dict[tuple[str, str], list[str]]) -> tuple[list[dict], list[list[tuple[str, str, str]]]]:
    """Run the checks through a real model's alert state; the exported series and the firing
    alerts after each check."""
    mon = Monitor(MonitorConfig(tracing=False, check_interval=0))
    model = mon.model("fraud", version="2")
    checks = len(next(iter(conditions.values())))
    exported, firing = [], []
    for i in range(checks):
        model.checker.alerts.update({key: severities[i] for key, severities in conditions.items()})
        model.checker.last_run = float(i * 60)
        model.checker.report = {"status": "ok"}  # the last-run gauge is exported once a check ran
        exported.append({tuple(sorted(prometheus_labels(a).items())): value
                         for value, a in observe(ALERT_ACTIVE, [model], mon.errors)})
        exported[-1][(("__name__", "mlmon_analysis_last_run_seconds"), *sorted(prometheus_labels(model.attrs).items()))] = \
            observe(ANALYSIS_LAST_RUN, [model], mon.errors)[0][0]
        firing.append(list(model.checker.alerts.active()))
    mon.shutdown()
    return exported, firing


def promtool_case(name: str, exported: list[dict], firing: list[list[tuple[str, str, str]]], rules: dict) -> dict:
    annotations = {r["alert"]: r["annotations"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    series: dict[tuple, list[str]] = {}
    for i, check in enumerate(exported):
        for key, value in check.items():
            series.setdefault(key, ["_"] * len(exported))[i] = f"{value:g}"
    for values in series.values():  # a gauge that is no longer exported is stale at the next scrape
        for i in range(1, len(values)):
            if values[i] == "_" and values[i - 1] not in ("_", "stale"):
                values[i] = "stale"
    input_series = []
    for key, values in series.items():
        labels = dict(key)
        metric = labels.pop("__name__", "mlmon_alert_active")
        input_series.append({"series": metric + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}",
                             "values": " ".join(values)})
    tests = []
    for i, active in enumerate(firing):
        for kind in KINDS:
            expected = []
            for alertname, subject, severity in active:
                if alertname == kind.name:
                    labels = {"mlmon_model_name": "fraud", "mlmon_model_version": "2", "severity": severity}
                    if subject:  # an empty label is no label in Prometheus
                        labels["subject"] = subject
                    expected.append({"exp_labels": labels,
                                     "exp_annotations": {k: fill(v, labels) for k, v in annotations[kind.rule].items()}})
            tests.append({"eval_time": f"{i}m", "alertname": kind.rule, "exp_alerts": expected})
    return {"name": name, "interval": "1m", "input_series": input_series, "alert_rule_test": tests}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_in_process_alerts_and_the_rendered_rules_agree_check_by_check(tmp_path, scenario):
    rendered = render(RuleConfig())
    (tmp_path / "rules.yml").write_text(rendered)
    exported, firing = replay(SCENARIOS[scenario])
    kinds_fired = {a for check in firing for a, _, _ in check}
    assert kinds_fired == {alertname for alertname, _ in SCENARIOS[scenario]}  # every kind fires in its scenario
    assert any(firing[i] and not firing[-1] for i in range(len(firing)))  # and everything resolves
    case = promtool_case(scenario, exported, firing, yaml.safe_load(rendered))
    (tmp_path / "replay_test.yml").write_text(yaml.safe_dump(
        {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": [case]}, sort_keys=False))
    result = subprocess.run([promtool(), "test", "rules", "replay_test.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_kind_of_the_policy_is_replayed():
    assert {name for scenario in SCENARIOS.values() for name, _ in scenario} == set(RULE)
