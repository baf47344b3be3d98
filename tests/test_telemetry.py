"""Our pre-aggregated histograms agree with the OpenTelemetry SDK's own aggregation."""

import numpy as np
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from mlmon_middleware.instruments import INSTRUMENTS
from mlmon_middleware.telemetry import MAX_SERIES, PreaggregatedHistogram


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
    got = {tuple(sorted(p.attributes.items())): p for p in ours.metric(now_ns=1).data.data_points}
    assert set(got) == set(expected)
    for key, p in expected.items():
        q = got[key]
        assert list(q.bucket_counts) == list(p.bucket_counts)
        assert list(q.explicit_bounds) == list(p.explicit_bounds)
        assert (q.count, q.min, q.max) == (p.count, p.min, p.max)
        assert q.sum == pytest.approx(p.sum, rel=1e-12, abs=1e-9)


def test_nan_and_inf_are_skipped_negatives_kept():
    h = PreaggregatedHistogram(INSTRUMENTS["mlmon.prediction.value"], start_ns=0)
    h.observe(np.array([np.nan, np.inf, -np.inf, -2.5, 0.5]), {})
    [p] = h.metric(1).data.data_points
    assert (p.count, p.sum, p.min, p.bucket_counts[0]) == (2, -2.0, -2.5, 1)
    assert h.metric(1).data.aggregation_temporality.name == "CUMULATIVE"


def test_no_point_before_the_first_value_and_bounded_series():
    h = PreaggregatedHistogram(INSTRUMENTS["mlmon.inference.duration"], start_ns=0)
    assert h.metric(1) is None
    h.observe(np.array([np.nan]), {"a": 1})
    assert h.metric(1) is None
    for i in range(MAX_SERIES + 50):
        h.observe(np.array([0.01]), {"route": f"/r{i}"})
    points = h.metric(1).data.data_points
    assert len(points) == MAX_SERIES + 1
    [overflow] = [p for p in points if p.attributes.get("otel.metric.overflow")]
    assert overflow.count == 50 and sum(p.count for p in points) == MAX_SERIES + 50
