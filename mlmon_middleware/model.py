"""One monitored model: its options, its state, and the programmatic API.

:class:`ModelOptions` is the one declaration of the per-model options, shared by ``@monitor``,
:class:`~mlmon_middleware.Endpoint`, the BentoML adapter and :meth:`Monitor.model`.
:class:`ModelMonitor` holds one model's state (schema, baseline, windows, counters, explainer,
checker) and its API: :meth:`ModelMonitor.record` is the one entry of the request path (it builds a
:class:`Record` of references and queues it: O(1), no I/O, no parsing, never raises);
:meth:`~ModelMonitor.record_outcome`, :meth:`~ModelMonitor.drift_report` and
:meth:`~ModelMonitor.performance_report` are what users call. The pipeline
(:mod:`~mlmon_middleware.pipeline`) fills the state; the analysis (:mod:`~mlmon_middleware.analyzer`)
gets snapshots of it and the model applies what it returns.

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

import collections
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from mlmon_middleware import explain_request as explanations
from mlmon_middleware.analyzer import DriftChecker
from mlmon_middleware.baseline import Baseline
from mlmon_middleware.config import ConfigError, MonitorConfig
from mlmon_middleware.counters import BinCounter, Counters
from mlmon_middleware.drift.policy import DriftPolicy
from mlmon_middleware.errors import ErrorLog
from mlmon_middleware.explain import Explain, ExplanationService
from mlmon_middleware.explain_request import PendingExplanation
from mlmon_middleware.ids import new_prediction_id
from mlmon_middleware.instruments import MODEL_NAME, MODEL_VERSION
from mlmon_middleware.limits import LimitHits
from mlmon_middleware.options import ModelOptions, declared_features
from mlmon_middleware.pacing import paced
from mlmon_middleware.performance import PerformanceTracker
from mlmon_middleware.reports import (
    Coverage,
    DriftReport,
    LabelResult,
    LabelResults,
    LoggedPrediction,
    ModelHealth,
    PerformanceReport,
)
from mlmon_middleware.reservoir import SlidingWindow, WindowSnapshot
from mlmon_middleware.schema import FeatureSchema
from mlmon_middleware.shared_model import Share, check_inputs, store_performance
from mlmon_middleware.store import PredictionStore, StoreBusy, StoreError
from mlmon_middleware.store_writer import StoreWriter
from mlmon_middleware.telemetry import Telemetry


class Record:
    """One monitored inference, as captured on the request path: references, timing, outcome."""

    __slots__ = ("model", "prediction_id", "wall_ns", "duration_ns", "inputs", "outputs",
                 "route", "status_code", "error_type", "context", "explanation")

    def __init__(self, model: ModelMonitor, prediction_id: str, wall_ns: int, duration_ns: int, inputs: Any,
                 outputs: Any, route: str = "", status_code: int | None = None,
                 error_type: str | None = None, context: object | None = None) -> None:
        self.model = model
        self.prediction_id = prediction_id
        self.wall_ns = wall_ns
        self.duration_ns = duration_ns
        self.inputs = inputs
        self.outputs = outputs
        self.route = route
        self.status_code = status_code
        self.error_type = error_type
        self.context = context  # the OTel context to parent the span on
        self.explanation: PendingExplanation | None = None  # when the response carries one

    @property
    def ok(self) -> bool:
        """Whether the call produced a prediction: no exception and no 4xx/5xx status."""
        return self.error_type is None and (self.status_code is None or self.status_code < 400)


class Registry(Protocol):
    """What a model needs of the registry it belongs to (:class:`~mlmon_middleware.Monitor`)."""

    @property
    def config(self) -> MonitorConfig: ...

    @property
    def errors(self) -> ErrorLog: ...

    @property
    def limits(self) -> LimitHits: ...

    @property
    def telemetry(self) -> Telemetry: ...

    @property
    def store_writer(self) -> StoreWriter | None: ...

    @property
    def host(self) -> Share | None: ...

    def submit(self, record: Record) -> bool: ...

    def flush(self) -> None: ...

    def current_context(self) -> object | None: ...

    def unapproved(self, model: str, version: str) -> str: ...


class ModelMonitor:
    """Monitoring state of one model; see the module docstring.

    Created by :meth:`Monitor.model`; use :meth:`record` to report an inference by hand.
    """

    def __init__(self, registry: Registry, name: str, version: str, options: ModelOptions | None = None,
                 *, admitted: bool = True) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"model must be a non-empty string, got {name!r}")
        options = options or ModelOptions()
        self.registry = registry
        #: False for a model beyond ``max_models``: not registered, its records dropped and counted
        self.admitted = admitted
        self.name = name
        self.version = str(version)
        self.options = options
        self.attrs = {MODEL_NAME: name, MODEL_VERSION: self.version}
        self.policy = options.drift_policy or DriftPolicy()
        self.declared_names, self.declared_kinds = declared_features(options.features)
        self.schema: FeatureSchema | None = None
        self.baseline: Baseline | None = None
        self.bins: BinCounter | None = None  # rows per baseline bin, for fleet-wide PSI
        self.window: SlidingWindow | None = None  # feature rows
        self.output_window: SlidingWindow | None = None  # prediction rows
        if options.baseline is not None:
            baseline = options.baseline
            self.set_baseline(baseline if isinstance(baseline, Baseline) else Baseline.load(baseline))
        elif self.declared_names is not None and len(self.declared_kinds) == len(self.declared_names):
            self.schema = FeatureSchema(self.declared_names, [self.declared_kinds[n] for n in self.declared_names])
        self.explain: Explain | None = options.explain
        # (time, |contributions|) of explained predictions, as many as the window holds
        self.attributions: collections.deque[tuple[float, np.ndarray]] = collections.deque(
            maxlen=registry.config.reservoir_size)
        self.explainer: ExplanationService | None = None  # started with the monitor, in the serving process
        policy = self.policy
        performance = PerformanceTracker(name, options.performance_options, options.segments,
                                         self.baseline.payload.get("performance") if self.baseline is not None else None,
                                         latch_checks=max(policy.fire_after, policy.resolve_after))
        self.checker = DriftChecker(name, self.version, performance=performance, policy=policy,
                                    warmup_rows=options.warmup_rows, on_alert=options.on_alert,
                                    errors=registry.errors)
        self.output_schema: FeatureSchema | None = None
        self.counters = Counters()
        self._check_lock = threading.Lock()  # a check builds its inputs and applies its result as one step
        self._demand_lock = threading.Lock()
        self._last_on_demand: float | None = None  # monotonic time of the last on-demand check

    def set_baseline(self, baseline: Baseline) -> Baseline:
        """Use ``baseline`` from now on (its schema must be the model's); returns it."""
        names = self.declared_names if self.schema is None else self.schema.names
        if names is not None and tuple(names) != baseline.schema.names:
            raise ConfigError(f"model {self.name!r}: features {list(names)} do not match the "
                              f"baseline's {list(baseline.schema.names)}")
        if self.schema is not None and self.schema != baseline.schema:
            raise ConfigError(f"model {self.name!r}: feature kinds {self.schema.to_dict()} do not match the "
                              f"baseline's {baseline.schema.to_dict()}")
        self.schema = baseline.schema
        # fleet series need bins every replica shares: a warm-up baseline's are this replica's own
        self.bins = None if baseline.warmup else BinCounter(baseline, self.policy.alpha)
        self.baseline = baseline
        for window, outputs in ((self.window, False), (self.output_window, True)):
            if window is not None and window.dtype("numeric") == np.float32 and baseline.window_dtype(outputs) != np.float32:
                window.widen("numeric")  # float32 kept only what the previous baseline needed
        return baseline

    def window_dtype(self, outputs: bool = False) -> type[np.floating[Any]]:
        """The dtype of the numeric window (``outputs``: of predictions): float32 where the
        baseline allows it, float64 without a baseline (nothing says float32 is enough)."""
        return np.float64 if self.baseline is None else self.baseline.window_dtype(outputs)

    # ------------------------------------------------------------------------------ explanations
    def start_explainer(self) -> None:
        """Start the explanation workers (and their warm-up) in this process, if configured."""
        if self.explain is None or self.explainer is not None:
            return
        names = self.schema.numeric_names if self.schema is not None else self.declared_names or ()
        background = self.explain.background
        if background is None and self.baseline is not None and len(self.baseline.background):
            background = self.baseline.background
        errors = self.registry.errors
        self.explainer = ExplanationService(self.explain, names, None if background is None else np.asarray(background, float),
                                            report=lambda message, exc: errors.report("explain", exc, message))
        self.explainer.start()

    def after_fork(self) -> None:
        """In a forked child: drop the parent's explanation workers and take fresh locks (a
        parent's thread may have held one at the fork; the child would wait for it forever)."""
        self.explainer = None  # the parent's worker pool belongs to the parent
        self._check_lock = threading.Lock()
        self._demand_lock = threading.Lock()
        self.counters.after_fork()
        self.checker.after_fork()
        for window in (self.window, self.output_window):
            if window is not None:
                window.after_fork()

    def stop_explainer(self) -> None:
        if self.explainer is not None:
            self.explainer.close()
            self.explainer = None

    def explain_request(self, scope: Mapping[str, Any] | None, inputs: Any) -> PendingExplanation | None:
        """Start explaining the current call if it is wanted (asked for, sampled or always)."""
        if self.explain is None:
            return None
        return explanations.request(self.explain, self.explainer, scope, inputs, input_arg=self.options.input,
                                    schema=self.schema, names=self.declared_names)

    # ----------------------------------------------------------------------------- request path
    def record(self, inputs: Any, outputs: Any = None, *, latency: float | None = None, route: str = "",
               status_code: int | None = None, error: BaseException | str | None = None,
               prediction_id: str | None = None) -> str:
        """Report one inference (a row or a batch) and return its prediction id.

        ``inputs`` and ``outputs`` are anything :mod:`~mlmon_middleware.schema` reads (dicts,
        pydantic models, lists, arrays, DataFrames). Never raises: failures are counted.
        """
        pid = str(prediction_id) if prediction_id else new_prediction_id()  # a UUID object is logged as text
        try:
            error_type = None if error is None else (error if isinstance(error, str) else type(error).__qualname__)
            duration_ns = 0 if latency is None else int(latency * 1e9)
            self.submit(Record(self, pid, time.time_ns() - duration_ns, duration_ns, inputs, outputs,
                               route, status_code, error_type, self.registry.current_context()))
        except Exception as exc:  # never let monitoring break the caller
            self.registry.errors.report("record", exc)
        return pid

    def submit(self, record: Record) -> bool:
        """Queue a ready record for the pipeline (the capture layers call this); False: dropped."""
        if not self.admitted:
            self.registry.limits.hit("models", "a record of a model beyond max_models dropped")
            return False
        return self.registry.submit(record)

    # ---------------------------------------------------------------------------------- analysis
    def check_now(self, *, scheduled: bool = True) -> DriftReport:
        """Run a check (drift, quality, performance, alerts) on the current window now; its report.
        ``scheduled=False`` makes it an on-demand check, which counts toward no alert (see
        :class:`~mlmon_middleware.analyzer.CheckInputs`)."""
        self.registry.flush()  # the window includes everything captured so far
        with self._check_lock, paced():  # in any thread, the check lets go of the GIL between features
            now, window_seconds = time.time(), self.registry.config.window_seconds
            since = None if window_seconds is None else now - window_seconds
            labels, unapproved = self._label_reader(), self.registry.unapproved(self.name, self.version)
            result = self.checker.check(check_inputs(self, self.registry.host, now, since, labels, scheduled, unapproved))
            if scheduled:
                store_performance(self, labels)
            if result.warmup_baseline is not None:
                self.set_baseline(result.warmup_baseline)
            return result.report

    def check_on_demand(self, min_interval: float) -> bool:
        """An on-demand check (``?refresh=true``), unless one ran less than ``min_interval``
        seconds ago; whether it ran. Asking in a loop costs at most one check per interval."""
        now = time.monotonic()
        with self._demand_lock:
            if self._last_on_demand is not None and now - self._last_on_demand < min_interval:
                return False
            self._last_on_demand = now
        self.check_now(scheduled=False)
        return True

    def drift_report(self) -> DriftReport:
        """The last check's report (running one if none has run yet): per feature its
        statistics, quality ratios and severity; drifted features, their share, dataset and
        prediction drift, active alerts."""
        return self.checker.report or self.check_now(scheduled=False)

    def performance_report(self) -> PerformanceReport:
        """The last check's performance report (running a check if none has run yet): per window
        the metrics overall and per segment, fairness, the reference and the degradation."""
        if self.checker.performance.report is None:
            self.check_now(scheduled=False)
        return self.checker.performance.report or {}

    def label_coverage(self, since: float) -> tuple[int, int]:
        """(logged predictions made since ``since``, of which labelled); (0, 0) without a log."""
        reader = self._label_reader()
        return (0, 0) if reader is None else reader.counts(self.name, since)

    def _label_reader(self) -> PredictionStore | None:
        """The log as written so far: checks never wait for its writer (rows still queued have
        no label yet: labels join after a flush, see :meth:`record_outcomes`)."""
        writer = self.registry.store_writer
        return None if writer is None else writer.store

    # ------------------------------------------------------------------------------ ground truth
    def record_outcome(self, prediction_id: str, actual: Any, timestamp: float | None = None) -> LabelResult:
        """Join the ground truth ``actual`` to a logged prediction; see :meth:`record_outcomes`."""
        return self.record_outcomes([(prediction_id, actual, timestamp)])["results"][0]

    def record_outcomes(self, items: Sequence[tuple[str, Any, float | None]]) -> LabelResults:
        """Join ground-truth labels ``(prediction id, actual, timestamp or None for now)`` to
        logged predictions. The same id twice keeps the latest label (``relabelled``); unknown
        ids are answered per item (``unknown``). Needs the prediction log (``store_dir`` or ``store_url``)."""
        now = time.time()
        results = self._log("join labels").set_labels(self.name, [(pid, actual, now if ts is None else float(ts))
                                                                  for pid, actual, ts in items])
        telemetry = self.registry.telemetry
        outcomes: collections.Counter[str] = collections.Counter(r.outcome for r in results)
        for outcome, n in outcomes.items():
            telemetry.labels.add(n, {**self.attrs, "outcome": outcome})
        delays = np.array([r.delay for r in results if r.delay is not None and r.outcome != "unknown"])
        if delays.size:
            telemetry.label_delay.observe(np.clip(delays, 0, None), self.attrs)
        self.counters.add_labels(outcomes)
        return {"results": [{"prediction_id": r.prediction_id, "status": r.outcome, "delay_seconds": r.delay}
                            for r in results],
                "labelled": outcomes.get("labelled", 0), "relabelled": outcomes.get("relabelled", 0),
                "unknown": outcomes.get("unknown", 0)}

    def lookup(self, prediction_id: str) -> LoggedPrediction | None:
        """The logged prediction ``prediction_id`` (features, prediction, label, explanation), or
        None when it is not in the log. Needs the prediction log (``store_dir`` or ``store_url``)."""
        return self._log("look up predictions").lookup(self.name, prediction_id)

    def recent_predictions(self, limit: int = 20, explained: bool = False) -> list[LoggedPrediction]:
        """The newest ``limit`` logged predictions, newest first; only explained ones if asked."""
        return self._log("list predictions").recent(self.name, limit, explained)

    def _log(self, purpose: str) -> PredictionStore:
        """The prediction log, with everything captured so far written to it."""
        writer = self.registry.store_writer
        if writer is None:
            raise StoreError(f"no prediction log: set MLMON_STORE_DIR (a SQLite file) or MLMON_STORE_URL (PostgreSQL) "
                             f"to {purpose}")
        self.registry.flush()  # predictions still in the pipeline or the writer's queue
        if not writer.flush():  # a label joined now would miss the predictions still queued
            raise StoreBusy(f"the prediction log cannot be written just now, so it cannot {purpose}")
        return writer.store

    # ---------------------------------------------------------------------------------- reading
    def window_snapshot(self, since: float | None = None) -> dict[str, WindowSnapshot]:
        """Copies of the current window: ``{"features": {...}, "outputs": {...}}``, each with
        ``time``, ``numeric`` and ``categorical`` matrices in arrival order (see SlidingWindow)."""
        return {"features": self.window.snapshot(since) if self.window else {},
                "outputs": self.output_window.snapshot(since) if self.output_window else {}}

    def counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """Predictions so far (``ok``, ``error``) and capture errors by reason."""
        counts = self.counters.counts()
        return dict(counts.predictions), dict(counts.capture_errors)

    def health(self, private: bool = True) -> ModelHealth:
        """Counts and window fill of this model, as shown by ``/mlmon/health`` (``private``: with
        the last capture error messages, which may quote inputs)."""
        predictions, capture = self.counts()
        report = self.checker.report
        health: ModelHealth = {
            "model": self.name, "version": self.version, "predictions": predictions, "capture_errors": capture,
            "features": self.schema.to_dict() if self.schema else None,
            "outputs": self.output_schema.to_dict() if self.output_schema else None,
            "rows_in_window": 0 if self.window is None else len(self.window),
            "window_capacity": self.registry.config.reservoir_size,
            "baseline": None if self.baseline is None else self.baseline.summary(),
            "coverage": self.coverage(),
            "labels": self.counters.labels(),
            "alerts_firing": len(self.checker.alerts.active()),
            "last_check": None if report is None else {
                "checked_at": report.get("checked_at"), "status": report.get("status"), "rows": report.get("rows"),
                "drifted": report.get("drifted"), "share": report.get("share")},
        }
        if private:
            health["last_capture_errors"] = self.counters.last_capture_errors()
        return health

    def coverage(self) -> Coverage | None:
        """Features monitored against the fields the model receives: the schema's features plus
        every other field seen in input rows (with the rows carrying it). ``ratio`` 1.0 means
        every field the model receives is watched; None before the schema is known."""
        return None if self.schema is None else self.counters.coverage(len(self.schema.names))

    def feature_errors(self) -> dict[str, dict[str, int]]:
        """Per feature, rows captured so far with a type mismatch, a non-finite value or the
        feature's field absent."""
        return {feature: dict(counts) for feature, counts in self.counters.counts().feature_errors.items()}

