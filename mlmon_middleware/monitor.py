"""Monitor (the process-wide registry) and ModelMonitor (one model's state).

``ModelMonitor.record()`` is the one entry of the request path: it builds a
:class:`~mlmon_middleware.record.Record` of references and appends it to a bounded queue
(O(1), no I/O, no parsing, never raises). A background thread of the :class:`Monitor`
drains the queue every ``flush_interval`` and does the rest in one direction: turn payloads
into feature rows, count and time, push rows into the model's sliding window, create spans.

>>> from mlmon_middleware import Monitor, MonitorConfig
>>> mon = Monitor(MonitorConfig(tracing=False))
>>> fraud = mon.model("fraud", version="1.2.0")
>>> pid = fraud.record({"amount": 12.5, "country": "fr"}, {"prediction": 0.91}, latency=0.004)
>>> mon.flush()
>>> fraud.health()["predictions"], fraud.health()["rows_in_window"]
({'ok': 1, 'error': 0}, 1)
>>> mon.shutdown()
"""

from __future__ import annotations

import atexit
import collections
import dataclasses
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import orjson
from opentelemetry.context import get_current as get_current_context

from mlmon_middleware.analyzer import Analyzer, DriftChecker
from mlmon_middleware.baseline import Baseline
from mlmon_middleware.config import ConfigError, MonitorConfig
from mlmon_middleware.drift.policy import DriftPolicy
from mlmon_middleware.drift.stats import bin_counts
from mlmon_middleware.errors import ErrorLog
from mlmon_middleware.explain import Explain, ExplanationService, shown
from mlmon_middleware.performance import PerformanceTracker
from mlmon_middleware.record import Record, resolve_payload
from mlmon_middleware.reservoir import SlidingWindow
from mlmon_middleware.schema import KINDS, CaptureError, FeatureSchema, extract_predictions, extract_rows
from mlmon_middleware.store import PredictionStore, SQLiteStore, StoreError, StoreWriter
from mlmon_middleware.telemetry import ERROR_TYPE, HTTP_ROUTE, HTTP_STATUS, MODEL_NAME, MODEL_VERSION, PREDICTION_ID, Telemetry

_NS = 1e-9
MAX_UNMONITORED_FIELDS = 1000  # distinct unmonitored field names kept per model (inputs may carry anything)


class _PredictionIds:
    """Random 128-bit ids as 32 hex characters, from the OS's CSPRNG 256 ids at a time.

    One ``os.urandom`` per request measured as the largest cost of our request path under load
    (a syscall that also releases the GIL); one per 256 requests is not. The buffer is dropped
    in a forked child so that workers never hand out the same ids.
    """

    _BATCH = 16 * 256

    def __init__(self) -> None:
        self._forget()
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._buffer = b""
        self._next = 0

    def __call__(self) -> str:
        with self._lock:
            start = self._next
            if start >= len(self._buffer):
                self._buffer, start = os.urandom(self._BATCH), 0
            self._next = start + 16
            return self._buffer[start:start + 16].hex()


new_prediction_id = _PredictionIds()


def _declared_features(features: Any) -> tuple[tuple[str, ...] | None, dict[str, str]]:
    """Names and known kinds from the ``features=`` argument (kinds left out are inferred later)."""
    if features is None:
        return None, {}
    if isinstance(features, FeatureSchema):
        return features.names, features.to_dict()
    if isinstance(features, Mapping):
        bad = {n: k for n, k in features.items() if k not in KINDS}
        if bad:
            raise ConfigError(f"features: kinds must be in {KINDS}, got {bad}")
        return tuple(map(str, features)), dict(features)
    if isinstance(features, Sequence) and not isinstance(features, str) and features:
        return tuple(map(str, features)), {}
    raise ConfigError(f"features must be a non-empty list of names, a {{name: kind}} dict with kinds in "
                      f"{KINDS}, or a FeatureSchema; got {features!r}")


