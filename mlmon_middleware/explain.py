"""SHAP explanations of single predictions, computed in worker processes, under a deadline.

``@monitor(..., explain=Explain(model=clf))`` (or a ready shap explainer, or a callable returning
contributions) makes explanations available per request (``X-MLMon-Explain: true`` or
``?explain=true``), for a sampled share of requests, or always. They are computed in a small
pool of worker *processes*: shap's TreeSHAP holds the GIL for the whole call, so threads would
stall an async server; a process also keeps the non-thread-safe Kernel/Permutation explainers to
one call at a time. shap is imported only in the workers, which warm up (numba compiles on first
use) as soon as the serving process starts; the serving process never imports shap. XGBoost's
and LightGBM's native contributions are the exception: their C code lets go of the GIL, so they
run in threads of the serving process, where an explanation costs what the call costs instead of
a trip to another process and back (measured: 4.5× the call in a worker process; see
docs/benchmarks.md).

``Explain(model=...)`` picks the fastest exact method for the model: XGBoost's and LightGBM's
native contributions; path-dependent TreeSHAP for other tree ensembles; the linear explainer for
linear models (background: the baseline's sample); Permutation otherwise. Contributions are in
the explained output's own space: probabilities for random forests, log-odds (margin) for
gradient boosting, XGBoost, LightGBM and logistic regression; ``base_value`` + their sum is that
output (tested to 1e-6).

This module holds the options (:class:`Explain`) and the worker pool of one model
(:class:`ExplanationService`); :mod:`mlmon_middleware.explain_request` the request/response side,
:mod:`mlmon_middleware.explain_worker` what runs in the workers.

>>> f = lambda rows: rows * 0.5  # a callable returning contributions
>>> Explain(f, when=0.1).sampled(0.05), Explain(f, when="always").wanted(None)
(True, True)
>>> text("risk", [("debt_ratio", 0.7, 0.30), ("credit_score", 580.0, 0.20)])
'risk raised mostly by debt_ratio=0.7 (+0.30) and credit_score=580 (+0.20)'
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
import os
import pickle
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mlmon_middleware.config import ConfigError
from mlmon_middleware.explain_worker import build_explainer, native_contributions, worker_explain, worker_init

ExplainerOutput = tuple[np.ndarray, np.ndarray, str]  # (base values, contributions, method name)


@dataclasses.dataclass(frozen=True)
class Explain:
    """How and when to explain one model's predictions.

    Parameters:
        method: ``"auto"`` (needs ``model``), a ready shap explainer, or a callable taking an
            (n × features) array and returning contributions, or ``(base values, contributions)``.
        model: the fitted model, for ``"auto"``.
        background: rows for the linear and permutation explainers and for the baseline's
            attributions (default: the baseline's sample).
        when: ``"request"`` (header or query), ``"always"``, or a share of requests in (0, 1].
        top: features listed in the response.
        key: where the explanation goes in a JSON object response.
        deadline: seconds an explanation may take before the response goes without it.
        max_in_flight: explanations running at once; past it, requests go without (``busy``).
        workers: worker processes.
        label: the word that starts the one-line text ("risk raised mostly by ...").
        nice: how far below the serving process the worker processes run once warm (added to
            their nice value, every thread's; POSIX only; 0 keeps them level). Explanations are
            extra work: when the CPU is short, plain requests go first and explanations wait
            (past the deadline they answer ``timeout``); on an idle core a niced worker runs as
            fast as any. Threads of the serving process (native XGBoost and LightGBM
            contributions) keep its priority.
    """

    method: Any = "auto"
    model: Any = None
    background: Any = None
    when: str | float = "request"
    top: int = 5
    key: str = "explanation"
    deadline: float = 0.25
    max_in_flight: int = 4
    workers: int = 1
    label: str = "prediction"
    nice: int = 10

    def __post_init__(self) -> None:
        if self.method == "auto" and self.model is None:
            raise ConfigError("Explain(method='auto') needs model=<the fitted model>")
        if not (self.when in ("request", "always") or (isinstance(self.when, float) and 0 < self.when <= 1)):
            raise ConfigError(f"when must be 'request', 'always' or a share in (0, 1], got {self.when!r}")
        if self.deadline <= 0 or self.max_in_flight < 1 or self.workers < 1 or self.top < 1:
            raise ConfigError("deadline must be > 0 and max_in_flight, workers and top >= 1")
        if isinstance(self.nice, bool) or not isinstance(self.nice, int) or not 0 <= self.nice <= 19:
            raise ConfigError(f"nice must be a whole number in 0..19 (how far below the serving process the "
                              f"explanation workers run), got {self.nice!r}")

    def wanted(self, asked: bool | None) -> bool:
        """Whether to explain a request that asked (True), asked not to (False) or said nothing."""
        if asked is not None and self.when == "request":
            return asked
        return self.when == "always" or asked is True

    def sampled(self, draw: float) -> bool:
        return isinstance(self.when, float) and draw < self.when


def text(label: str, top: Sequence[tuple[str, Any, float]]) -> str:
    """One line: which features raised or lowered the output most."""
    if not top:
        return f"{label}: no contributions"
    direction = "raised" if sum(c for _, _, c in top) >= 0 else "lowered"
    same = [t for t in top if (t[2] >= 0) == (direction == "raised")][:2] or top[:1]
    parts = [f"{name}={_short(value)} ({contribution:+.2f})" for name, value, contribution in same]
    return f"{label} {direction} mostly by {' and '.join(parts)}"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class ExplanationService:
    """The worker pool of one model, its in-flight cap, its warm-up and its recovery.

    Explanations fail loudly and recover: every failure is reported to ``report`` (counted, and
    logged at most once a minute per kind: :class:`~mlmon_middleware.errors.ErrorLog`); a pool
    whose worker died is replaced; a worker still busy ``hung_after`` seconds after it was given a
    row is killed and replaced; a pool that does not warm up within ``WARMUP_SECONDS``, or that
    keeps dying (``MAX_RESTARTS`` within ``RESTART_WINDOW``), is given up: ``problem`` says why
    (health lists it) and requests answer ``unavailable`` instead of waiting.
    """

    WARMUP_SECONDS = 120.0
    MAX_RESTARTS = 5
    RESTART_WINDOW = 600.0

    def __init__(self, spec: Explain, feature_names: Sequence[str], background: np.ndarray | None,
                 report: Callable[[str, BaseException | None], None] = lambda message, exc: None) -> None:
        self.spec = spec
        self.names = tuple(feature_names)
        self.background = background
        self.report = report
        self.hung_after = max(10 * spec.deadline, 5.0)
        self._lock = threading.Lock()
        self._in_flight: dict[concurrent.futures.Future[ExplainerOutput], float] = {}  # future -> monotonic start
        self._pool: concurrent.futures.Executor | None = None
        # native XGBoost/LightGBM contributions let go of the GIL: threads here, not processes
        self.in_threads = spec.method == "auto" and native_contributions(spec.model) is not None
        self._explain: Callable[[np.ndarray], ExplainerOutput] | None = None  # in threads: the explainer
        self._restarts: list[float] = []
        self.warm = threading.Event()
        self.problem: str | None = None  # why explanations are off, when they are
        self._closed = False
        self.baseline_attributions: np.ndarray | None = None

    def start(self) -> None:
        """Start the workers and warm them up (and compute the baseline's mean |SHAP|) off the
        request path; never waits for them."""
        if self._closed:
            return
        pool: concurrent.futures.Executor
        if self.in_threads:
            self._explain = None  # built anew by the warm-up: a failed rebuild must not keep an old one
            pool = self._pool = _DaemonThreads(self.spec.workers)
        else:
            payload = pickle.dumps({"method": self.spec.method, "model": self.spec.model, "background": self.background,
                                    "parent": os.getpid(), "nice": self.spec.nice})
            pool = self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.spec.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=worker_init, initargs=(payload,))
        self.warm.clear()
        background = self.background
        real = background is not None and len(background) > 0
        # Always one job: it starts the worker, imports shap and compiles (numba) before any request.
        rows = np.asarray(background[:200], dtype=float) if background is not None and real else np.zeros((1, len(self.names)))

        def warmed(done: concurrent.futures.Future[ExplainerOutput]) -> None:
            if self._pool is not pool:  # a pool replaced meanwhile
                return
            exc = done.exception() if not done.cancelled() else None
            if isinstance(exc, concurrent.futures.process.BrokenProcessPool):  # the worker died starting
                self._give_up(f"the explanation workers could not start: {type(exc).__name__}: {exc}", exc)
            elif self.in_threads and self._explain is None:
                self._give_up(f"the explainer could not be built: {type(exc).__name__}: {exc}", exc)
            elif exc is not None:
                if self.names:  # (with no features known yet, the warm-up row is empty and may fail)
                    self.report(f"the explainer failed on its warm-up rows: {type(exc).__name__}: {exc}", exc)
            elif real and not done.cancelled():
                self.baseline_attributions = np.abs(done.result()[1]).mean(axis=0)
            self.warm.set()

        def late() -> None:
            if self._pool is pool and not self.warm.is_set():
                self._give_up(f"the explanation workers did not warm up within {self.WARMUP_SECONDS:g} s", None)

        watchdog = threading.Timer(self.WARMUP_SECONDS, late)
        watchdog.daemon = True
        watchdog.start()
        try:
            pool.submit(self._warm_up if self.in_threads else worker_explain, rows).add_done_callback(warmed)
        except Exception as exc:  # the pool could not even start its process
            self._give_up(f"the explanation workers could not start: {type(exc).__name__}: {exc}", exc)

    def submit(self, row: np.ndarray) -> concurrent.futures.Future[ExplainerOutput] | str:
        """A future of ``(base, contributions, method)`` for one row, or why there is none:
        ``"busy"`` (warming up, or ``max_in_flight`` running) or ``"unavailable"``."""
        if self.problem is not None:
            return "unavailable"
        pool = self._pool
        if pool is None:
            return "busy"
        if not self.warm.is_set():
            return "busy"
        now = time.monotonic()
        with self._lock:
            hung = any(now - started > self.hung_after for future, started in self._in_flight.items()
                       if not future.done())
        if hung and self.in_threads:  # a thread cannot be killed: no more work for it to pile up behind
            self._give_up(f"an explanation ran over {self.hung_after:g} s in a thread, which cannot be stopped; "
                          f"explanations are off", None)
            return "unavailable"
        if hung:
            self.restart(f"an explanation ran over {self.hung_after:g} s: its worker was killed and replaced")
            return "busy"
        future: concurrent.futures.Future[ExplainerOutput] | None
        with self._lock:
            if len(self._in_flight) >= self.spec.max_in_flight:
                return "busy"
            try:
                future = pool.submit(self._job(), row.reshape(1, -1))
            except concurrent.futures.process.BrokenProcessPool:
                future = None
            else:
                self._in_flight[future] = now
        if future is None:
            self.restart("an explanation worker died: the pool was replaced")
            return "busy"
        future.add_done_callback(self._release)
        return future

    def _warm_up(self, rows: np.ndarray) -> ExplainerOutput:
        """In threads: build the explainer here (not on the request path) and explain the warm-up rows."""
        self._explain = build_explainer(self.spec.method, self.spec.model, self.background)
        return self._explain(rows)

    def _job(self) -> Callable[[np.ndarray], ExplainerOutput]:
        """What explains a row: the worker process's explainer, or in threads ours."""
        if not self.in_threads:
            return worker_explain
        if self._explain is None:
            raise RuntimeError("the explainer could not be built (see the warm-up's error)")
        return self._explain

    def _release(self, future: concurrent.futures.Future[ExplainerOutput]) -> None:
        with self._lock:
            self._in_flight.pop(future, None)

    def failed(self, exc: BaseException) -> None:
        """An explanation ended in ``exc``: a dead worker gets its pool replaced; any other
        error is reported (the explainer itself raised)."""
        if isinstance(exc, concurrent.futures.process.BrokenProcessPool):
            self.restart("an explanation worker died: the pool was replaced")
        else:
            self.report(f"explanation failed: {type(exc).__name__}: {exc}", exc)

    def restart(self, reason: str) -> None:
        """Kill the workers and start a new pool (given up after too many restarts). Requests
        answer ``busy`` from now on; the killing and spawning happen in a thread of their own,
        never on the request path that noticed the failure."""
        now = time.monotonic()
        with self._lock:
            pool, self._pool = self._pool, None
            if pool is not None:
                self.warm.clear()  # until the new pool is warm
            self._in_flight.clear()
            self._restarts = [t for t in self._restarts if now - t < self.RESTART_WINDOW] + [now]
            too_many = len(self._restarts) > self.MAX_RESTARTS
        if pool is None:
            return  # another caller is restarting it
        threading.Thread(target=self._replace, args=(pool, reason, too_many), name="mlmon-explain-restart",
                         daemon=True).start()

    def _replace(self, pool: concurrent.futures.Executor, reason: str, too_many: bool) -> None:
        _kill(pool)
        if too_many:
            self._give_up(f"the explanation workers failed {len(self._restarts)} times in "
                          f"{self.RESTART_WINDOW:g} s (last: {reason}); explanations are off", None)
            return
        self.report(reason, None)
        self.start()

    def _give_up(self, problem: str, exc: BaseException | None) -> None:
        self.problem = problem
        self.report(problem, exc)
        pool, self._pool = self._pool, None
        if pool is not None:
            _kill(pool)
        self.warm.set()

    def describe(self, row: np.ndarray, result: tuple[np.ndarray, np.ndarray, str],
                 names: Sequence[str] | None = None) -> dict[str, Any]:
        """The explanation with every feature's contribution (kept for attribution drift); what
        goes into the response and the log is :func:`shown` of it. ``names``: the row's features
        when the service started before the schema was known."""
        base, contributions, method = result
        names = tuple(names) if names else self.names
        values = contributions[0]
        if len(values) != len(names):
            raise ValueError(f"the explainer returned {len(values)} contributions for {len(names)} features")
        order = np.argsort(-np.abs(values))[: self.spec.top]
        top = [(names[i], float(row[i]), float(values[i])) for i in order]
        return {"base_value": float(base[0]), "prediction": float(base[0] + values.sum()), "method": method,
                "top": [{"feature": n, "value": v, "contribution": c} for n, v, c in top],
                "text": text(self.spec.label, top), "contributions": values.tolist()}

    def close(self) -> None:
        self._closed = True  # a restart under way starts nothing
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


class _DaemonThreads(concurrent.futures.Executor):
    """A pool of daemon threads. ``ThreadPoolExecutor``'s threads are joined when the interpreter
    exits, so one native call that never returns would hold the server's exit; these are not."""

    def __init__(self, workers: int) -> None:
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name="mlmon-explain", daemon=True) for _ in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._jobs.put((future, fn, args, kwargs))
        return future

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn, args, kwargs = job
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as exc:
                    future.set_exception(exc)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if cancel_futures:  # what has not started is cancelled; the threads stop after their current call
            try:
                while True:
                    job = self._jobs.get_nowait()
                    if job is not None:
                        job[0].cancel()
            except queue.Empty:
                pass
        for _ in self._threads:
            self._jobs.put(None)
        if wait:
            for thread in self._threads:
                thread.join()


def _kill(pool: concurrent.futures.Executor) -> None:
    """Stop a pool now, its busy worker processes included (``shutdown`` alone waits for a hung
    one; a thread cannot be stopped: a hung one is left to finish)."""
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        try:
            process.kill()
        except Exception:  # already gone
            pass
    pool.shutdown(wait=False, cancel_futures=True)
