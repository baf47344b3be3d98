"""A Grafana dashboard for mlmon's metrics: ``mlmon dashboard grafana > dashboard.json``.

Panels for traffic and latency, drift per feature, data quality, performance per segment,
attributions, alert state and the monitor's own health, with ``model`` and ``version``
variables read from ``mlmon_predictions_total``. Grafana's dashboard JSON (schema version 39),
with a ``datasource`` variable so it imports into any Grafana with a Prometheus data source.

>>> board = grafana_dashboard()
>>> board["schemaVersion"], [v["name"] for v in board["templating"]["list"]]
(39, ['datasource', 'model', 'version'])
"""

from __future__ import annotations

from typing import Any

SEL = 'mlmon_model_name=~"$model", mlmon_model_version=~"$version"'

# (row title, [(panel title, kind, unit, [(expr, legend)])])
LAYOUT: list[tuple[str, list[tuple[str, str, str, list[tuple[str, str]]]]]] = [
    ("Traffic and latency", [
        ("Predictions per second", "timeseries", "reqps",
         [(f"sum by (http_route, outcome) (rate(mlmon_predictions_total{{{SEL}}}[5m]))", "{{http_route}} {{outcome}}")]),
        ("Inference latency p50 / p95 / p99", "timeseries", "s",
         [(f"histogram_quantile({q}, sum by (le) (rate(mlmon_inference_duration_seconds_bucket{{{SEL}}}[5m])))", f"p{int(q * 100)}")
          for q in (0.5, 0.95, 0.99)]),
        ("Capture errors by reason", "timeseries", "short",
         [(f"sum by (reason) (rate(mlmon_capture_errors_total{{{SEL}}}[5m]))", "{{reason}}")]),
    ]),
    ("Drift", [
        ("PSI per feature", "timeseries", "none",
         [(f'max by (feature) (mlmon_feature_drift_score{{{SEL}, method="psi"}})', "{{feature}}")]),
        ("Drifting features", "table", "none",
         [(f"max by (feature, severity) (mlmon_feature_drift_detected{{{SEL}}}) == 1", "{{feature}}")]),
        ("Share of features drifting", "stat", "percentunit",
         [(f"max(mlmon_dataset_drift_share{{{SEL}}})", "share")]),
        ("Fleet PSI per feature (recording rule)", "timeseries", "none",
         [('max by (feature) (mlmon:feature_psi:fleet{mlmon_model_name=~"$model"})', "{{feature}}")]),
        ("Prediction drift", "timeseries", "none",
         [(f'max by (output) (mlmon_prediction_drift_score{{{SEL}, method="psi"}})', "{{output}}")]),
    ]),
    ("Data quality", [
        ("Missing ratio", "timeseries", "percentunit",
         [(f"max by (feature) (mlmon_feature_missing_ratio{{{SEL}}})", "{{feature}}")]),
        ("Out of range ratio", "timeseries", "percentunit",
         [(f"max by (feature) (mlmon_feature_out_of_range_ratio{{{SEL}}})", "{{feature}}")]),
        ("New category ratio", "timeseries", "percentunit",
         [(f"max by (feature) (mlmon_feature_new_category_ratio{{{SEL}}})", "{{feature}}")]),
    ]),
    ("Performance", [
        ("Performance overall", "timeseries", "none",
         [(f'max by (metric, window) (mlmon_performance{{{SEL}, segment="__all__"}})', "{{metric}} {{window}}")]),
        ("Performance per segment", "timeseries", "none",
         [(f'max by (segment) (mlmon_performance{{{SEL}, metric="accuracy", segment!="__all__"}})', "{{segment}}")]),
        ("Label coverage", "timeseries", "percentunit", [(f"max by (window) (mlmon_label_coverage{{{SEL}}})", "{{window}}")]),
        ("Label delay p50", "timeseries", "s",
         [(f"histogram_quantile(0.5, sum by (le) (rate(mlmon_label_delay_seconds_bucket{{{SEL}}}[1h])))", "p50")]),
    ]),
    ("Explanations", [
        ("Mean |SHAP| per feature", "timeseries", "none",
         [(f'max by (feature) (mlmon_feature_attribution{{{SEL}, source="current"}})', "{{feature}}")]),
        ("Explanations by status", "timeseries", "short",
         [(f"sum by (status) (rate(mlmon_explanations_total{{{SEL}}}[5m]))", "{{status}}")]),
    ]),
    ("Alerts and the monitor's health", [
        ("Active alerts", "table", "none",
         [(f"max by (alertname, subject, severity) (mlmon_alert_active{{{SEL}}})", "{{alertname}} {{subject}}")]),
        ("Seconds since the last check", "stat", "s", [(f"time() - max(mlmon_analysis_last_run_seconds{{{SEL}}})", "age")]),
        ("Monitor errors by stage", "timeseries", "short",
         [("sum by (stage) (rate(mlmon_monitor_errors_total[5m]))", "{{stage}}")]),
        ("Rows in the window", "stat", "short", [(f"sum(mlmon_reservoir_size{{{SEL}}})", "rows")]),
        ("Baseline age", "stat", "s", [(f"max(mlmon_baseline_age_seconds{{{SEL}}})", "age")]),
        ("Feature coverage", "stat", "percentunit", [(f"min(mlmon_feature_coverage{{{SEL}}})", "monitored / received")]),
        ("Alert events", "timeseries", "short",
         [(f"sum by (state) (increase(mlmon_alert_events_total{{{SEL}}}[1h]))", "{{state}}")]),
    ]),
]


def grafana_dashboard(title: str = "ML model monitoring (mlmon)") -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    y = 0
    next_id = 1
    for row_title, row_panels in LAYOUT:
        panels.append({"id": next_id, "type": "row", "title": row_title, "collapsed": False,
                       "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []})
        next_id += 1
        y += 1
        width = 24 // min(len(row_panels), 3)
        for i, (panel_title, kind, unit, targets) in enumerate(row_panels):
            x = (i % 3) * width
            if i and i % 3 == 0:
                y += 8
            panels.append({
                "id": next_id, "type": kind, "title": panel_title,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "gridPos": {"x": x, "y": y, "w": width, "h": 8},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {},
                "targets": [{"refId": chr(ord("A") + j), "expr": expr, "legendFormat": legend,
                             "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                            for j, (expr, legend) in enumerate(targets)],
            })
            next_id += 1
        y += 8
    def variable(name: str, label: str) -> dict[str, Any]:
        return {"name": name, "type": "query", "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "query": {"query": f"label_values(mlmon_predictions_total, {label})", "refId": name},
                "includeAll": True, "multi": True, "refresh": 2, "current": {"text": "All", "value": "$__all"}}

    return {
        "title": title, "uid": "mlmon-models", "schemaVersion": 39, "version": 1, "editable": True,
        "tags": ["mlmon", "ml"], "timezone": "browser", "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus"},  # Grafana picks the default one
            variable("model", "mlmon_model_name"), variable("version", "mlmon_model_version")]},
        "annotations": {"list": []},
        "panels": panels,
    }
