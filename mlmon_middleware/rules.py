"""Prometheus alerting and recording rules for mlmon's metrics: ``mlmon rules render``.

The policy is the one truth. Every alert the checks raise (:data:`~mlmon_middleware.alerts.KINDS`)
is exported as ``mlmon_alert_active{alertname, subject, severity}`` once it is sustained, and its
rule fires on that series: the same checks, the same severities (carried by the series, never
set by the rule), the same resolution. Drift is the exception when a model runs as several
replicas (counted from ``mlmon_analysis_last_run_seconds``): each replica's window holds only
its share of the traffic, so ``MLModelFleetFeatureDrift`` and ``MLModelFleetDatasetDrift`` then
judge the fleet's summed bin counts instead (and the per-replica drift rules stand down), a
chi² test against the baseline's shares at the policy's level (the critical value comes from
``mlmon_feature_drift_critical``) with the same practical effect floor (on w of the bin shares),
critical from the policy's PSI level (in-process checks also call a Wasserstein/σ of
``effect_critical`` critical; PromQL has no fleet Wasserstein), and keep each replica's own verdict as
``mlmon:feature_drift_alert:replica`` for drill-down. The fleet rules see numeric and categorical
features alike (quantile bins, or the baseline's categories plus one bin for unseen ones).

The other rules (latency, volume, data quality, label coverage, the monitor's own health) read
their metrics directly. Every alert carries ``severity``, a ``summary``, a ``description``, and
a ``runbook_url`` once ``runbook_base`` says where your copy of ``docs/runbooks.md`` is served.
Thresholds come from :class:`RuleConfig` (``mlmon rules render --config rules.yml`` reads YAML
or JSON; each key is checked).

>>> text = render(RuleConfig())
>>> "alert: MLModelFeatureDrift" in text and "record: mlmon:feature_chi2:fleet" in text
True
>>> RuleConfig(psi_critical="high")
Traceback (most recent call last):
...
mlmon_middleware.config.ConfigError: rule setting psi_critical must be a number > 0, got 'high'
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import orjson

from mlmon_middleware.alerts import KINDS, AlertKind
from mlmon_middleware.config import ConfigError
from mlmon_middleware.drift.policy import DriftPolicy

BY = "mlmon_model_name, mlmon_model_version"
MODEL = "{{ $labels.mlmon_model_name }} {{ $labels.mlmon_model_version }}"
REPLICAS = f"count by ({BY}) (mlmon_analysis_last_run_seconds)"
DURATION = re.compile(r"\d+[smhdw]\Z")
_POLICY = DriftPolicy()


@dataclasses.dataclass(frozen=True)
class RuleConfig:
    """Thresholds of the generated rules. The drift levels default to :class:`DriftPolicy`'s:
    set them to your policy's when it differs (``effect``, ``psi_critical``, ``drift_share``)."""

    performance_metric: str = "accuracy"
    performance_min: float = 0.85
    latency_p95_seconds: float = 0.5
    effect: float = _POLICY.thresholds.effect  # fleet drift: the practical effect floor (w of the bin shares)
    psi_critical: float = _POLICY.thresholds.psi_critical  # fleet drift: critical from this PSI
    drift_share: float = _POLICY.share  # fleet dataset drift: this share of the features drifted
    fleet_min_rows: int = 100  # fleet drift is judged from this many rows in the fleet window
    volume_change: float = 0.5  # fire when traffic falls below (1 - x) or above (1 + x) of a day earlier
    missing_ratio: float = 0.1
    out_of_range_ratio: float = 0.05
    new_category_ratio: float = 0.05
    label_coverage_min: float = 0.1
    stale_seconds: float = 600.0  # three default check intervals and more
    coverage_min: float = 1.0  # fire when the model receives fields mlmon does not monitor
    drift_for: str = "15m"  # how long fleet drift must last before it fires
    fleet_window: str = "1h"  # "all": since each replica started (exact counts, no extrapolation)
    runbook_base: str = ""  # where your copy of docs/runbooks.md is served; empty: no runbook_url

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type in ("float", "int"):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                    raise ConfigError(f"rule setting {field.name} must be a number > 0, got {value!r}")
            elif not isinstance(value, str) or not (value or field.name == "runbook_base"):
                raise ConfigError(f"rule setting {field.name} must be a non-empty string, got {value!r}")
        for name in ("drift_for", "fleet_window"):
            value = getattr(self, name)
            if not DURATION.match(value) and not (name == "fleet_window" and value == "all"):
                raise ConfigError(f"rule setting {name} must be a Prometheus duration such as 15m"
                                  f"{' or all' if name == 'fleet_window' else ''}, got {value!r}")

    @classmethod
    def from_text(cls, text: str) -> RuleConfig:
        """From YAML (when PyYAML is installed) or JSON; unknown keys and unreadable text are a
        :class:`ConfigError` saying why (where YAML is needed but PyYAML missing: how to get it).

        >>> RuleConfig.from_text('{"psi_critical": 0.3}').psi_critical
        0.3
        >>> RuleConfig.from_text("[0.3]")
        Traceback (most recent call last):
        ...
        mlmon_middleware.config.ConfigError: rule settings must be a mapping of setting: value
        """
        try:
            import yaml
        except ImportError:
            try:
                values = orjson.loads(text or "{}")
            except orjson.JSONDecodeError as exc:
                raise ConfigError(f"rule settings are not JSON ({exc}), and reading YAML needs PyYAML: "
                                  "pip install 'mlmon-middleware[cli]' (or pyyaml)") from None
        else:
            try:
                values = yaml.safe_load(text) or {}
            except yaml.YAMLError as exc:  # its text spans lines; the problem and where it is
                mark = getattr(exc, "problem_mark", None)
                where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
                problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
                raise ConfigError(f"rule settings are not valid YAML: {problem}{where}") from None
        if not isinstance(values, dict):
            raise ConfigError("rule settings must be a mapping of setting: value")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(key) for key in set(values) - fields)
        if unknown:
            raise ConfigError(f"unknown rule settings {unknown}; allowed: {sorted(fields)}")
        return cls(**values)


