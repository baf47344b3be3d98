"""mlmon's histograms, aggregated a whole flush at a time, with their exemplars and Prometheus families.

The pipeline records histogram values in bulk: a flush's latencies of one route, or its
predictions of one output, as one numpy array. The OpenTelemetry SDK records value by value
(``Histogram.record``: attribute cleaning, hashing, a lock and an exemplar offer per value, 6 to
20 µs each), which at two values per request was the largest cost of monitoring. So
:class:`PreaggregatedHistogram` aggregates the array with one ``searchsorted`` and one
``bincount``, and its data leaves through public interfaces only:

* Prometheus: :class:`HistogramCollector`, a ``prometheus_client`` collector registered on
  mlmon's private registry, gives the same families the OpenTelemetry Prometheus exporter would
  (names, units, labels, ``le`` bounds), plus exemplars, which that exporter drops and the
  OpenMetrics format shows.
* OTLP and the OpenTelemetry side: :meth:`PreaggregatedHistogram.points` gives plain data points
  that :mod:`~mlmon_middleware.telemetry` turns into the SDK's ``Metric``.

Exemplars: ``observe`` takes at most one :class:`Exemplar` per call (the pipeline passes the last
traced record of the batch for the series); each bucket keeps the last exemplar that fell in it,
as the SDK's ``AlignedHistogramBucketExemplarReservoir`` does. No OpenTelemetry import here.

>>> from mlmon_middleware.instruments import INSTRUMENTS
>>> h = PreaggregatedHistogram(INSTRUMENTS["mlmon.inference.duration"], start_ns=0)
>>> h.observe(np.array([0.003, 0.02, 0.02, 20.0]), {"http.route": "/p"},
...           Exemplar(0.02, 1_700_000_000_000_000_000, trace_id=0xABC, span_id=0xD))
>>> [p] = h.points()
>>> p.count, round(p.sum, 3), p.bucket_counts[:3], p.bucket_counts[-1], p.max
(4, 20.043, [1, 0, 2], 1, 20.0)
>>> [(i, e.value) for i, e in enumerate(p.exemplars) if e is not None]
[(2, 0.02)]
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import math
import re
import threading
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple, Protocol

import numpy as np
from prometheus_client.metrics_core import HistogramMetricFamily
from prometheus_client.samples import Exemplar as PrometheusExemplar

from mlmon_middleware.instruments import InstrumentSpec

MAX_SERIES = 2000  # attribute sets per histogram, as the SDK's default cardinality limit
OVERFLOW = (("otel.metric.overflow", True),)


class Exemplar(NamedTuple):
    """One observed value and the sampled span it came from (ids as the SDK's integers)."""

    value: float
    time_ns: int
    trace_id: int
    span_id: int


class HistogramSink(Protocol):
    """Where the pipeline puts a flush's worth of values for one attribute set."""

    def observe(self, values: np.ndarray, attributes: Mapping[str, Any], exemplar: Exemplar | None = None) -> None: ...


@dataclasses.dataclass(frozen=True)
class Point:
    """One series of a histogram, cumulative: ``bucket_counts[i]`` holds the values in
    ``(bounds[i-1], bounds[i]]``; ``exemplars`` has one entry (or None) per bucket, or is empty."""

    attributes: dict[str, Any]
    bucket_counts: list[int]
    count: int
    sum: float
    min: float
    max: float
    exemplars: list[Exemplar | None]


class PreaggregatedHistogram:
    """An explicit-bucket histogram aggregated by mlmon, cumulative since ``start_ns``.

    Same semantics as the SDK's explicit-bucket aggregation (bucket ``i`` holds values in
    ``(bounds[i-1], bounds[i]]``, plus count, sum, min and max), but a whole array of values
    is added at once. Unlike the SDK it keeps negative values (regression predictions); NaN
    and infinities are skipped. Past ``MAX_SERIES`` attribute sets, values go to one overflow
    series, as in the SDK.
    """

    def __init__(self, spec: InstrumentSpec, start_ns: int) -> None:
        self.spec = spec
        self.start_ns = start_ns
        self.bounds = np.asarray(spec.buckets, dtype=np.float64)
        self._bounds = list(spec.buckets or ())
        self._lock = threading.Lock()
        # attributes (sorted items) -> [bucket counts, count, sum, min, max, exemplars (None until the first)]
        self._series: dict[tuple[tuple[str, Any], ...], list[Any]] = {}

    def observe(self, values: np.ndarray, attributes: Mapping[str, Any], exemplar: Exemplar | None = None) -> None:
        values = np.asarray(values, dtype=np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            return
        key = tuple(sorted(attributes.items()))
        counts = np.bincount(np.searchsorted(self.bounds, values, side="left"), minlength=len(self.bounds) + 1)
        total, low, high = float(values.sum()), float(values.min()), float(values.max())
        with self._lock:
            series = self._series.get(key)
            if series is None:
                if len(self._series) >= MAX_SERIES:
                    key = OVERFLOW
                    series = self._series.get(key)
                if series is None:
                    series = self._series[key] = [np.zeros(len(self.bounds) + 1, dtype=np.int64), 0, 0.0,
                                                  np.inf, -np.inf, None]
            series[0] += counts
            series[1] += values.size
            series[2] += total
            series[3] = min(series[3], low)
            series[4] = max(series[4], high)
            if exemplar is not None and math.isfinite(exemplar.value):
                if series[5] is None:
                    series[5] = [None] * (len(self._bounds) + 1)
                series[5][bisect.bisect_left(self._bounds, exemplar.value)] = exemplar

    def points(self) -> list[Point]:
        """Every series so far (none before the first value)."""
        with self._lock:
            return [Point(dict(key), buckets.tolist(), count, total, low, high, list(exemplars or ()))
                    for key, (buckets, count, total, low, high, exemplars) in self._series.items()]

    def family(self) -> HistogramMetricFamily | None:
        """The Prometheus family, as the OpenTelemetry Prometheus exporter names and labels it
        (attribute keys with ``_`` for what Prometheus does not allow, values as text or JSON,
        labels a series lacks set to ``""``), with the exemplars; None before the first value."""
        points = self.points()
        if not points:
            return None
        keys = sorted({label_name(k) for p in points for k in p.attributes})
        base = self.spec.name.replace(".", "_")
        family = HistogramMetricFamily(base, self.spec.description, labels=keys, unit=self.spec.prometheus[len(base) + 1:])
        bounds = [*(f"{b}" for b in self._bounds), "+Inf"]
        for p in points:
            labels = {label_name(k): label_value(v) for k, v in p.attributes.items()}
            buckets: list[Any] = []
            for i, cumulative in enumerate(np.cumsum(p.bucket_counts).tolist()):
                found = p.exemplars[i] if p.exemplars else None
                buckets.append((bounds[i], cumulative) if found is None else (bounds[i], cumulative, _prometheus(found)))
            family.add_metric([labels.get(k, "") for k in keys], buckets, p.sum)
        return family


class HistogramCollector:
    """A ``prometheus_client`` collector of mlmon's pre-aggregated histograms (its private registry's)."""

    def __init__(self, histograms: list[PreaggregatedHistogram]) -> None:
        self.histograms = histograms

    def describe(self) -> list[Any]:
        return []  # registering must not collect

    def collect(self) -> Iterator[HistogramMetricFamily]:
        for histogram in self.histograms:
            family = histogram.family()
            if family is not None:
                yield family


def label_name(key: str) -> str:
    """A Prometheus label name for an attribute key, as the OpenTelemetry exporter makes it.

    >>> label_name("http.response.status_code"), label_name("9lives")
    ('http_response_status_code', '_lives')
    """
    return re.sub(r"[^a-zA-Z0-9_]", "_", f"_{key[1:]}" if key[:1].isdigit() else key)


def label_value(value: Any) -> str:
    """Label text: strings as they are, anything else as JSON (``200``, ``true``), as the exporter does."""
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _prometheus(exemplar: Exemplar) -> PrometheusExemplar:
    """The OpenMetrics exemplar: W3C-style hex ids, seconds since the epoch."""
    return PrometheusExemplar({"trace_id": f"{exemplar.trace_id:032x}", "span_id": f"{exemplar.span_id:016x}"},
                              exemplar.value, exemplar.time_ns / 1e9)
