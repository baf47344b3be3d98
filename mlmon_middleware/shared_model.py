"""What a model shares with the other workers of its server, and what it takes from the leader.

The functions :class:`~mlmon_middleware.host.HostShare` calls on a
:class:`~mlmon_middleware.model.Model`: its counts (:func:`counts_of`), its windows
(:func:`windows_of`, explained predictions included), its last check as the leader publishes it
(:func:`result_of`), and the adoption of the leader's check by a worker that does not lead
(:func:`adopt`): reports, performance, attributions, alert states and a warm-up baseline (named
in the result, published once beside it: :func:`warmup_mark`), so
that every worker answers alike and a worker taking over the lead continues the same alerts
against the same reference.

>>> from mlmon_middleware import Monitor, MonitorConfig
>>> mon = Monitor(MonitorConfig(tracing=False, check_interval=0))
>>> m = mon.model("toy")
>>> _ = m.record({"x": 1.0}, {"prediction": 1}); mon.flush()
>>> counts_of(m)["predictions"], counts_of(m)["rows"]
({'ok': 1, 'error': 0}, 1)
>>> _ = m.check_now()
>>> follower = Monitor(MonitorConfig(tracing=False, check_interval=0)).model("toy")
>>> adopt(follower, result_of(m)); follower.drift_report()["rows"]
1
>>> mon.shutdown()
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol

import numpy as np
import orjson

from mlmon_middleware.analyzer import Attributions, CheckInputs, Counts, DriftChecker
from mlmon_middleware.baseline import Baseline
from mlmon_middleware.counters import Counters
from mlmon_middleware.explain import ExplanationService
from mlmon_middleware.reports import MergedWorkers, ModelHealth, PerformanceReport
from mlmon_middleware.reservoir import SlidingWindow, WindowSnapshot
from mlmon_middleware.schema import FeatureSchema
from mlmon_middleware.store import PredictionStore


class Model(Protocol):
    """What these functions read of a model (a :class:`~mlmon_middleware.model.Model`)."""

    name: str
    version: str
    schema: FeatureSchema | None
    output_schema: FeatureSchema | None
    baseline: Baseline | None
    counters: Counters
    window: SlidingWindow | None
    attributions: collections.deque[tuple[float, np.ndarray]]
    explainer: ExplanationService | None
    checker: DriftChecker

    def window_snapshot(self, since: float | None = None) -> dict[str, WindowSnapshot]: ...

    def set_baseline(self, baseline: Baseline) -> Baseline: ...


class MergedInputs(NamedTuple):
    """A check's inputs over every worker: windows, counts, explained predictions, schemas, and
    how many workers were merged, of which how many answered with an older window."""

    features: WindowSnapshot
    outputs: WindowSnapshot
    counts: Counts
    attributions: WindowSnapshot
    schema: FeatureSchema | None
    output_schema: FeatureSchema | None
    workers: int
    stale: int


class Share(Protocol):
    """What a check needs of the workers' share (:class:`~mlmon_middleware.host.HostShare`)."""

    def check_inputs(self, model: Model, since: float | None) -> MergedInputs: ...


def check_inputs(m: Model, host: Share | None, now: float, since: float | None,
                 labels: PredictionStore | None, scheduled: bool, unapproved: str = "") -> CheckInputs:
    """The inputs of a check of ``m``: its own windows and counts, or with workers sharing
    (``host``), every worker's (a schema only another worker has seen yet is taken);
    ``unapproved``: the serving gate's reason when the registry does not approve its version."""
    workers: MergedWorkers | None = None
    if host is None:
        window = m.window_snapshot(since)
        features, outputs, counts = window["features"], window["outputs"], m.counters.counts()
        samples = list(attributions_of(m, since).get("values", ()))
    else:
        merged = host.check_inputs(m, since)
        m.schema, m.output_schema = m.schema or merged.schema, m.output_schema or merged.output_schema
        features, outputs, counts = merged.features, merged.outputs, merged.counts
        samples = list(merged.attributions.get("values", ()))
        workers = {"merged": merged.workers, "stale": merged.stale}
    attributions = None
    if m.explainer is not None:
        attributions = Attributions(m.explainer.names, samples, m.explainer.baseline_attributions)
    return CheckInputs(m.name, m.version, now, features, outputs, m.schema, m.output_schema, m.baseline, counts,
                       labels, attributions, scheduled, fleet_performance(m, labels, scheduled), workers, unapproved)


#: the role whose holder, among every process sharing one prediction log, runs the label-based checks
LABEL_CHECKS = "mlmon:label-checks"