def _alert(name: str, expr: str, duration: str, severity: str | None, summary: str, description: str,
           config: RuleConfig) -> dict[str, Any]:
    """One alerting rule; ``severity`` None: carried by the series the expression returns."""
    rule: dict[str, Any] = {"alert": name, "expr": expr, "for": duration}
    if severity is not None:
        rule["labels"] = {"severity": severity}
    rule["annotations"] = {"summary": summary, "description": description}
    if config.runbook_base:
        rule["annotations"]["runbook_url"] = f"{config.runbook_base}#{name.lower()}"
    return rule


def _policy_alert(kind: AlertKind, c: RuleConfig) -> dict[str, Any]:
    """The rule mirroring one kind of the policy's alerts. For the fleet kinds, it stands down
    where the fleet rules judge instead: several replicas, and (for a feature) fleet series of it."""
    expr = f'max by ({BY}, subject, severity) (mlmon_alert_active{{alertname="{kind.name}"}}) == 1'
    fleet_judged = f"count by ({BY}) (mlmon_feature_drift_critical) and on ({BY}) ({REPLICAS} > 1)"
    if kind.fleet and kind.subject == "feature":
        judged = (f'label_replace(max by ({BY}, feature) (mlmon_feature_drift_critical), "subject", "$1", "feature", "(.*)") '
                  f"and on ({BY}) ({REPLICAS} > 1)")
        expr = f"({expr}) unless on ({BY}, subject) ({judged})"
    elif kind.fleet:
        expr = f"({expr}) unless on ({BY}) ({fleet_judged})"
    summary = kind.summary.format(subject="{{ $labels.subject }}")
    description = (f"mlmon's {kind.name} alert ({{{{ $labels.severity }}}}) is firing"
                   + (f" for {kind.subject} {{{{ $labels.subject }}}}" if kind.subject else "")
                   + ": sustained over the policy's checks; /mlmon/drift and /mlmon/performance show the evidence.")
    return _alert(kind.rule, expr, "0m", None, f"{MODEL}: {summary}", description, c)


