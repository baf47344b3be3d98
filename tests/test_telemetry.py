"""Our pre-aggregated histograms agree with the OpenTelemetry SDK's own aggregation, and their
Prometheus families with what the OpenTelemetry Prometheus exporter makes of the same data."""

import numpy as np
import pytest
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest

from mlmon_middleware.histograms import MAX_SERIES, Exemplar, HistogramCollector, PreaggregatedHistogram
from mlmon_middleware.instruments import INSTRUMENTS


@pytest.mark.parametrize("name", ["mlmon.inference.duration", "mlmon.prediction.value"])
def test_same_points_as_the_sdk_on_random_data(name):
    spec = INSTRUMENTS[name]
    rng = np.random.default_rng(42)
    values = np.concatenate([rng.exponential(0.3, 5000), rng.uniform(0, 12, 500),
                             np.array(spec.buckets), rng.choice(spec.buckets, 200)])  # exact bounds too
    attrs = [{"route": "/a"}, {"route": "/b", "status": 200}]
    reader = InMemoryMetricReader()
    sdk = MeterProvider(metric_readers=[reader]).get_meter("t").create_histogram(
        name, unit=spec.unit, explicit_bucket_boundaries_advisory=list(spec.buckets))
    ours = PreaggregatedHistogram(spec, start_ns=0)
    for chunk in np.array_split(values, 37):  # ours gets arrays, the SDK value by value
        for i, a in enumerate(attrs):
            part = chunk[i::2]
            ours.observe(part, a)
            for v in part.tolist():
                sdk.record(v, a)
    expected = {tuple(sorted(p.attributes.items())): p
                for rm in reader.get_metrics_data().resource_metrics for sm in rm.scope_metrics
                for m in sm.metrics for p in m.data.data_points}
    got = {tuple(sorted(p.attributes.items())): p for p in ours.points()}
    assert set(got) == set(expected)
    for key, p in expected.items():
        q = got[key]
        assert list(q.bucket_counts) == list(p.bucket_counts)
        assert list(ours.spec.buckets) == list(p.explicit_bounds)
        assert (q.count, q.min, q.max) == (p.count, p.min, p.max)
        assert q.sum == pytest.approx(p.sum, rel=1e-12, abs=1e-9)


def test_nan_and_inf_are_skipped_negatives_kept():
    h = PreaggregatedHistogram(INSTRUMENTS["mlmon.prediction.value"], start_ns=0)
    h.observe(np.array([np.nan, np.inf, -np.inf, -2.5, 0.5]), {})
    [p] = h.points()
    assert (p.count, p.sum, p.min, p.bucket_counts[0]) == (2, -2.0, -2.5, 1)


def test_no_point_before_the_first_value_and_bounded_series():
    h = PreaggregatedHistogram(INSTRUMENTS["mlmon.inference.duration"], start_ns=0)
    assert h.points() == [] and h.family() is None
    h.observe(np.array([np.nan]), {"a": 1})
    assert h.points() == []
    for i in range(MAX_SERIES + 50):
        h.observe(np.array([0.01]), {"route": f"/r{i}"})
    points = h.points()
    assert len(points) == MAX_SERIES + 1
    [overflow] = [p for p in points if p.attributes.get("otel.metric.overflow")]
    assert overflow.count == 50 and sum(p.count for p in points) == MAX_SERIES + 50


@pytest.mark.parametrize("name", ["mlmon.inference.duration", "mlmon.prediction.value"])
def test_our_prometheus_family_is_what_the_otel_exporter_made_of_the_same_data(name):
    spec = INSTRUMENTS[name]
    values = np.random.default_rng(7).exponential(0.4, 400)
    attrs = [{"mlmon.model.name": "m", "http.route": "/a", "http.response.status_code": 200},
             {"mlmon.model.name": "m", "output": "p", "error.type": "ValueError", "flag": True}]
    theirs = CollectorRegistry()
    provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=theirs, scope_info_enabled=False)])
    sdk = provider.get_meter("t").create_histogram(name, unit=spec.unit, description=spec.description,
                                                   explicit_bucket_boundaries_advisory=list(spec.buckets))
    ours = PreaggregatedHistogram(spec, start_ns=0)
    registry = CollectorRegistry()
    registry.register(HistogramCollector([ours]))
    for i, a in enumerate(attrs):
        ours.observe(values[i::2], a)
        for v in values[i::2].tolist():
            sdk.record(v, a)

    def lines(r):  # the sums apart: numpy adds in another order (their last digits differ)
        found = [line for line in generate_latest(r).decode().splitlines() if spec.prometheus in line]
        sums = {line.rpartition(" ")[0]: float(line.rpartition(" ")[2]) for line in found if "_sum{" in line}
        return sorted(line for line in found if "_sum{" not in line), sums

    (ours_lines, ours_sums), (their_lines, their_sums) = lines(registry), lines(theirs)
    assert ours_lines == their_lines and len(ours_lines) > 2 * len(spec.buckets)
    assert ours_sums == pytest.approx(their_sums, rel=1e-12) and len(ours_sums) == 2


def test_each_bucket_keeps_its_last_exemplar():
    h = PreaggregatedHistogram(INSTRUMENTS["mlmon.inference.duration"], start_ns=0)
    h.observe(np.array([0.001, 0.2]), {}, Exemplar(0.001, 1, trace_id=1, span_id=1))
    h.observe(np.array([0.2]), {}, Exemplar(0.2, 2, trace_id=2, span_id=2))
    h.observe(np.array([0.003]), {}, Exemplar(0.003, 3, trace_id=3, span_id=3))
    h.observe(np.array([0.3]), {}, Exemplar(float("nan"), 4, trace_id=4, span_id=4))  # not a value: ignored
    [p] = h.points()
    assert {i: e.trace_id for i, e in enumerate(p.exemplars) if e is not None} == {0: 3, 6: 2}
