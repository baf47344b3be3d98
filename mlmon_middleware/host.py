"""One server, many workers, one truth: what the workers of a server share, and how.

:class:`HostShare` runs in every worker of a server that has a shared folder
(:func:`~mlmon_middleware.workers.shared_folder`). A thread of its own, every
:data:`TICK` seconds:

* takes the lead if nobody holds it (:class:`~mlmon_middleware.workers.LeaderLock`): the
  leader alone runs the scheduled checks, so alerts and webhooks fire once per server;
* answers a request for windows (:meth:`~mlmon_middleware.exchange.Exchange.ask`)
  with this worker's rows, so a check (the leader's, or an on-demand one through any worker)
  sees every worker's rows: :meth:`HostShare.check_inputs` merges them, newest first, into one
  window of the configured size, and sums the workers' counts;
* publishes this worker's counters every ``share_interval`` while they change, and at once
  when a scrape or health through another worker asks for them (pipeline flushed first), so
  that a scrape through any worker sums every worker, exactly up to the last request answered
  (:meth:`HostShare.collect`);
* in a worker that does not lead, adopts the leader's last check of each model (reports, alert
  states), so every route answers the same through every worker, and a worker that takes over
  the lead goes on from the same alert states (no second notification for a firing alert).

Nothing of this runs on the request path; a failure is counted (``stage="share"``) and the
worker goes on on its own data.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from mlmon_middleware.analyzer import Counts
from mlmon_middleware.errors import ErrorLog
from mlmon_middleware.exchange import STOPPED, Exchange
from mlmon_middleware.merge import families, merged_counts, merged_families
from mlmon_middleware.pacing import switching
from mlmon_middleware.reports import WorkersHealth
from mlmon_middleware.reservoir import WindowSnapshot, rows_since
from mlmon_middleware.schema import FeatureSchema
from mlmon_middleware.shared_model import (
    MergedInputs,
    Model,
    adopt,
    attributions_of,
    counts_of,
    result_of,
    windows_of,
)
from mlmon_middleware.workers import LeaderLock, Worker

TICK = 0.1  # seconds between looks at the shared folder (a stat or two)
ANSWER_TIMEOUT = 3.0  # seconds a check waits for the other workers' windows
SCRAPE_WAIT = 1.0  # seconds a scrape waits for the other workers' fresh counters
HEALTH_WAIT = 0.3  # the same for health (a load balancer's probe must not time out behind a stuck worker)


class HostShare:
    """See the module docstring. ``models`` lists the worker's models; ``generation`` changes
    when its counts do (publishing is skipped while it does not); ``flush`` runs its pipeline."""

    def __init__(self, folder: str, *, models: Callable[[], Sequence[Model]], errors: ErrorLog,
                 generation: Callable[[], object], flush: Callable[[], None], share_interval: float,
                 capacity: int, per_worker: bool) -> None:
        self.me = Worker.current()
        self.exchange = Exchange(folder, self.me)
        self.lock = LeaderLock(folder)
        self._models, self.errors = models, errors
        self._registry: CollectorRegistry | None = None
        self.share_interval, self.capacity, self.per_worker = share_interval, capacity, per_worker
        self._answered = 0  # the last request for windows answered
        self._answered_states = 0  # the last request for counters answered
        self._last_state: dict[str, Any] | None = None
        self._health_asked = -share_interval
        self._published = 0.0
        self._generation = generation  # grows when something worth publishing changed
        self._flush = flush  # ingests what the worker's pipeline holds
        self._published_generation: object = None
        self._adopted: dict[str, int] = {}
        self._baselines: dict[str, str] = {}  # the warm-up baseline published per model (its mark)
        self._publishing = threading.Lock()
        self._round: dict[str, dict[str, Any]] | None = None  # the windows of a round of scheduled checks
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mlmon-share", daemon=True)
        self.lock.try_acquire()

    def start(self, registry: CollectorRegistry) -> None:
        """Start the thread, publishing the metrics of this worker's own ``registry``."""
        self._registry = registry
        self._thread.start()

    @property
    def leader(self) -> bool:
        """Whether this worker leads (runs the scheduled checks)."""
        return self.lock.held

    # --------------------------------------------------------------------------------- thread
    def _run(self) -> None:
        while not self._stop.wait(TICK):
            try:
                with switching.working():
                    self.tick()
            except Exception as exc:
                self.errors.report("share", exc)

    def tick(self) -> None:
        """One look at the shared folder (see the module docstring)."""
        led = self.leader
        if not self.lock.try_acquire() or not led:
            self.adopt()  # a worker taking the lead first takes the old leader's last word
        asked = self.exchange.asked("windows")
        if asked != self._answered:
            self._answered = asked
            self.publish_windows(asked)
        wanted = self.exchange.asked("states")
        now = time.monotonic()
        if wanted > self._answered_states:
            self.publish_state(wanted)
        elif now - self._published >= self.share_interval and self._generation() != self._published_generation:
            self.publish_state()

    def stop(self) -> None:
        """Stop the thread, publish the final counts (nothing counted is lost), remove this
        worker's windows (its recent inputs) and step down."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        try:
            self.publish_state()
            self.exchange.answer(STOPPED)  # a scrape through another worker does not wait for this one
            self.exchange.withdraw_windows()
        except Exception as exc:
            self.errors.report("share", exc)
        self.lock.release()

    # ------------------------------------------------------------------------------- counters
    def own_state(self) -> dict[str, Any]:
        """This worker's metric families and model counts. The families first: collecting them
        runs the pipeline, and the counts must include what it just ingested."""
        metrics = [] if self._registry is None else families(self._registry)
        return {"metrics": metrics, "models": {m.name: counts_of(m) for m in self._models()}}

    def publish_state(self, token: int = 0) -> dict[str, Any]:
        """Collect and write this worker's counters, answering request ``token`` if any; one
        thread at a time (a scrape and the share thread), so that a state written is never older
        than one written before it. Answering a request, the pipeline is flushed first (the
        request just answered counts), and a worker whose counts did not change since its last
        state writes that one again with the token: requests that come faster than the share
        thread's :data:`TICK` cost each worker one answer per tick, a cheap one when idle."""
        with self._publishing:
            if token:
                self._flush()
            generation = self._generation()
            if token and generation == self._published_generation and self._last_state is not None:
                state = self._last_state
            else:
                state = self.own_state()
            token = max(token, self._answered_states)  # a later state answers every earlier request
            self.exchange.publish_state(state, token)
            self._published, self._published_generation = time.monotonic(), generation
            self._answered_states, self._last_state = token, state
        return state

    def _health_token(self) -> int:
        """Health asks the other workers for fresh counts at most once per ``share_interval``
        (a load balancer probing every worker every second must not make each flush and publish
        for every probe); between asks it reads what they last published (0: no wait)."""
        now = time.monotonic()
        if now - self._health_asked < self.share_interval:
            return 0
        self._health_asked = now
        return self.exchange.ask("states")

    def collect(self) -> list[Any]:
        """The server's metric families: this worker's, fresh, with every other worker's last.
        When the folder fails, this worker's own (counted: ``stage="share"``)."""
        own: dict[str, Any] = {}
        try:
            token = self.exchange.ask("states")
            own = self.publish_state(token)
            shared = self.exchange.states(token, SCRAPE_WAIT)
        except Exception as exc:
            self.errors.report("share", exc, "a scrape answered with this worker's counts alone")
            own = own or self.own_state()
            return merged_families({self.me.key: own}, {}, leader=self.me.key, per_worker=self.per_worker)
        shared.live[self.me.key] = own
        return merged_families(shared.live, shared.exited, leader=self.lock.leader_key(), per_worker=self.per_worker)

    def counts(self) -> dict[str, dict[str, Any]]:
        """Per model, its counts over every worker (see :func:`~mlmon_middleware.merge.merged_counts`),
        from one read of the folder; this worker's own when the folder fails (counted)."""
        mine = {"models": {m.name: counts_of(m) for m in self._models()}}
        try:
            shared = self.exchange.states(self._health_token(), HEALTH_WAIT)
        except Exception as exc:
            self.errors.report("share", exc, "health counted this worker alone")
            return {name: merged_counts({self.me.key: mine}, {}, name) for name in mine["models"]}
        shared.live[self.me.key] = mine
        return {name: merged_counts(shared.live, shared.exited, name) for name in mine["models"]}

    def workers(self, private: bool) -> WorkersHealth:
        """Who shares (health's ``workers``); ``private`` adds the leader's pid and the folder."""
        try:
            live = {k for k in self.exchange.states().live if Worker.from_key(k).alive()} | {self.me.key}
        except Exception as exc:
            self.errors.report("share", exc)
            live = {self.me.key}
        health: WorkersHealth = {"running": len(live), "leading": self.leader}
        if private:
            leader = self.lock.leader_key()
            health["leader_pid"] = None if leader is None else Worker.from_key(leader).pid
            health["folder"] = self.exchange.folder
        return health

    # -------------------------------------------------------------------------------- windows
    def publish_windows(self, token: int) -> None:
        self.exchange.publish_windows(token, {m.name: windows_of(m) for m in self._models()})

    def _answers(self) -> dict[str, dict[str, Any]]:
        """The other running workers' windows, asked for now (every model's at once)."""
        try:
            others = {k for k in self.exchange.states().live if k != self.me.key and Worker.from_key(k).alive()}
            return self.exchange.windows(self.exchange.ask("windows"), ANSWER_TIMEOUT, others) if others else {}
        except Exception as exc:  # the folder failed: this worker's rows alone, counted
            self.errors.report("share", exc, "a check saw this worker's rows alone")
            return {}

    @contextlib.contextmanager
    def one_round(self) -> Iterator[None]:
        """The scheduled checks of every model: the other workers are asked for their windows
        once, for all models, not once per model."""
        self._round = self._answers()
        try:
            yield
        finally:
            self._round = None

    def check_inputs(self, model: Model, since: float | None) -> MergedInputs:
        """The inputs of a check of ``model`` over every worker: this worker's windows and the
        others' (asked for now, waiting up to :data:`ANSWER_TIMEOUT`), merged, and the counts."""
        answers = self._round if self._round is not None else self._answers()
        own = model.window_snapshot(since)
        schema, output_schema = model.schema, model.output_schema
        features, outputs, attributions = [own["features"]], [own["outputs"]], [attributions_of(model, since)]
        stale = 0
        for answer in answers.values():
            theirs = answer.get(model.name)
            if theirs is None:
                continue
            schema = schema or _schema(theirs.get("schema"))
            output_schema = output_schema or _schema(theirs.get("output_schema"))
            stale += not theirs.get("fresh", False)
            if _schema(theirs.get("schema")) == schema:
                features.append(rows_since(theirs["features"], since))
                attributions.append(rows_since(theirs.get("attributions") or {}, since))
            if _schema(theirs.get("output_schema")) == output_schema:
                outputs.append(rows_since(theirs["outputs"], since))
        total = self.counts().get(model.name, {})
        counts = Counts({"ok": total.get("predictions", {}).get("ok", 0), "error": total.get("predictions", {}).get("error", 0)},
                        total.get("capture_errors", {}), total.get("feature_errors", {}))
        return MergedInputs(newest(features, self.capacity), newest(outputs, self.capacity), counts,
                            newest(attributions, self.capacity), schema, output_schema, 1 + len(answers), stale)

    # -------------------------------------------------------------------------------- results
    def publish_results(self) -> None:
        """The leader: publish each model's last check for the other workers."""
        for m in self._models():
            result = result_of(m)
            if result is None:
                continue
            mark = result["warmup_baseline"]
            if mark is not None and m.baseline is not None and self._baselines.get(m.name) != mark:
                self.exchange.publish_baseline(m.name, m.baseline.to_json())  # before the result that names it
                self._baselines[m.name] = mark
            self.exchange.publish_result(m.name, result)

    def adopt(self) -> None:
        """A worker that does not lead: take the leader's newer results."""
        for m in self._models():
            stamp = self.exchange.result_changed(m.name)
            if stamp and stamp != self._adopted.get(m.name):
                result = self.exchange.result(m.name)
                if result is not None:
                    adopt(m, result, functools.partial(self.exchange.baseline, m.name))
                    self._adopted[m.name] = stamp


def newest(snapshots: Sequence[WindowSnapshot], capacity: int) -> WindowSnapshot:
    """The ``capacity`` newest rows of several windows, in arrival order. Each worker's window
    holds its newest rows, so the newest of their union are the server's newest."""
    parts = [s for s in snapshots if s and len(s.get("time", ()))]
    if not parts:
        return snapshots[0] if snapshots else {}
    if len(parts) == 1 and len(parts[0]["time"]) <= capacity:
        return parts[0]
    times = np.concatenate([p["time"] for p in parts])
    order = np.argsort(times, kind="stable")[-capacity:]
    return {column: np.concatenate([p[column] for p in parts])[order] for column in parts[0]}


def _schema(kinds: Mapping[str, str] | None) -> FeatureSchema | None:
    return None if not kinds else FeatureSchema(list(kinds), list(kinds.values()))