def _fleet_alerts(c: RuleConfig) -> list[dict[str, Any]]:
    drifted = "mlmon:feature_drifted:fleet"
    critical = f"({drifted} and on ({BY}, feature) mlmon:feature_psi:fleet >= {c.psi_critical})"
    severe = f'label_replace({critical}, "severity", "critical", "", "")'
    moderate = f'label_replace({drifted} unless on ({BY}, feature) {critical}, "severity", "warning", "", "")'
    share = f"count by ({BY}) ({drifted}) / count by ({BY}) (mlmon:feature_rows:fleet)"
    return [
        _alert("MLModelFleetFeatureDrift", f"({severe} or {moderate}) and on ({BY}) ({REPLICAS} > 1)", c.drift_for, None,
               f"{MODEL}: feature {{{{ $labels.feature }}}} drifted across the fleet",
               "The fleet's rows of {{ $labels.feature }} differ from the baseline (chi² above its critical value, "
               "effect (w of the bin shares) past the policy's floor; critical from its PSI level); "
               "mlmon:feature_drift_alert:replica shows each replica's own verdict.", c),
        _alert("MLModelFleetDatasetDrift", f"({share} >= {c.drift_share}) and on ({BY}) ({REPLICAS} > 1)", c.drift_for,
               "critical", f"{MODEL}: most features drifted across the fleet",
               "{{ $value | humanizePercentage }} of the features drifted in the fleet's traffic.", c),
    ]


def alerts(c: RuleConfig) -> list[dict[str, Any]]:
    volume_now = f"sum by ({BY}) (rate(mlmon_predictions_total[1h]))"
    volume_before = f"sum by ({BY}) (rate(mlmon_predictions_total[1h] offset 1d))"
    return [
        *(_policy_alert(kind, c) for kind in KINDS),
        *_fleet_alerts(c),
        _alert("MLModelPerformanceLow",
               f'min by ({BY}, window) (mlmon_performance{{metric="{c.performance_metric}",segment="__all__"}}) '
               f"< {c.performance_min}", "10m", "warning",
               f"{MODEL}: {c.performance_metric} below {c.performance_min}",
               f"{c.performance_metric} is {{{{ $value | printf \"%.3f\" }}}} over window {{{{ $labels.window }}}}.", c),
        _alert("MLModelLatencyHigh",
               f"histogram_quantile(0.95, sum by ({BY}, le) (rate(mlmon_inference_duration_seconds_bucket[5m]))) "
               f"> {c.latency_p95_seconds}", "10m", "warning", f"{MODEL}: p95 inference latency high",
               "p95 latency is {{ $value | humanizeDuration }} (threshold %ss)." % c.latency_p95_seconds, c),
        _alert("MLModelPredictionVolumeAnomaly",
               f"({volume_now} < {1 - c.volume_change} * {volume_before}) or "
               f"({volume_now} > {1 + c.volume_change} * {volume_before})", "30m", "warning",
               f"{MODEL}: prediction volume unlike the same hour yesterday",
               "Predictions per second: {{ $value | printf \"%.2f\" }}.", c),
        _alert("MLModelMissingValues", f"max by ({BY}, feature) (mlmon_feature_missing_ratio) > {c.missing_ratio}",
               "15m", "warning", f"{MODEL}: feature {{{{ $labels.feature }}}} often missing",
               "{{ $value | humanizePercentage }} of the window lacks {{ $labels.feature }}.", c),
        _alert("MLModelOutOfRange", f"max by ({BY}, feature) (mlmon_feature_out_of_range_ratio) > {c.out_of_range_ratio}",
               "15m", "warning", f"{MODEL}: feature {{{{ $labels.feature }}}} outside its training range",
               "{{ $value | humanizePercentage }} of {{ $labels.feature }} is outside the baseline's range.", c),
        _alert("MLModelNewCategories", f"max by ({BY}, feature) (mlmon_feature_new_category_ratio) > {c.new_category_ratio}",
               "15m", "warning", f"{MODEL}: unseen categories in {{{{ $labels.feature }}}}",
               "{{ $value | humanizePercentage }} of {{ $labels.feature }} are categories never seen in training.", c),
        _alert("MLModelLabelCoverageLow",
               f'min by ({BY}) (mlmon_label_coverage{{window="24h"}}) < {c.label_coverage_min}', "1h", "warning",
               f"{MODEL}: few predictions get ground truth",
               "Only {{ $value | humanizePercentage }} of the last day's predictions have a label.", c),
        _alert("MLMonitorStale", f"time() - max by ({BY}) (mlmon_analysis_last_run_seconds) > {c.stale_seconds}",
               "5m", "critical", f"{MODEL}: the monitor stopped checking",
               "The last drift check ran {{ $value | humanizeDuration }} ago.", c),
        _alert("MLMonitorErrors", "sum by (job, instance, stage) (increase(mlmon_monitor_errors_total[10m])) > 0", "5m",
               "warning", "mlmon on {{ $labels.instance }}: monitoring failures ({{ $labels.stage }})",
               "{{ $value | printf \"%.0f\" }} failures at stage {{ $labels.stage }} in 10 minutes "
               "(queue_full and store_queue_full: captures or log rows dropped); serving went on.", c),
        _alert("MLMonitorCoverageLow", f"min by ({BY}) (mlmon_feature_coverage) < {c.coverage_min}", "1h", "warning",
               f"{MODEL}: inputs carry fields the monitor does not watch",
               "mlmon monitors {{ $value | humanizePercentage }} of the fields the model receives; "
               "/mlmon/health names the others.", c),
    ]


