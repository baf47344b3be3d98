"""How the counters of several workers add up to the counters of their server.

A worker's metric families are stored as plain lists (:func:`families`), and merged back into
Prometheus families by one rule per kind (:func:`merged_families`):

* counters and histograms are summed over every worker, running or exited (exited workers
  are folded into one record by :func:`fold_counters`), so a total never goes down when a
  worker restarts; with ``per_worker`` they are kept apart under a ``worker`` label instead
  (``worker="exited"`` for the folded ones);
* gauges are the leader's (it runs the checks that set them), except the few that measure
  each worker's own share (:data:`SUMMED_GAUGES`), which are summed over running workers;
* info families (``target_info``, one per process) are listed for every running worker.

Model counts (predictions, capture errors, labels) are summed the same way (:func:`merged_counts`).

>>> a = [["c", "", "counter", "", [["c_total", {"m": "x"}, 2.0]]], ["g", "", "gauge", "", [["g", {}, 5.0]]]]
>>> b = [["c", "", "counter", "", [["c_total", {"m": "x"}, 3.0]]], ["g", "", "gauge", "", [["g", {}, 7.0]]]]
>>> exited = fold_counters({}, {"metrics": a})
>>> out = merged_families({"b": {"metrics": b}}, exited, leader="b", per_worker=False)
>>> [(s.name, s.value) for f in out for s in f.samples]
[('c_total', 5.0), ('g', 7.0)]
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

EXITED = "exited"  # the worker key of the exited workers' folded counts
SUMMED = ("counter", "histogram", "summary")
#: gauges that count each worker's own rows: summed over the running workers
SUMMED_GAUGES = frozenset({"mlmon_reservoir_size"})
COUNTS = ("predictions", "capture_errors", "labels")

Family = list[Any]  # [name, documentation, type, unit, [[sample name, labels, value], ...]]


class MergedCollector:
    """A Prometheus collector answering with ``collect()``: the server's merged families, for
    the registry a scrape reads when workers share."""

    def __init__(self, collect: Callable[[], list[Metric]]) -> None:
        self.collect = collect

    def describe(self) -> list[Metric]:
        return []


def families(registry: CollectorRegistry) -> list[Family]:
    """The families a registry collects, as plain lists (JSON-ready: a value that is not finite,
    such as a forecast's +Inf, as its text ``"inf"``, which JSON has no number for).

    >>> from prometheus_client.core import GaugeMetricFamily
    >>> class One:
    ...     def collect(self):
    ...         yield GaugeMetricFamily("x_seconds", "x", value=float("inf"))
    >>> registry = CollectorRegistry()
    >>> registry.register(One())
    >>> families(registry)[0][4]  # float() reads it back
    [['x_seconds', {}, 'inf']]
    """
    return [[m.name, m.documentation, m.type, m.unit,
             [[s.name, s.labels, s.value if math.isfinite(s.value) else repr(float(s.value))] for s in m.samples]]
            for m in registry.collect()]


def fold_counters(exited: Mapping[str, Any], state: Mapping[str, Any]) -> dict[str, Any]:
    """``exited`` with the counters and model counts of an exited worker's ``state`` added."""
    totals: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    meta: dict[str, list[Any]] = {}
    for record in (exited, state):
        for name, doc, kind, unit, samples in record.get("metrics", ()):
            if kind not in SUMMED:
                continue
            meta.setdefault(name, [doc, kind, unit])
            series = totals.setdefault(name, collections.defaultdict(float))
            for sample, labels, value in samples:
                if not sample.endswith("_created"):
                    series[(sample, tuple(sorted(labels.items())))] += float(value)
    metrics = [[name, *meta[name], [[s, dict(labels), v] for (s, labels), v in series.items()]]
               for name, series in totals.items()]
    models: dict[str, dict[str, Any]] = {}
    for record in (exited, state):
        for model, counts in record.get("models", {}).items():
            _add_counts(models.setdefault(model, {}), counts)
    return {"metrics": metrics, "models": models}


def merged_families(live: Mapping[str, Mapping[str, Any]], exited: Mapping[str, Any], *, leader: str | None,
                    per_worker: bool) -> list[Metric]:
    """The families of the server: ``live`` states by worker key (this worker's own freshly
    collected among them), the folded ``exited`` counts, and the ``leader``'s key (its gauges
    win; when it has no state yet, any running worker's do)."""
    out: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    gauge_source = leader if leader in live else next(iter(live), None)
    for key, state in [(EXITED, exited), *live.items()]:
        worker = EXITED if key == EXITED else key.partition("-")[0]
        for name, doc, kind, unit, samples in state.get("metrics", ()):
            summed = kind in SUMMED
            if not summed and (key == EXITED or (key != gauge_source and name not in SUMMED_GAUGES and kind != "info")):
                continue
            if name not in out:
                out[name] = Metric(name, doc, kind, unit)
                values[name] = {}
            series = values[name]
            for sample, labels, written in samples:
                if sample.endswith("_created"):
                    continue
                value = float(written)  # as families() wrote it: a number, or the text of a non-finite one
                if summed and per_worker:
                    labels = {**labels, "worker": worker}
                ident = (sample, tuple(sorted(labels.items())))
                series[ident] = series.get(ident, 0.0) + value if summed or name in SUMMED_GAUGES else value
    for name, metric in out.items():
        for (sample, labels), value in values[name].items():
            metric.add_sample(sample, dict(labels), value)
    return [m for m in out.values() if m.samples]


def merged_counts(live: Mapping[str, Mapping[str, Any]], exited: Mapping[str, Any], model: str) -> dict[str, Any]:
    """A model's counts over every worker: ``predictions``, ``capture_errors``, ``labels``
    (each reason -> count), ``feature_errors`` (feature -> reason -> count) and ``rows`` (the
    running workers' window rows)."""
    total: dict[str, Any] = {}
    for state in [exited, *live.values()]:
        counts = state.get("models", {}).get(model)
        if counts:
            _add_counts(total, counts)
    total["rows"] = sum(s.get("models", {}).get(model, {}).get("rows", 0) for s in live.values())
    return total


def _add_counts(total: dict[str, Any], counts: Mapping[str, Any]) -> None:
    for kind in COUNTS:
        into = total.setdefault(kind, {})
        for reason, n in counts.get(kind, {}).items():
            into[reason] = into.get(reason, 0) + n
    features = total.setdefault("feature_errors", {})
    for feature, reasons in counts.get("feature_errors", {}).items():
        into = features.setdefault(feature, {})
        for reason, n in reasons.items():
            into[reason] = into.get(reason, 0) + n
