"""The pipeline: the bounded queue between the request path and everything else.

The capture layers hand :class:`~mlmon_middleware.model.Record`\\ s to :meth:`Pipeline.submit`
(O(1): an append to a deque, or a count when the queue is full: ``queue_size`` records, and
:data:`~mlmon_middleware.limits.MAX_QUEUED_BODY_BYTES` of bodies captured by path). A thread of the
:class:`Pipeline` drains the queue every ``flush_interval`` seconds, or at once when a burst
fills ``flush_batch`` records, and :func:`~mlmon_middleware.ingest.ingest` turns each model's
records, in one direction, into: counts and timings (telemetry), feature and prediction rows in
the model's windows, per-bin counts, prediction-log rows for the log writer, and spans. The
process runs under a short switch interval while the pipeline (or another of mlmon's background
threads) works (``MonitorConfig.switch_interval``, 100 µs; :class:`~mlmon_middleware.pacing.SwitchInterval`):
a request that waits for the GIL usually gets it within about that long, and the pipeline never
pauses when none waits. With ``switch_interval=0`` it paces itself instead
(:class:`~mlmon_middleware.pacing.Pacer`): it sleeps after every few tens of µs of work, and
behind, its stretches grow with the backlog (up to :data:`MAX_BUDGET`): dropping records would
be worse than a slower tail. ``longest_hold`` is the longest stretch of work between two pace
points. After a batch that held input over a capture bound (megabyte
values, say), it hands the memory they held back to the system (:mod:`~mlmon_middleware.memory`),
at most once per :data:`TRIM_INTERVAL`: a client sending long values all the time costs one
trim a second, not one per batch.

>>> from mlmon_middleware import Monitor, MonitorConfig
>>> mon = Monitor(MonitorConfig(tracing=False))
>>> _ = mon.model("toy").record({"x": 1.0}, {"prediction": 1})
>>> len(mon.pipeline), mon.flush(), len(mon.pipeline)
(1, None, 0)
>>> mon.shutdown()
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable

from mlmon_middleware.config import MonitorConfig
from mlmon_middleware.errors import ErrorLog
from mlmon_middleware.ingest import ROW_CELLS, UNPAUSED_ROW_CELLS, ingest
from mlmon_middleware.limits import MAX_QUEUED_BODY_BYTES
from mlmon_middleware.memory import give_back
from mlmon_middleware.model import ModelMonitor, Record
from mlmon_middleware.pacing import BUDGET, Pacer, no_pace, switching
from mlmon_middleware.payload import RawBody
from mlmon_middleware.store_writer import StoreWriter
from mlmon_middleware.telemetry import Telemetry

MAX_BUDGET = 2e-3  # seconds of work between two pauses when far behind (switch_interval=0)
BACKLOG_RECORDS = 256  # queued records that add BUDGET to a stretch when behind (switch_interval=0)
TRIM_INTERVAL = 1.0  # seconds between two heap trims at most (a trim owed waits for the next flush)


def _drained(queue: collections.deque[Record], n: int, pace: Callable[[], None]) -> tuple[dict[ModelMonitor, list[Record]], int]:
    """The first ``n`` queued records, taken off the queue and grouped by model, and the bytes
    of the bodies they hold."""
    batch: dict[ModelMonitor, list[Record]] = {}
    held = 0
    for i in range(n):
        record = queue.popleft()
        batch.setdefault(record.model, []).append(record)
        if type(record.inputs) is RawBody:
            held += _body_bytes(record)
        if i & 255 == 255:
            pace()
    return batch, held


def _body_bytes(record: Record) -> int:
    """The bytes of the request and response bodies a record captured by path holds."""
    return sum(len(raw.body) for raw in (record.inputs, record.outputs) if type(raw) is RawBody and raw.body)


class Pipeline:
    """The bounded queue and the thread that drains it; see the module docstring.

    ``start`` (in the serving process, after any fork) gives it the telemetry and the log writer;
    until then records wait in the queue. Failures are counted in ``errors``, never raised.
    """

    def __init__(self, config: MonitorConfig, errors: ErrorLog) -> None:
        self.config = config
        self.errors = errors
        self._wake_at = min(config.flush_batch, config.queue_size)
        self.ingested = 0  # records ingested in this process (others read it to see that something changed)
        self._reset()

    def _reset(self) -> None:
        self._queue: collections.deque[Record] = collections.deque()
        self._bodies = 0  # bytes of the bodies queued records captured by path hold
        self._bodies_lock = threading.Lock()
        self._lock = threading.Lock()  # one flush at a time
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._telemetry: Telemetry | None = None
        self._writer: StoreWriter | None = None
        self._pacer = Pacer()
        self._trim_due, self._trimmed = False, -math.inf  # a heap trim owed after oversized input, the last one
        self._interval_token: object | None = None  # its switch interval's, while enabled (a forked child's is not)

    def __len__(self) -> int:
        return len(self._queue)

    def submit(self, record: Record) -> bool:
        """Queue ``record`` (True); when the queue is full it is dropped and counted
        (``queue_full``: False)."""
        queued = len(self._queue)
        if queued >= self.config.queue_size:
            self.errors.report("queue_full", message="record dropped: the pipeline queue is full")
            return False
        if type(record.inputs) is RawBody and not self._hold(_body_bytes(record)):
            return False
        self._queue.append(record)
        if queued + 1 == self._wake_at:  # a burst: run the pipeline now rather than at the next interval
            self._wake.set()
        return True

    def _hold(self, size: int) -> bool:
        """Count ``size`` bytes of bodies into the queue, or drop the record (``queue_full``) when
        they would take it past ``MAX_QUEUED_BODY_BYTES``: records are bounded in number, and a
        record captured by path may hold two bodies of up to ``max_body_bytes`` each."""
        with self._bodies_lock:
            if self._bodies + size > MAX_QUEUED_BODY_BYTES:
                full = True
            else:
                self._bodies += size
                full = False
        if full:
            self.errors.report("queue_full", message=f"record dropped: its bodies would take the queue past "
                                                     f"{MAX_QUEUED_BODY_BYTES >> 20} MiB")
        return not full

    def start(self, telemetry: Telemetry, writer: StoreWriter | None) -> None:
        self._telemetry, self._writer = telemetry, writer
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="mlmon-pipeline", daemon=True)
        self._thread.start()
        if self._interval_token is None:
            self._interval_token = switching.enable(self.config.switch_interval)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.config.flush_interval)
            self._wake.clear()
            self._pacer.restart()
            self.flush()
            self._pacer.rest()

    @property
    def longest_hold(self) -> float:
        """Seconds of CPU: the longest stretch of work the pipeline thread did between two
        pace points since it started: the longest it kept the GIL with ``switch_interval=0``,
        an upper bound under a short switch interval (the interpreter hands the GIL over
        inside a stretch)."""
        return self._pacer.longest

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def flush(self) -> None:
        """Ingest every queued record now (the pipeline thread calls this periodically)."""
        telemetry = self._telemetry
        if telemetry is None:
            return
        with self._lock:
            queue = self._queue
            # Only the pipeline's own thread paces (a flush on demand runs in its caller's
            # thread). Under a short switch interval its pace points only measure. Otherwise it
            # sleeps between stretches, and a serving loop that never waits hands the GIL back
            # only when forced (every 5 ms): 50 µs of work per 5 ms would never catch up. So the
            # budget grows with the backlog (50 µs per BACKLOG_RECORDS records queued, up to
            # MAX_BUDGET): a thousand records behind, stretches of a few hundred µs; far behind,
            # 2 ms. (A unit of its own, not flush_batch: a smaller batch must not lengthen them.)
            pace: Callable[[], None] = no_pace
            if threading.current_thread() is self._thread:
                if self.config.switch_interval > 0:
                    pace = self._pacer.mark
                else:
                    backlog = len(queue) / BACKLOG_RECORDS
                    self._pacer.budget = min(MAX_BUDGET, BUDGET * max(1.0, backlog))
                    pace = self._pacer
            n = len(queue)
            self.ingested += n
            if n:
                row_cells = ROW_CELLS if pace is self._pacer else UNPAUSED_ROW_CELLS  # small pieces between pauses
                with switching.working():
                    batch, held = _drained(queue, n, pace)
                    self._trim_due |= self._ingest(batch, telemetry, pace, row_cells)
                    del batch  # the bodies go with it
                with self._bodies_lock:
                    self._bodies -= held
            now = time.monotonic()
            if self._trim_due and now - self._trimmed >= TRIM_INTERVAL:  # the batch is gone: hand its pages back
                give_back()
                self._trim_due, self._trimmed = False, now

    def _ingest(self, batch: dict[ModelMonitor, list[Record]], telemetry: Telemetry, pace: Callable[[], None],
                row_cells: int) -> bool:
        """Ingest each model's records; True when any held input over a capture bound."""
        oversized = False
        for model, records in batch.items():
            try:
                oversized |= ingest(model, records, telemetry, self._writer, pace, row_cells)
            except Exception as exc:
                self.errors.report("ingest", exc)
        return oversized

    def stop(self) -> None:
        """Stop the thread and ingest what is queued."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self.flush()
        self._telemetry = self._writer = None
        self._thread = None
        token, self._interval_token = self._interval_token, None
        if token is not None:
            switching.disable(token)

    def forget(self) -> None:
        """In a forked child: drop the parent's thread, queue and exporters."""
        self._reset()