def recording(c: RuleConfig) -> list[dict[str, Any]]:
    """The fleet's view of each feature, from every replica's bin counters summed."""
    rows = "mlmon_feature_bin_total" if c.fleet_window == "all" else f"increase(mlmon_feature_bin_total[{c.fleet_window}])"
    reference = f"max by ({BY}, feature, bin) (mlmon_baseline_bin_ratio)"
    share = "mlmon:feature_bin_share:fleet"
    rows_ref, rows_now = "mlmon:feature_baseline_rows", "mlmon:feature_rows:fleet"
    on = f"on ({BY}, feature) group_left ()"  # "()": the label list, so an expression in parentheses may follow
    pooled = f"(({reference} * {on} {rows_ref} + {share} * {on} {rows_now}) / {on} ({rows_ref} + {rows_now}))"
    floor = "0.0001"  # PSI's share floor, as in-process
    return [
        {"record": "mlmon:feature_bin_rows:fleet", "expr": f"sum by ({BY}, feature, bin) ({rows})"},
        {"record": "mlmon:feature_rows:fleet", "expr": f"sum by ({BY}, feature) (mlmon:feature_bin_rows:fleet)"},
        {"record": share, "expr": "mlmon:feature_bin_rows:fleet / ignoring (bin) group_left mlmon:feature_rows:fleet"},
        {"record": "mlmon:feature_psi:fleet",
         "expr": f"sum by ({BY}, feature) ((clamp_min({share}, {floor}) - clamp_min({reference}, {floor})) "
                 f"* ln(clamp_min({share}, {floor}) / clamp_min({reference}, {floor})))"},
        {"record": rows_ref, "expr": f"max by ({BY}, feature) (mlmon_baseline_rows)"},
        # chi² of homogeneity of the baseline's R rows and the fleet's N rows over the bins:
        # R N / (R + N) · Σ (q − p)² / s, s the pooled share; the baseline is a sample too
        {"record": "mlmon:feature_chi2:fleet",
         "expr": f"sum by ({BY}, feature) (({share} - {reference}) ^ 2 / clamp_min({pooled}, 1e-12)) "
                 f"* on ({BY}, feature) ({rows_ref} * {rows_now} / ({rows_ref} + {rows_now}))"},
        {"record": "mlmon:feature_effect:fleet",
         "expr": f"sqrt(sum by ({BY}, feature) (({share} - {reference}) ^ 2 / clamp_min(({share} + {reference}) / 2, 1e-12)))"},
        {"record": "mlmon:feature_drifted:fleet",
         "expr": f"mlmon:feature_chi2:fleet > on ({BY}, feature) max by ({BY}, feature) (mlmon_feature_drift_critical) "
                 f"and on ({BY}, feature) mlmon:feature_effect:fleet >= {c.effect} "
                 f"and on ({BY}, feature) mlmon:feature_rows:fleet >= {c.fleet_min_rows}"},
        {"record": "mlmon:feature_drift_alert:replica",
         "expr": f'max by ({BY}, instance, subject, severity) (mlmon_alert_active{{alertname="FeatureDrift"}})'},
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