class ModelMonitor:
    """Monitoring state of one model: its schema, window and counts.

    Created by :meth:`Monitor.model`; use :meth:`record` to report an inference by hand.
    """

    def __init__(self, monitor: Monitor, name: str, version: str, *, features: Any = None,
                 baseline: Any = None, input: str | None = None, prediction_key: str | None = None,
                 class_names: Sequence[str] | None = None, explain: Any = None, drift_policy: DriftPolicy | None = None,
                 warmup_rows: int = 1000, on_alert: Callable[[dict[str, Any]], None] | None = None,
                 segments: Sequence[str] = (), log_features: str | Sequence[str] | None = "all",
                 redact: Sequence[str] = (), performance: Mapping[str, Any] | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"model must be a non-empty string, got {name!r}")
        if explain is not None and not isinstance(explain, Explain):
            explain = Explain(explain)  # a ready shap explainer or a callable
        self.monitor = monitor
        self.name = name
        self.version = str(version)
        self.input_arg = input
        self.prediction_key = prediction_key
        self.class_names = tuple(class_names) if class_names else None
        if not isinstance(warmup_rows, int) or warmup_rows < 10:
            raise ConfigError(f"warmup_rows must be an integer >= 10, got {warmup_rows!r}")
        if isinstance(segments, str) or isinstance(redact, str):
            raise ConfigError("segments and redact take lists of feature names")
        if not (log_features in ("all", None) or (not isinstance(log_features, str) and isinstance(log_features, Sequence))):
            raise ConfigError(f"log_features must be 'all', None or a list of feature names, got {log_features!r}")
        self.segments = tuple(segments)
        self.log_features = log_features if log_features in ("all", None) else tuple(log_features)
        self.redact = frozenset(redact)
        self._declared_names, self._declared_kinds = _declared_features(features)
        self.schema: FeatureSchema | None = None
        self.baseline: Baseline | None = None
        self._bin_cuts: list[np.ndarray] = []  # per numeric feature: the baseline's interior bin edges
        self._bin_counts: np.ndarray | None = None  # numeric features x bins, rows since start
        if baseline is not None:
            self.set_baseline(_load_baseline(baseline))
        elif self._declared_names is not None and len(self._declared_kinds) == len(self._declared_names):
            self.schema = FeatureSchema(self._declared_names, [self._declared_kinds[n] for n in self._declared_names])
        self.explain: Explain | None = explain
        # (time, |contributions|) of explained predictions, as many as the window holds
        self.attributions: collections.deque = collections.deque(maxlen=monitor.config.reservoir_size)
        self.explainer: ExplanationService | None = None  # started with the monitor, in the serving process
        self.checker = DriftChecker(self, drift_policy, warmup_rows, on_alert)
        self.performance = PerformanceTracker(self, **(performance or {}))
        self.output_schema: FeatureSchema | None = None
        self.window: SlidingWindow | None = None  # feature rows
        self.output_window: SlidingWindow | None = None  # prediction rows
        self.attrs = {MODEL_NAME: name, MODEL_VERSION: self.version}
        self._lock = threading.Lock()  # guards the counters below (pipeline writes, health reads)
        self._predictions: collections.Counter[str] = collections.Counter()
        self._capture_errors: collections.Counter[str] = collections.Counter()
        self._feature_errors: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self._last_capture_error: dict[str, str] = {}
        self._labels: collections.Counter[str] = collections.Counter()
        self._unmonitored: collections.Counter[str] = collections.Counter()  # fields received but not features

    def set_baseline(self, baseline: Baseline) -> Baseline:
        """Use ``baseline`` from now on (its schema must be the model's); returns it."""
        names = self._declared_names if self.schema is None else self.schema.names
        if names is not None and tuple(names) != baseline.schema.names:
            raise ConfigError(f"model {self.name!r}: features {list(names)} do not match the "
                              f"baseline's {list(baseline.schema.names)}")
        if self.schema is not None and self.schema != baseline.schema:
            raise ConfigError(f"model {self.name!r}: feature kinds {self.schema.to_dict()} do not match the "
                              f"baseline's {baseline.schema.to_dict()}")
        self.schema = baseline.schema
        cuts = [np.asarray(baseline.features[n].get("bin_edges") or [np.nan, np.nan], dtype=float)[1:-1]
                for n in self.schema.numeric_names]
        counts = np.zeros((len(cuts), max((len(c) + 1 for c in cuts), default=1)), dtype=np.int64)
        self._bin_cuts, self._bin_counts = cuts, counts
        self.baseline = baseline
        return baseline

    def start_explainer(self) -> None:
        """Start the explanation workers (and their warm-up) in this process, if configured."""
        if self.explain is None or self.explainer is not None:
            return
        names = self.schema.numeric_names if self.schema is not None else self._declared_names or ()
        background = self.explain.background
        if background is None and self.baseline is not None and len(self.baseline.background):
            background = self.baseline.background
        self.explainer = ExplanationService(self.explain, names, None if background is None else np.asarray(background, float))
        self.explainer.start()

    def check_now(self) -> dict[str, Any]:
        """Run a drift check on the current window now and return its report."""
        return self.checker.check()

    def performance_report(self) -> dict[str, Any]:
        """The last check's performance report (running a check if none has run yet): per window
        the metrics overall and per segment, fairness, the reference and the degradation."""
        if self.performance.report is None:
            self.checker.check()
        return self.performance.report or {}

    def drift_report(self) -> dict[str, Any]:
        """The last drift check's report (running one if none has run yet): per feature its
        statistics, quality ratios and severity; drifted features, their share, dataset and
        prediction drift, active alerts."""
        return self.checker.report or self.checker.check()

    # ----------------------------------------------------------------------------- request path
    def record(self, inputs: Any, outputs: Any = None, *, latency: float | None = None, route: str = "",
               status_code: int | None = None, error: BaseException | str | None = None,
               prediction_id: str | None = None) -> str:
        """Report one inference (a row or a batch) and return its prediction id.

        ``inputs`` and ``outputs`` are anything :mod:`~mlmon_middleware.schema` reads (dicts,
        pydantic models, lists, arrays, DataFrames). Never raises: failures are counted.
        """
        pid = prediction_id or new_prediction_id()
        try:
            error_type = None if error is None else (error if isinstance(error, str) else type(error).__qualname__)
            duration_ns = 0 if latency is None else int(latency * 1e9)
            self.submit(Record(self, pid, time.time_ns() - duration_ns, duration_ns, inputs, outputs,
                               route, status_code, error_type, self.monitor.current_context()))
        except Exception as exc:  # never let monitoring break the caller
            self.monitor.errors.report("record", exc)
        return pid

    def submit(self, record: Record) -> None:
        """Queue a ready record for the pipeline (the capture layers call this)."""
        self.monitor.submit(record)

    # --------------------------------------------------------------------------- pipeline side
    def _ingest(self, records: list[Record], telemetry: Telemetry) -> None:
        """Turn a batch of records into counts, timings, rows and spans (background thread)."""
        counts: collections.Counter = collections.Counter()
        capture: collections.Counter = collections.Counter()
        feature_rows: list[Any] = []
        output_rows: list[dict | None] = []
        row_times: list[int] = []
        durations: dict[tuple, list[int]] = {}
        messages: dict[str, str] = {}  # last message per capture-error reason
        tracer = telemetry.tracer
        writer = self.monitor.store_writer
        log_rows: list = []
        explained: collections.Counter = collections.Counter()
        for rec in records:
            ok = rec.ok
            counts[(rec.route, ok)] += 1
            key = (rec.route, rec.status_code, rec.error_type)
            group = durations.get(key)
            if group is None:
                group = durations[key] = []
            group.append(rec.duration_ns)
            rows, outputs = self._rows_of(rec, capture, messages) if ok else ((), ())
            if rows:
                feature_rows += rows
                output_rows += outputs
                row_times += [rec.wall_ns] * len(rows) if len(rows) > 1 else [rec.wall_ns]
                if writer is not None:
                    log_rows += self._log_rows(rec, rows, outputs)
            if rec.explanation is not None:
                explained[rec.explanation.status] += 1
                self._explained(rec.explanation, rec.wall_ns * _NS, telemetry)
            if tracer is not None:
                self._span(telemetry, rec, rows, outputs)
        for (route, status, error_type), values in durations.items():
            attrs = {**self.attrs, HTTP_ROUTE: route, HTTP_STATUS: status or (500 if error_type else 200)}
            if error_type:
                attrs[ERROR_TYPE] = error_type
            telemetry.inference_duration.observe(np.array(values) * _NS, attrs)
        for (route, ok), n in counts.items():
            telemetry.predictions.add(n, {**self.attrs, HTTP_ROUTE: route, "outcome": "ok" if ok else "error"})
        for status, n in explained.items():
            telemetry.explanations.add(n, {**self.attrs, "status": status})
        if log_rows:
            writer.put(log_rows)
        if feature_rows:
            self._store(feature_rows, output_rows, np.array(row_times) * _NS, capture, telemetry)
        for reason, n in capture.items():
            telemetry.capture_errors.add(n, {**self.attrs, "reason": reason})
        with self._lock:
            for (_, ok), n in counts.items():
                self._predictions["ok" if ok else "error"] += n
            self._capture_errors.update(capture)
            self._last_capture_error.update(messages)

    def _log_rows(self, rec: Record, rows: list, outputs: list) -> list[tuple]:
        """Prediction-log rows of one record: batch row ``i`` gets the id ``"{prediction id}:{i}"``."""
        names = self.schema.names if self.schema is not None else ()
        when = rec.wall_ns * _NS
        out = []
        for i, (row, output) in enumerate(zip(rows, outputs)):
            values = row if isinstance(row, Mapping) else dict(zip(names, row))
            segments = {name: values.get(name) for name in self.segments}
            if self.log_features is None:
                features = None
            else:
                chosen = values if self.log_features == "all" else {n: values.get(n) for n in self.log_features}
                features = _json({k: ("[redacted]" if k in self.redact else v) for k, v in chosen.items()})
            pid = rec.prediction_id if len(rows) == 1 else f"{rec.prediction_id}:{i}"
            result = rec.explanation.result if rec.explanation is not None and i == 0 else None
            explanation = None if result is None else _json(shown(result))
            out.append((pid, self.name, self.version, when, _json(output or {}), _json(segments), features, explanation))
        return out

    # ------------------------------------------------------------------------------ ground truth
    def record_outcome(self, prediction_id: str, actual: Any, timestamp: float | None = None) -> dict[str, Any]:
        """Join the ground truth ``actual`` to a logged prediction; see :meth:`record_outcomes`."""
        return self.record_outcomes([(prediction_id, actual, timestamp)])["results"][0]

    def record_outcomes(self, items: Sequence[tuple[str, Any, float | None]]) -> dict[str, Any]:
        """Join ground-truth labels ``(prediction id, actual, timestamp or None for now)`` to
        logged predictions. The same id twice keeps the latest label (``relabelled``); unknown
        ids are answered per item (``unknown``). Needs the prediction log (``store_dir``)."""
        now = time.time()
        results = self._log("join labels").set_labels(self.name, [(pid, actual, now if ts is None else float(ts))
                                                                  for pid, actual, ts in items])
        telemetry = self.monitor.telemetry
        outcomes = collections.Counter(outcome for _, outcome, _ in results)
        for outcome, n in outcomes.items():
            telemetry.labels.add(n, {**self.attrs, "outcome": outcome})
        delays = np.array([d for _, outcome, d in results if d is not None and outcome != "unknown"])
        if delays.size:
            telemetry.label_delay.observe(np.clip(delays, 0, None), self.attrs)
        with self._lock:
            self._labels.update(outcomes)
        return {"results": [{"prediction_id": pid, "status": outcome, "delay_seconds": delay}
                            for pid, outcome, delay in results], **{k: outcomes.get(k, 0) for k in LABEL_OUTCOMES}}

    def lookup(self, prediction_id: str) -> dict[str, Any] | None:
        """The logged prediction ``prediction_id`` (features, prediction, label, explanation), or
        None when it is not in the log. Needs the prediction log (``store_dir``)."""
        return self._log("look up predictions").lookup(self.name, prediction_id)

    def recent_predictions(self, limit: int = 20, explained: bool = False) -> list[dict[str, Any]]:
        """The newest ``limit`` logged predictions, newest first; only explained ones if asked."""
        return self._log("list predictions").recent(self.name, limit, explained)

    def _log(self, purpose: str) -> PredictionStore:
        """The prediction log, with everything captured so far written to it."""
        writer = self.monitor.store_writer
        if writer is None:
            raise StoreError(f"no prediction log: set MonitorConfig(store_dir=...) or MLMON_STORE_DIR to {purpose}")
        self.monitor.flush()  # predictions still in the pipeline or the writer's queue
        writer.flush()
        return writer.store

    def label_coverage(self, since: float) -> tuple[int, int]:
        """(logged predictions made since ``since``, of which labelled)."""
        writer = self.monitor.store_writer
        if writer is None:
            return 0, 0
        writer.flush()
        return writer.store.counts(self.name, since)

    def _rows_of(self, rec: Record, capture: collections.Counter, messages: dict[str, str]) -> tuple[list, list]:
        try:
            rows = extract_rows(resolve_payload(rec.inputs, self.input_arg))
        except CaptureError as exc:
            capture[exc.reason] += 1
            messages[exc.reason] = str(exc)
            return [], []
        try:
            outputs = extract_predictions(resolve_payload(rec.outputs), len(rows), self.prediction_key,
                                          self.class_names)
        except CaptureError as exc:
            capture[exc.reason] += 1
            messages[exc.reason] = str(exc)
            outputs = [None] * len(rows)
        return rows, outputs

    def _store(self, rows: list, outputs: list, times: np.ndarray, capture: collections.Counter,
               telemetry: Telemetry) -> None:
        size = self.monitor.config.reservoir_size
        if self.schema is None:
            self.schema = FeatureSchema.infer(rows, names=self._declared_names, kinds=self._declared_kinds)
        if self.window is None:
            self.window = SlidingWindow(size, numeric=(len(self.schema.numeric_names), float),
                                        categorical=(len(self.schema.categorical_names), object))
        encoded = self.schema.encode(rows)
        capture.update(encoded.errors)
        if encoded.feature_errors or encoded.unexpected_fields:
            with self._lock:
                for feature, counts in encoded.feature_errors.items():
                    self._feature_errors[feature].update(counts)
                for field, n in encoded.unexpected_fields.items():
                    if field in self._unmonitored or len(self._unmonitored) < MAX_UNMONITORED_FIELDS:
                        self._unmonitored[field] += n
        self.window.extend(times, numeric=encoded.numeric, categorical=encoded.categorical)
        counts = self._bin_counts
        if counts is not None:  # the fleet bin counters: rows per baseline bin, per numeric feature
            for j, cuts in enumerate(self._bin_cuts):
                counts[j, :len(cuts) + 1] += bin_counts(encoded.numeric[:, j], cuts)

        answered = [i for i, o in enumerate(outputs) if o is not None]
        if not answered:
            return
        if self.output_schema is None:
            self.output_schema = FeatureSchema.infer([outputs[i] for i in answered])
            self.output_window = SlidingWindow(size, numeric=(len(self.output_schema.numeric_names), float),
                                               categorical=(len(self.output_schema.categorical_names), object))
        out = self.output_schema.encode([outputs[i] for i in answered])
        for reason, n in out.errors.items():
            capture[f"prediction_{reason}"] += n
        self.output_window.extend(times[answered], numeric=out.numeric, categorical=out.categorical)
        for j, name in enumerate(self.output_schema.numeric_names):
            telemetry.prediction_value.observe(out.numeric[:, j], {**self.attrs, "output": name})

    def _explained(self, pending: Any, when: float, telemetry: Telemetry) -> None:
        """Time an explanation and keep its |contributions| for attribution drift."""
        result = pending.result
        if result is None:
            return
        telemetry.explanation_duration.observe(np.array([pending.seconds]), {**self.attrs, "explainer": result["method"]})
        self.attributions.append((when, np.abs(np.asarray(result["contributions"], dtype=float))))

    def _span(self, telemetry: Telemetry, rec: Record, rows: list, outputs: list) -> None:
        attrs: dict[str, Any] = {**self.attrs, PREDICTION_ID: rec.prediction_id, "mlmon.batch.size": len(rows)}
        if rec.route:
            attrs[HTTP_ROUTE] = rec.route
        if outputs and outputs[0]:
            for name, value in outputs[0].items():
                if isinstance(value, (int, float, str, bool)):
                    attrs[f"mlmon.prediction.{name}" if len(outputs[0]) > 1 else "mlmon.prediction"] = value
        allowed = self.monitor.config.trace_features
        if allowed and rows and isinstance(rows[0], Mapping):
            for name in allowed:
                value = rows[0].get(name)
                if isinstance(value, (int, float, str, bool)):
                    attrs[f"mlmon.feature.{name}"] = value
        if rec.error_type:
            attrs[ERROR_TYPE] = rec.error_type
        result = rec.explanation.result if rec.explanation is not None else None
        for i, item in enumerate((result or {}).get("top", ())):
            attrs[f"mlmon.explanation.top.{i}.feature"] = item["feature"]
            attrs[f"mlmon.explanation.top.{i}.value"] = item["contribution"]
        span = telemetry.tracer.start_span(f"mlmon.inference {self.name}", context=rec.context,
                                           attributes=attrs, start_time=rec.wall_ns)
        if rec.error_type:
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR, rec.error_type))
        span.end(end_time=rec.wall_ns + rec.duration_ns)

    # ---------------------------------------------------------------------------------- reading
    def window_snapshot(self, since: float | None = None) -> dict[str, dict[str, np.ndarray]]:
        """Copies of the current window: ``{"features": {...}, "outputs": {...}}``, each with
        ``time``, ``numeric`` and ``categorical`` matrices in arrival order (see SlidingWindow)."""
        return {"features": self.window.snapshot(since) if self.window else {},
                "outputs": self.output_window.snapshot(since) if self.output_window else {}}

    def counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """Predictions so far (``ok``, ``error``) and capture errors by reason."""
        with self._lock:
            return {"ok": self._predictions["ok"], "error": self._predictions["error"]}, dict(self._capture_errors)

    def health(self) -> dict[str, Any]:
        """Counts and window fill of this model, as shown by ``/mlmon/health``."""
        predictions, capture = self.counts()
        with self._lock:
            last = dict(self._last_capture_error)
        return {
            "model": self.name,
            "version": self.version,
            "predictions": predictions,
            "capture_errors": capture,
            "last_capture_errors": last,
            "features": self.schema.to_dict() if self.schema else None,
            "outputs": self.output_schema.to_dict() if self.output_schema else None,
            "rows_in_window": 0 if self.window is None else len(self.window),
            "window_capacity": self.monitor.config.reservoir_size,
            "baseline": None if self.baseline is None else self.baseline.summary(),
            "coverage": self.coverage(),
            "labels": dict(self._labels),
            "alerts_firing": len(self.checker.alerts.active()),
            "last_check": None if self.checker.report is None else {
                k: self.checker.report.get(k) for k in ("checked_at", "status", "rows", "drifted", "share")},
        }

    def coverage(self) -> dict[str, Any] | None:
        """Features monitored against the fields the model receives: the schema's features plus
        every other field seen in input rows (with the rows carrying it). ``ratio`` 1.0 means
        every field the model receives is watched; None before the schema is known."""
        if self.schema is None:
            return None
        with self._lock:
            unmonitored = dict(self._unmonitored.most_common())
        monitored = len(self.schema.names)
        received = monitored + len(unmonitored)
        return {"monitored": monitored, "received": received, "ratio": monitored / received if received else 1.0,
                "unmonitored_fields": unmonitored}

    def feature_errors(self) -> dict[str, dict[str, int]]:
        """Per feature, rows captured so far with a type mismatch, a non-finite value or the
        feature's field absent."""
        with self._lock:
            return {feature: dict(counts) for feature, counts in self._feature_errors.items()}

    def observations(self, name: str) -> list[tuple[float, dict[str, Any]]]:
        """Values of the observable instrument ``name`` for this model."""
        if name == "mlmon.reservoir.size":
            return [] if self.window is None else [(len(self.window), self.attrs)]
        if name == "mlmon.baseline.age":
            return [] if self.baseline is None else [(self.baseline.age_seconds(), self.attrs)]
        if name == "mlmon.feature.coverage":
            coverage = self.coverage()
            return [] if coverage is None else [(coverage["ratio"], self.attrs)]
        if name == "mlmon.performance":
            return self.performance.observations(self.attrs)
        if name == "mlmon.feature.attribution":
            return self.checker.attribution_observations()
        if name == "mlmon.baseline.bin.ratio":
            if self.baseline is None or self.schema is None:
                return []
            return [(float(share), {**self.attrs, "feature": feature, "bin": str(b)})
                    for feature in self.schema.numeric_names
                    for b, share in enumerate(self.baseline.features[feature].get("bin_proportions") or ())]
        if name == "mlmon.feature.bin":
            counts = self._bin_counts
            if counts is None:
                return []
            return [(int(counts[j, b]), {**self.attrs, "feature": feature, "bin": str(b)})
                    for j, feature in enumerate(self.schema.numeric_names) for b in range(len(self._bin_cuts[j]) + 1)]
        return self.checker.observations(name)


