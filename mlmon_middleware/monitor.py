"""Monitor: the process-wide registry of monitored models, and the process lifecycle.

A :class:`Monitor` owns the models (:class:`~mlmon_middleware.model.ModelMonitor`), the
:class:`~mlmon_middleware.pipeline.Pipeline`, and what runs per process: telemetry and its
exporters, the analyzer thread, the prediction log's writer, the explanation workers. They
start lazily in the process that serves (at ASGI lifespan start-up or the first record, so after
any gunicorn/uvicorn/BentoML worker fork), are dropped in a forked child, and stop at
:meth:`Monitor.shutdown` (also registered with ``atexit``).

>>> from mlmon_middleware import Monitor, MonitorConfig
>>> mon = Monitor(MonitorConfig(tracing=False, check_interval=0))
>>> mon.model("fraud", version="2").version
'2'
>>> mon.health()["status"]
'ok'
>>> mon.shutdown()
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, ClassVar

from mlmon_middleware import gauges
from mlmon_middleware.analyzer import Analyzer
from mlmon_middleware.config import ConfigError, MonitorConfig
from mlmon_middleware.errors import ErrorLog
from mlmon_middleware.governance.events import MonitoringEvents
from mlmon_middleware.governance.gate import ServingGate
from mlmon_middleware.health import monitor_issues
from mlmon_middleware.host import HostShare
from mlmon_middleware.instruments import MODEL_APPROVED
from mlmon_middleware.limits import MAX_NAME_CHARS, LimitHits
from mlmon_middleware.model import ModelMonitor, Record
from mlmon_middleware.options import ModelOptions
from mlmon_middleware.pipeline import Pipeline
from mlmon_middleware.reports import ModelHealth, MonitorHealth
from mlmon_middleware.shared_model import with_counts_of
from mlmon_middleware.store import open_store
from mlmon_middleware.store_writer import StoreWriter
from mlmon_middleware.telemetry import Telemetry, check_exporters
from mlmon_middleware.workers import shared_folder


class Monitor:
    """The process-wide registry of monitored models; see the module docstring.

    ``Monitor.get()`` returns the default instance that ``@monitor`` uses; create your own
    with a :class:`MonitorConfig` and pass it as ``registry=`` (tests do).
    """

    _default: ClassVar[Monitor | None] = None
    _default_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, config: MonitorConfig | None = None) -> None:
        self.config = (config or MonitorConfig()).with_env()
        check_exporters(self.config)  # a missing exporter fails now, not in the first request
        if self.store_location is not None:  # a corrupt, unwritable or unreachable log fails now, not mid-traffic
            open_store(self.store_location).close()
        self.errors = ErrorLog()
        self.limits = LimitHits()
        self.pipeline = Pipeline(self.config, self.errors)
        self._models: dict[str, ModelMonitor] = {}
        self._beyond: ModelMonitor | None = None  # the stand-in for models beyond max_models
        #: the registry's verdict on each served version (docs/governance.md, "The serving gate")
        self.gate = ServingGate(self.store_location, enforce=self.config.enforce_approval,
                                interval=self.config.check_interval or 60.0, errors=self.errors,
                                models=lambda: list(self._models.values()))
        #: alert, baseline and label events for the audit log, written by the analyzer thread
        self.audit_events = MonitoringEvents(self.store_location, self.errors)
        #: added to ``prometheus_port`` in this process (the BentoML adapter: one port per worker)
        self.port_offset: Callable[[], int] = lambda: 0
        #: the name of this worker's server among its process manager's workers, when the caller
        #: knows it (the BentoML adapter); uvicorn and gunicorn workers are detected
        self.worker_group: Callable[[], str | None] = lambda: None
        self._start_lock = threading.Lock()
        self._reset_process()
        ref = weakref.ref(self)

        def forget_in_child() -> None:
            monitor = ref()
            if monitor is not None:
                monitor._forget_process()

        os.register_at_fork(after_in_child=forget_in_child)

    def _reset_process(self) -> None:
        self._started = False
        #: whether records need the OTel context to parent their span on: False once this
        #: process's monitoring started without a tracer, and the request path then skips
        #: :meth:`current_context` (two calls); True before (the call starts monitoring)
        self.traced = True
        self._telemetry: Telemetry | None = None
        self._analyzer: Analyzer | None = None
        self._store_writer: StoreWriter | None = None
        self._host: HostShare | None = None

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

    def model(self, name: str, version: str | None = None, options: ModelOptions | None = None,
              **kwargs: Any) -> ModelMonitor:
        """The ModelMonitor of ``name``, created on first call with ``version`` and its options: a
        :class:`~mlmon_middleware.ModelOptions`, or its fields as keyword arguments."""
        settings = options or ModelOptions.create(**kwargs)  # checked even when the model exists: a typo is an error
        if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS:
            raise ConfigError(f"a model name must be a non-empty string of at most {MAX_NAME_CHARS} characters, "
                              f"got {str(name)[:MAX_NAME_CHARS + 20]!r}")
        existing = self._models.get(name)
        if existing is not None:
            if version is not None and str(version) != existing.version:
                raise ConfigError(f"model {name!r} is already monitored as version {existing.version!r}, "
                                  f"not {version!r}; one process serves one version per model name")
            return existing
        with self._start_lock:
            if name not in self._models:
                if len(self._models) >= self.config.max_models:
                    # names made from traffic must not grow series and memory without end: every model
                    # beyond the bound gets one shared stand-in that drops its records (counted)
                    if self._beyond is None:
                        self._beyond = ModelMonitor(self, "__beyond_max_models__", "unknown", admitted=False)
                    return self._beyond
                self._models[name] = ModelMonitor(self, name, "unknown" if version is None else version, settings)
                self.audit_events.watch(self._models[name])
        if self._started:
            self._models[name].start_explainer()
        return self._models[name]

    @property
    def models(self) -> dict[str, ModelMonitor]:
        return dict(self._models)

    # ----------------------------------------------------------------------------- request path
    def submit(self, record: Record) -> bool:
        """Queue a record for the pipeline (starting this process's monitoring on first use);
        False when it was dropped (counted)."""
        if not self._started:
            self._start()
        return self.pipeline.submit(record)

    def current_context(self) -> object | None:
        """The OTel context to parent our span on, or None when not tracing (cheap)."""
        telemetry = self._telemetry
        return (telemetry if telemetry is not None else self.telemetry).current_context()

    # -------------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start this process's telemetry, pipeline, analyzer, log writer and explanation workers
        now rather than at the first request (the middleware does it at ASGI lifespan startup)."""
        if not self._started:
            self._start()

    @property
    def telemetry(self) -> Telemetry:
        if not self._started:
            self._start()
        assert self._telemetry is not None
        return self._telemetry

    @property
    def store_path(self) -> str:
        """The prediction log's file (under ``store_dir``)."""
        return os.path.join(self.config.store_dir or ".", "predictions.sqlite")

    @property
    def store_location(self) -> str | None:
        """Where the prediction log is: ``store_url`` (PostgreSQL), the file under ``store_dir``, or None."""
        if self.config.store_url is not None:
            return self.config.store_url
        return self.store_path if self.config.store_dir is not None else None

    @property
    def store_writer(self) -> StoreWriter | None:
        """The prediction log's writer in this process, when ``store_dir`` or ``store_url`` is set."""
        if not self._started:
            self._start()
        return self._store_writer

    def _start(self) -> None:
        """Start telemetry and the threads in this process (lazily: after any fork)."""
        with self._start_lock:
            if self._started:
                return
            config = self.config
            if config.prometheus_port:
                config = dataclasses.replace(config, prometheus_port=config.prometheus_port + self.port_offset())
            self._host = self._share()
            try:
                self._telemetry = Telemetry(config, flush=self.flush, observe=self.observe,
                                            merged=None if self._host is None else self._host.collect)
                if self.store_location is not None:
                    self._store_writer = StoreWriter(
                        open_store(self.store_location), interval=self.config.store_interval,
                        max_queue=self.config.store_queue_size,
                        retention=(self.config.store_max_age, self.config.store_max_rows),
                        on_drop=lambda n: self.errors.report("store_queue_full", count=n,  # one per row dropped
                                                             message="logged predictions dropped: the log's queue is full"),
                        on_error=lambda exc: self.errors.report("store", exc))
                self.pipeline.start(self._telemetry, self._store_writer)
                if self.config.check_interval > 0:
                    self._analyzer = Analyzer(self.check_all, self.config.check_interval, final=lambda: self.audit_events.write(
                        list(self._models.values()), final=True))
                for model in self._models.values():
                    model.start_explainer()
                if self._host is not None:
                    self._host.start(self._telemetry.registry)
                self.gate.start()
            except BaseException:  # a half start must not keep the lead, a metrics port, nor its switch interval enabled
                self.pipeline.stop()
                if self._host is not None:
                    self._host.lock.release()
                if self._telemetry is not None:
                    self._telemetry.shutdown()
                self._host = self._telemetry = None
                raise
            self._started = True
            self.traced = self._telemetry.tracer is not None
            atexit.register(self.shutdown)

    def _share(self) -> HostShare | None:
        """The share with the other workers of this server, when there are any (see
        :mod:`~mlmon_middleware.host`); a folder that cannot be used leaves this worker alone."""
        config = self.config
        try:
            folder = shared_folder(config, self.worker_group())
            if folder is None:
                return None
            return HostShare(folder, models=lambda: list(self._models.values()),
                             errors=self.errors,
                             generation=self._generation, flush=self.pipeline.flush, share_interval=config.share_interval,
                             capacity=config.reservoir_size, per_worker=config.metrics_per_worker)
        except OSError as exc:
            self.errors.report("share", exc, "the workers' shared folder cannot be used: this worker counts alone")
            return None

    def _generation(self) -> object:
        """A value that changes whenever this worker's counts change (records, labels, checks)."""
        models = list(self._models.values())
        return (self.pipeline.ingested, self.errors.counts(), self.limits.counts(),
                [(sum(m.counters.labels().values()), m.checker.last_run) for m in models])

    @property
    def host(self) -> HostShare | None:
        """What this worker shares with the other workers of its server (None when alone)."""
        return self._host

    def flush(self) -> None:
        """Process every queued record now (the pipeline thread calls this periodically)."""
        self.pipeline.flush()

    def check_all(self) -> None:
        """Run every model's check (the analyzer thread calls this), then append the monitoring
        events to the audit log (:mod:`~mlmon_middleware.governance.events`); failures are
        counted. Of the workers of one server only the leader checks, over all of their rows."""
        host = self._host
        if host is None or host.leader:
            self._check_models(host)
        self.audit_events.write(list(self._models.values()))

    def _check_models(self, host: HostShare | None) -> None:
        with host.one_round() if host is not None else contextlib.nullcontext():  # one window request for all models
            for model in list(self._models.values()):
                try:
                    model.check_now()
                except Exception as exc:
                    self.errors.report("analysis", exc)
        if host is not None:
            try:
                host.publish_results()
            except Exception as exc:
                self.errors.report("share", exc)

    def unapproved(self, model: str, version: str) -> str:
        """Why the registry does not approve ``model`` ``version`` for serving ("" when it does
        or does not govern it): the serving gate's last verdict, for the checks' alert."""
        return self.gate.unapproved(model, version)

    def observe(self, name: str) -> gauges.Observations:
        """Values of the observable instrument ``name`` across models (read at collection)."""
        if name == MODEL_APPROVED:
            return self.gate.observations()
        return gauges.observe(name, list(self._models.values()), self.errors, self.limits)

    def issues(self) -> list[str]:
        """What is wrong with the monitoring, in words (health's ``issues``)."""
        issues = monitor_issues(self._models, self.errors.counts(), check_interval=self.config.check_interval,
                                now=time.time(), last=self.errors.last_kinds(), ack_max_age=self.config.ack_max_age,
                                recorded=self.audit_events.attention)
        return issues + self.gate.issues() + (self._telemetry.problems if self._telemetry is not None else [])

    def status(self) -> str:
        """``"ok"``, or ``"degraded"`` once monitoring failed or has an issue: health's
        ``status``, all a probe needs, without building the rest."""
        return "ok" if not self.errors.counts() and not self.issues() else "degraded"

    def health(self, private: bool = True) -> MonitorHealth:
        """Models, counts, window fill and recent monitoring errors (``/mlmon/health``).
        ``private=False`` leaves out what only the service's operators should see: the process
        id, the log's path and the error messages (which may quote inputs)."""
        self.flush()
        errors, issues = self.errors.counts(), self.issues()
        telemetry = self._telemetry
        health: MonitorHealth = {
            "status": "ok" if not errors and not issues else "degraded",
            "issues": issues,
            "instance_id": None if telemetry is None else telemetry.instance_id,
            "queue": len(self.pipeline),
            "pipeline_longest_hold": round(self.pipeline.longest_hold, 6),
            # rows waiting for the prediction log (grows while a failing write is retried)
            "log_queue": None if self._store_writer is None else len(self._store_writer),
            "metrics_port": None if telemetry is None else telemetry.prometheus_port,
            "token_required": bool(self.config.api_token),
            "prediction_log_enabled": self.store_location is not None,
            "models": self._models_health(private),
            "monitor_errors": errors,
            "limit_hits": self.limits.counts(),
            "workers": None if self._host is None else self._host.workers(private),
            "serving_gate": self.gate.health(),
        }
        if private:
            health["pid"] = os.getpid()
            health["prediction_log"] = None if self.config.store_dir is None else self.store_path  # never the URL
            health["last_errors"] = self.errors.recent()
        return health

    def _models_health(self, private: bool) -> dict[str, ModelHealth]:
        """Every model's health; with workers sharing, its counts are every worker's."""
        healths = {name: m.health(private) for name, m in self._models.items()}
        if self._host is not None:
            for name, counts in self._host.counts().items():
                if name in healths:
                    with_counts_of(healths[name], counts, self.config.reservoir_size)
        return healths

    def shutdown(self) -> None:
        """Flush what is queued, stop the threads, the explanation workers and our exporters."""
        if not self._started:
            return
        if self._analyzer is not None:
            self._analyzer.stop()
        self.gate.stop()
        self.audit_events.close()
        self.pipeline.stop()
        for model in self._models.values():
            model.stop_explainer()
        if self._store_writer is not None:
            self._store_writer.close()  # writes what is queued: a clean shutdown loses nothing
        if self._host is not None:
            self._host.stop()  # publishes the final counts for the other workers' totals
        if self._telemetry is not None:
            self._telemetry.shutdown()
        self._reset_process()
        atexit.unregister(self.shutdown)

    def _forget_process(self) -> None:
        """In a forked child: drop the parent's threads, exporters and queue; start afresh on use."""
        if self._host is not None:
            self._host.lock.forget()  # the parent leads, not this child
        self._reset_process()  # the parent's SQLite connection and exporters must not be used here
        self.gate.after_fork()
        self.audit_events.after_fork()
        self.pipeline.forget()
        self.errors.after_fork()
        self.limits.after_fork()
        for model in self._models.values():
            model.after_fork()
        self._start_lock = threading.Lock()