def fleet_performance(m: Model, labels: PredictionStore | None, scheduled: bool) -> PerformanceReport | None:
    """The performance report to take rather than compute: the one the leader of the label-based
    checks last stored, when another process leads them (replicas sharing a PostgreSQL log).
    None when this process leads (or has no log): it computes them. Only a scheduled check
    (the host's leader's) may take the lead; an on-demand one only asks whether it holds it."""
    if labels is None or not labels.shared_by_replicas:
        return None
    if labels.try_lead(LABEL_CHECKS) if scheduled else labels.leads(LABEL_CHECKS):
        return None
    found = labels.get_result(m.name, "performance")
    if found is None:
        return {"status": "another replica checks performance on the shared log; no result yet"}
    report: PerformanceReport = orjson.loads(found[1])
    return report


def store_performance(m: Model, labels: PredictionStore | None) -> None:
    """The leader of the label-based checks: store ``m``'s performance report for the other
    replicas (only in a log replicas share: nobody else would read it)."""
    report = m.checker.performance.report
    if labels is not None and labels.shared_by_replicas and report is not None and labels.leads(LABEL_CHECKS):
        labels.put_result(m.name, "performance", orjson.dumps(report, option=orjson.OPT_SERIALIZE_NUMPY).decode())


def counts_of(m: Model) -> dict[str, Any]:
    """This worker's counts of ``m``: predictions, capture errors, per-feature errors, labels, window rows."""
    counts = m.counters.counts()
    return {"predictions": dict(counts.predictions), "capture_errors": dict(counts.capture_errors),
            "feature_errors": {f: dict(c) for f, c in counts.feature_errors.items()}, "labels": m.counters.labels(),
            "rows": 0 if m.window is None else len(m.window)}


def attributions_of(m: Model, since: float | None) -> WindowSnapshot:
    """The |contributions| of ``m``'s explained predictions (at or after ``since``) as a window."""
    samples = [(t, a) for t, a in list(m.attributions) if since is None or t >= since]
    if not samples:
        return {}
    return {"time": np.array([t for t, _ in samples]), "values": np.vstack([a for _, a in samples])}


def windows_of(m: Model) -> dict[str, Any]:
    """``m``'s windows, schemas and explained predictions, as another worker's check reads them."""
    window = m.window_snapshot()
    return {"features": window["features"], "outputs": window["outputs"],
            "schema": None if m.schema is None else m.schema.to_dict(),
            "output_schema": None if m.output_schema is None else m.output_schema.to_dict(),
            "attributions": attributions_of(m, None)}


def result_of(m: Model) -> dict[str, Any] | None:
    """``m``'s last check, as the leader publishes it (None before any)."""
    checker = m.checker
    if checker.report is None:
        return None
    return {"report": checker.report, "performance": checker.performance.report, "attributions": checker.attributions,
            "alerts": checker.alerts.summary(), "last_run": checker.last_run, "duration": checker.duration,
            "warmup_baseline": warmup_mark(m)}


def warmup_mark(m: Model) -> str | None:
    """What names ``m``'s warm-up baseline in its results (None without one): the baseline itself
    is published once beside them (``HostShare.publish_results``), not with every result."""
    baseline = m.baseline
    return f"{baseline.created_at} {baseline.schema_hash} {baseline.row_count}" if baseline is not None and baseline.warmup \
        else None


def adopt(m: Model, result: Mapping[str, Any], warmup: Callable[[], Mapping[str, Any] | None] = lambda: None) -> None:
    """Take the leader's check of ``m`` as this worker's own (a worker that does not lead);
    ``warmup`` reads the leader's warm-up baseline when the result names one and ``m`` has none."""
    checker = m.checker
    checker.report = result["report"]
    checker.performance.report = result.get("performance")
    checker.attributions = result.get("attributions")
    checker.last_run, checker.duration = result.get("last_run", 0.0), result.get("duration", 0.0)
    checker.alerts.adopt(result.get("alerts") or {})
    if result.get("warmup_baseline") and m.baseline is None:  # a later leader goes on from the same reference
        payload = warmup()
        if payload is not None:
            m.set_baseline(Baseline(payload))


def with_counts_of(health: ModelHealth, counts: Mapping[str, Any], capacity: int) -> None:
    """Put the counts of every worker (:func:`~mlmon_middleware.merge.merged_counts`) into a
    model's ``health``: predictions, capture errors, labels, and the rows of the merged window."""
    health["predictions"] = {"ok": 0, "error": 0, **counts.get("predictions", {})}
    health["capture_errors"] = dict(counts.get("capture_errors", {}))
    health["labels"] = dict(counts.get("labels", {}))
    health["rows_in_window"] = min(capacity, counts.get("rows", 0))