LABEL_OUTCOMES = ("labelled", "relabelled", "unknown")


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS, default=str).decode()


def _load_baseline(baseline: Baseline | str | os.PathLike) -> Baseline:
    return baseline if isinstance(baseline, Baseline) else Baseline.load(baseline)


class Monitor:
    """The process-wide registry of monitored models, their queue and background pipeline.

    ``Monitor.get()`` returns the default instance that ``@monitor`` uses; create your own
    with a :class:`MonitorConfig` to pass it explicitly (tests do).
    """

    _default: ClassVar[Monitor | None] = None
    _default_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, config: MonitorConfig | None = None) -> None:
        self.config = (config or MonitorConfig()).with_env()
        if self.config.resolved_otlp_endpoint() and self.config.meter_provider is None:
            try:
                import opentelemetry.exporter.otlp.proto.http  # noqa: F401
            except ImportError:
                raise ConfigError("OTLP export is configured (otlp_endpoint / OTEL_EXPORTER_OTLP_ENDPOINT) but "
                                  "its exporter is not installed: pip install 'mlmon-middleware[otlp]'") from None
        if self.config.store_dir is not None:  # a corrupt or unwritable log fails now, not mid-traffic
            SQLiteStore(self.store_path).close()
        self.errors = ErrorLog()
        self._models: dict[str, ModelMonitor] = {}
        self._store_writer: StoreWriter | None = None
        #: added to ``prometheus_port`` in this process (the BentoML adapter: one port per worker)
        self.port_offset: Callable[[], int] = lambda: 0
        self._queue: collections.deque[Record] = collections.deque()
        self._start_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._started = False
        self._tracing = False
        self._telemetry: Telemetry | None = None
        self._thread: threading.Thread | None = None
        self._analyzer: Analyzer | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._wake_at = min(self.config.flush_batch, self.config.queue_size - 1)
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: (m := ref()) is not None and m._forget_process())

    @classmethod
    def get(cls) -> Monitor:
        """The default process-wide monitor, created on first use from ``MonitorConfig()`` and env."""
        if cls._default is None:
            with cls._default_lock:
                if cls._default is None:
                    cls._default = cls()
        return cls._default

    @classmethod
    def set_default(cls, monitor: Monitor) -> Monitor:
        """Make ``monitor`` the one ``@monitor`` and the adapters use when none is passed."""
        cls._default = monitor
        return monitor

    def model(self, name: str, version: str | None = None, **options: Any) -> ModelMonitor:
        """The ModelMonitor of ``name``, created on first call with ``version`` and ``options``
        (``features``, ``baseline``, ``input``, ``prediction_key``, ``class_names``,
        ``drift_policy``, ``warmup_rows``, ``on_alert``, ``segments``, ``log_features``, ``redact``,
        ``performance``: options of :class:`~mlmon_middleware.performance.PerformanceTracker`)."""
        existing = self._models.get(name)
        if existing is not None:
            if version is not None and str(version) != existing.version:
                raise ConfigError(f"model {name!r} is already monitored as version {existing.version!r}, "
                                  f"not {version!r}; one process serves one version per model name")
            return existing
        with self._start_lock:
            if name not in self._models:
                self._models[name] = ModelMonitor(self, name, "unknown" if version is None else version, **options)
        if self._started:
            self._models[name].start_explainer()
        return self._models[name]

    @property
    def models(self) -> dict[str, ModelMonitor]:
        return dict(self._models)

    # ----------------------------------------------------------------------------- request path
    def submit(self, record: Record) -> None:
        if not self._started:
            self._start()
        queued = len(self._queue)
        if queued >= self.config.queue_size:
            self.errors.report("queue_full", message="record dropped: the pipeline queue is full")
            return
        self._queue.append(record)
        if queued == self._wake_at:  # a burst: run the pipeline now rather than at the next interval
            self._wake.set()

    def start(self) -> None:
        """Start this process's telemetry, pipeline, analyzer, log writer and explanation workers
        now rather than at the first request (the middleware does it at ASGI lifespan startup)."""
        if not self._started:
            self._start()

    def current_context(self) -> Any:
        """The OTel context to parent our span on, or None when not tracing (cheap)."""
        if not self._started:
            self._start()
        return get_current_context() if self._tracing else None

    # ---------------------------------------------------------------------------- the pipeline
    @property
    def telemetry(self) -> Telemetry:
        if not self._started:
            self._start()
        assert self._telemetry is not None
        return self._telemetry

    def _start(self) -> None:
        """Start telemetry and the pipeline thread in this process (lazily: after any fork)."""
        with self._start_lock:
            if self._started:
                return
            config = self.config
            if config.prometheus_port:
                config = dataclasses.replace(config, prometheus_port=config.prometheus_port + self.port_offset())
            self._telemetry = Telemetry(config, flush=self.flush, observe=self.observe)
            self._tracing = self._telemetry.tracer is not None
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="mlmon-pipeline", daemon=True)
            self._thread.start()
            if self.config.check_interval > 0:
                self._analyzer = Analyzer(self.check_all, self.config.check_interval)
            for model in self._models.values():
                model.start_explainer()
            if self.config.store_dir is not None:
                self._store_writer = StoreWriter(
                    SQLiteStore(self.store_path), interval=self.config.store_interval,
                    max_queue=self.config.store_queue_size,
                    retention=(self.config.store_max_age, self.config.store_max_rows),
                    on_drop=lambda n: self.errors.report("store_queue_full", message=f"{n} logged prediction(s) dropped"),
                    on_error=lambda exc: self.errors.report("store", exc))
            self._started = True
            atexit.register(self.shutdown)

    @property
    def store_path(self) -> str:
        """The prediction log's file (under ``store_dir``)."""
        return os.path.join(self.config.store_dir or ".", "predictions.sqlite")

    @property
    def store_writer(self) -> StoreWriter | None:
        """The prediction log's writer in this process, when ``store_dir`` is set."""
        if not self._started:
            self._start()
        return self._store_writer

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.config.flush_interval)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        """Process every queued record now (the pipeline thread calls this periodically)."""
        if self._telemetry is None:
            return
        with self._flush_lock:
            queue = self._queue
            batch: dict[ModelMonitor, list[Record]] = {}
            for _ in range(len(queue)):
                record = queue.popleft()
                batch.setdefault(record.model, []).append(record)
            for model, records in batch.items():
                try:
                    model._ingest(records, self._telemetry)
                except Exception as exc:
                    self.errors.report("ingest", exc)

    def check_all(self) -> None:
        """Run every model's drift check (the analyzer thread calls this); failures are counted."""
        for model in list(self._models.values()):
            try:
                model.check_now()
            except Exception as exc:
                self.errors.report("analysis", exc)

    def observe(self, name: str) -> list[tuple[float, dict[str, Any]]]:
        """Values of the observable instrument ``name`` across models (read at collection)."""
        if name == "mlmon.monitor.errors":
            return [(n, {"stage": stage}) for stage, n in self.errors.counts().items()]
        return [obs for model in list(self._models.values()) for obs in model.observations(name)]

    def health(self) -> dict[str, Any]:
        """Models, counts, window fill and recent monitoring errors (``/mlmon/health``)."""
        self.flush()
        errors = self.errors.counts()
        issues = self._issues(errors)
        return {
            "status": "ok" if not errors and not issues else "degraded",
            "issues": issues,
            "pid": os.getpid(),
            "instance_id": None if self._telemetry is None else self._telemetry.instance_id,
            "queue": len(self._queue),
            "prediction_log": self.store_path if self.config.store_dir is not None else None,
            "token_required": bool(self.config.api_token),  # for feedback and logged predictions
            "models": {name: m.health() for name, m in self._models.items()},
            "monitor_errors": errors,
            "last_errors": self.errors.recent(),
        }

    def _issues(self, errors: dict[str, int]) -> list[str]:
        """What is wrong with the monitoring itself, in words (the seed's monitoring-health checks)."""
        issues = []
        now = time.time()
        interval = self.config.check_interval
        for name, model in self._models.items():
            checker = model.checker
            if interval > 0 and checker.last_run and now - checker.last_run > 3 * interval:
                issues.append(f"{name}: no drift check for {now - checker.last_run:.0f} s (one every {interval:g} s expected)")
            if model.baseline is not None and model.baseline.age_seconds() > 90 * 86400:
                issues.append(f"{name}: the baseline is {model.baseline.age_seconds() / 86400:.0f} days old")
            coverage = model.coverage()
            if coverage and coverage["unmonitored_fields"]:
                fields = list(coverage["unmonitored_fields"])
                shown = ", ".join(fields[:5]) + (f" and {len(fields) - 5} more" if len(fields) > 5 else "")
                issues.append(f"{name}: monitors {coverage['monitored']} of the {coverage['received']} fields it receives "
                              f"(coverage {coverage['ratio']:.0%}); not monitored: {shown}")
            fired, resolved = (sum(n for (_, state), n in checker.alerts.events.items() if state == s)
                               for s in ("firing", "resolved"))
            if fired > resolved:
                issues.append(f"{name}: {fired - resolved} alert(s) firing ({fired} fired, {resolved} resolved so far)")
        if errors.get("queue_full"):
            issues.append(f"{errors['queue_full']} captured inference(s) dropped: the pipeline queue was full")
        if errors.get("store_queue_full"):
            issues.append(f"{errors['store_queue_full']} logged prediction(s) dropped: the log writer's queue was full")
        other = {k: v for k, v in errors.items() if k not in ("queue_full", "store_queue_full")}
        if other:
            issues.append("internal errors: " + ", ".join(f"{k} ×{v}" for k, v in sorted(other.items())))
        return issues

    def shutdown(self) -> None:
        """Flush what is queued, stop the pipeline thread and our exporters."""
        if not self._started:
            return
        self._stop.set()
        self._wake.set()
        if self._analyzer is not None:
            self._analyzer.stop()
            self._analyzer = None
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self.flush()
        for model in self._models.values():
            if model.explainer is not None:
                model.explainer.close()
                model.explainer = None
        if self._store_writer is not None:
            self._store_writer.close()  # writes what is queued: a clean shutdown loses nothing
            self._store_writer = None
        if self._telemetry is not None:
            self._telemetry.shutdown()
        self._started = False
        self._telemetry = None
        atexit.unregister(self.shutdown)

    def _forget_process(self) -> None:
        """In a forked child: drop the parent's threads, exporters and queue; start afresh on use."""
        self._started = False
        self._telemetry = None
        self._thread = None
        self._analyzer = None
        self._store_writer = None  # the parent's SQLite connection must not be used here
        for model in self._models.values():
            model.explainer = None  # the parent's worker pool belongs to the parent
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._start_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._queue = collections.deque()

