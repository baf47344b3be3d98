"""Prometheus alerting and recording rules for mlmon's metrics: ``mlmon rules render``.

Every alert carries ``severity``, a ``summary``, a ``description`` with the values that fired it
and a ``runbook_url`` (``docs/runbooks.md``). ``for:`` durations keep a transient spike from
paging. Thresholds come from :class:`RuleConfig` (``mlmon rules render --config rules.yml``
reads one from YAML or JSON). The recording rules compute the fleet-wide PSI per feature from
``mlmon_feature_bin_total`` summed over every replica, against ``mlmon_baseline_bin_ratio``.

>>> text = render(RuleConfig())
>>> "alert: MLModelFeatureDriftCritical" in text and "record: mlmon:feature_psi:fleet" in text
True
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

RUNBOOK = "https://github.com/mlmon/mlmon-middleware/blob/main/docs/runbooks.md"
BY = "mlmon_model_name, mlmon_model_version"


@dataclasses.dataclass(frozen=True)
class RuleConfig:
    """Thresholds of the generated rules (defaults: the industry's usual PSI levels, 0.1 moderate and 0.25 severe)."""

    performance_metric: str = "accuracy"
    performance_min: float = 0.85
    performance_drop: float = 0.05  # relative to the reference, through mlmon's own degradation alert
    latency_p95_seconds: float = 0.5
    psi_warning: float = 0.1
    psi_critical: float = 0.25
    drift_share: float = 0.5
    volume_change: float = 0.5  # fire when traffic falls below (1 - x) or above (1 + x) of a day earlier
    missing_ratio: float = 0.1
    out_of_range_ratio: float = 0.05
    new_category_ratio: float = 0.05
    label_coverage_min: float = 0.1
    stale_seconds: float = 600.0  # three default check intervals and more
    coverage_min: float = 1.0  # fire when the model receives fields mlmon does not monitor
    drift_for: str = "15m"  # how long critical drift must last before it fires (warning: twice as long)
    fleet_window: str = "1h"  # "all": since each replica started (exact counts, no extrapolation)
    runbook_base: str = RUNBOOK

    @classmethod
    def from_text(cls, text: str) -> RuleConfig:
        """From YAML (when PyYAML is installed) or JSON; unknown keys are an error."""
        from mlmon_middleware.config import ConfigError

        try:
            import yaml

            values = yaml.safe_load(text) or {}
        except ImportError:
            values = orjson.loads(text or "{}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ConfigError(f"unknown rule settings {unknown}; allowed: {sorted(fields)}")
        return cls(**values)


def _alert(name: str, expr: str, duration: str, severity: str, summary: str, description: str,
           config: RuleConfig) -> dict[str, Any]:
    return {"alert": name, "expr": expr, "for": duration, "labels": {"severity": severity},
            "annotations": {"summary": summary, "description": description,
                            "runbook_url": f"{config.runbook_base}#{name.lower()}"}}


def alerts(c: RuleConfig) -> list[dict[str, Any]]:
    model = "{{ $labels.mlmon_model_name }} {{ $labels.mlmon_model_version }}"
    psi = 'max by (%s, feature) (mlmon_feature_drift_score{method="psi"})' % BY
    volume_now = f"sum by ({BY}) (rate(mlmon_predictions_total[1h]))"
    volume_before = f"sum by ({BY}) (rate(mlmon_predictions_total[1h] offset 1d))"
    return [
        _alert("MLModelPerformanceLow",
               f'min by ({BY}, window) (mlmon_performance{{metric="{c.performance_metric}",segment="__all__"}}) '
               f"< {c.performance_min}", "10m", "warning",
               f"{model}: {c.performance_metric} below {c.performance_min}",
               f"{c.performance_metric} is {{{{ $value | printf \"%.3f\" }}}} over window {{{{ $labels.window }}}}.", c),
        _alert("MLModelPerformanceDegraded",
               f'max by ({BY}, subject, severity) (mlmon_alert_active{{alertname="PerformanceDegradation"}}) == 1',
               "0m", "critical", f"{model}: performance dropped against its reference",
               "{{ $labels.subject }} fell by more than the policy's threshold ({{ $labels.severity }}).", c),
        _alert("MLModelLatencyHigh",
               f"histogram_quantile(0.95, sum by ({BY}, le) (rate(mlmon_inference_duration_seconds_bucket[5m]))) "
               f"> {c.latency_p95_seconds}", "10m", "warning", f"{model}: p95 inference latency high",
               "p95 latency is {{ $value | humanizeDuration }} (threshold %ss)." % c.latency_p95_seconds, c),
        _alert("MLModelFeatureDriftCritical", f"{psi} >= {c.psi_critical}", c.drift_for, "critical",
               f"{model}: feature {{{{ $labels.feature }}}} drifted severely",
               "PSI of {{ $labels.feature }} is {{ $value | printf \"%.3f\" }} (critical from " + f"{c.psi_critical}).", c),
        _alert("MLModelFeatureDriftWarning", f"{psi} >= {c.psi_warning} < {c.psi_critical}", _twice(c.drift_for), "warning",
               f"{model}: feature {{{{ $labels.feature }}}} drifted",
               "PSI of {{ $labels.feature }} is {{ $value | printf \"%.3f\" }} (warning from " + f"{c.psi_warning}).", c),
        _alert("MLModelDatasetDrift", f"max by ({BY}) (mlmon_dataset_drift_share) >= {c.drift_share}", c.drift_for,
               "critical", f"{model}: most features drifted",
               "{{ $value | humanizePercentage }} of the features drifted at the last check.", c),
        _alert("MLModelPredictionVolumeAnomaly",
               f"({volume_now} < {1 - c.volume_change} * {volume_before}) or "
               f"({volume_now} > {1 + c.volume_change} * {volume_before})", "30m", "warning",
               f"{model}: prediction volume unlike the same hour yesterday",
               "Predictions per second: {{ $value | printf \"%.2f\" }}.", c),
        _alert("MLModelMissingValues", f"max by ({BY}, feature) (mlmon_feature_missing_ratio) > {c.missing_ratio}",
               "15m", "warning", f"{model}: feature {{{{ $labels.feature }}}} often missing",
               "{{ $value | humanizePercentage }} of the window lacks {{ $labels.feature }}.", c),
        _alert("MLModelOutOfRange", f"max by ({BY}, feature) (mlmon_feature_out_of_range_ratio) > {c.out_of_range_ratio}",
               "15m", "warning", f"{model}: feature {{{{ $labels.feature }}}} outside its training range",
               "{{ $value | humanizePercentage }} of {{ $labels.feature }} is outside the baseline's range.", c),
        _alert("MLModelNewCategories", f"max by ({BY}, feature) (mlmon_feature_new_category_ratio) > {c.new_category_ratio}",
               "15m", "warning", f"{model}: unseen categories in {{{{ $labels.feature }}}}",
               "{{ $value | humanizePercentage }} of {{ $labels.feature }} are categories never seen in training.", c),
        _alert("MLModelLabelCoverageLow",
               f'min by ({BY}) (mlmon_label_coverage{{window="24h"}}) < {c.label_coverage_min}', "1h", "warning",
               f"{model}: few predictions get ground truth",
               "Only {{ $value | humanizePercentage }} of the last day's predictions have a label.", c),
        _alert("MLMonitorStale", f"time() - max by ({BY}) (mlmon_analysis_last_run_seconds) > {c.stale_seconds}",
               "5m", "critical", f"{model}: the monitor stopped checking",
               "The last drift check ran {{ $value | humanizeDuration }} ago.", c),
        _alert("MLMonitorErrors", "sum by (job, instance, stage) (increase(mlmon_monitor_errors_total[10m])) > 0", "5m",
               "warning", "mlmon on {{ $labels.instance }}: monitoring failures ({{ $labels.stage }})",
               "{{ $value | printf \"%.0f\" }} failures at stage {{ $labels.stage }} in 10 minutes "
               "(queue_full and store_queue_full: captures or log rows dropped); serving went on.", c),
        _alert("MLMonitorCoverageLow", f"min by ({BY}) (mlmon_feature_coverage) < {c.coverage_min}", "1h", "warning",
               f"{model}: inputs carry fields the monitor does not watch",
               "mlmon monitors {{ $value | humanizePercentage }} of the fields the model receives; "
               "/mlmon/health names the others.", c),
    ]


def _twice(duration: str) -> str:
    number, unit = int(duration[:-1]), duration[-1]
    return f"{2 * number}{unit}"


def recording(c: RuleConfig) -> list[dict[str, Any]]:
    rows = "mlmon_feature_bin_total" if c.fleet_window == "all" else f"increase(mlmon_feature_bin_total[{c.fleet_window}])"
    share = "mlmon:feature_bin_share:fleet"
    return [
        {"record": share,
         "expr": f"sum by ({BY}, feature, bin) ({rows}) / ignoring(bin) group_left "
                 f"sum by ({BY}, feature) ({rows})"},
        {"record": "mlmon:feature_psi:fleet",
         "expr": f"sum by ({BY}, feature) ((clamp_min({share}, 0.0001) - clamp_min(max by ({BY}, feature, bin) "
                 f"(mlmon_baseline_bin_ratio), 0.0001)) * ln(clamp_min({share}, 0.0001) / clamp_min(max by ({BY}, "
                 f"feature, bin) (mlmon_baseline_bin_ratio), 0.0001)))"},
    ]


def rules(config: RuleConfig) -> dict[str, Any]:
    return {"groups": [{"name": "mlmon-recording", "rules": recording(config)},
                       {"name": "mlmon-alerts", "rules": alerts(config)}]}


def render(config: RuleConfig) -> str:
    """The rules file as YAML (JSON is valid YAML; PyYAML, when present, makes it readable)."""
    data = rules(config)
    try:
        import yaml

        text: str = yaml.safe_dump(data, sort_keys=False, width=200)
        return text
    except ImportError:
        return orjson.dumps(data, option=orjson.OPT_INDENT_2).decode()
