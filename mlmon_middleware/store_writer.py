"""The prediction log's writer: a thread that inserts the pipeline's rows in batches, off the
request path and off the pipeline's own thread, retrying what fails for a while.

>>> import tempfile, os
>>> from mlmon_middleware.store import LogRow, SQLiteStore
>>> folder = tempfile.mkdtemp()
>>> writer = StoreWriter(SQLiteStore(os.path.join(folder, "log.db")), interval=60)
>>> writer.put([LogRow("p1", "m", "1", 1.0, "{}", "{}", None)])
>>> writer.flush(), len(writer)
(True, 0)
>>> writer.close()
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Callable, Iterable

from mlmon_middleware.pacing import switching
from mlmon_middleware.store import LogRow, PredictionStore


class StoreWriter:
    """A thread that inserts queued rows in batches every ``interval`` seconds.

    ``put`` never blocks: past ``max_queue`` rows the oldest are dropped and ``on_drop`` is
    called with their number. ``flush`` writes everything queued now (labels call it first, so a
    label never misses a prediction still in the queue). A batch that cannot be written for a
    reason the store calls transient (``store.transient_errors``: the database locked past its
    busy timeout, a full disk, a lost connection to PostgreSQL) goes back to the front of the queue and
    is retried, the thread backing off from ``interval`` to ``MAX_BACKOFF`` seconds; rows are
    dropped (and counted) only when the queue's bound is reached meanwhile. A write refused for
    another reason (a value the database cannot store) goes row by row, dropping (and counting) only
    the rows that cannot be written.
    """

    MAX_BACKOFF = 30.0  # seconds between retries of a failing write, at most
    CLOSE_RETRIES = 10.0  # seconds ``close`` keeps retrying before it gives the rest up (counted)

    def __init__(self, store: PredictionStore, *, interval: float = 0.5, max_queue: int = 100_000,
                 retention: tuple[float | None, int | None] = (None, None), retention_every: float = 60.0,
                 on_drop: Callable[[int], None] = lambda n: None,
                 on_error: Callable[[BaseException], None] = lambda exc: None) -> None:
        self.store = store
        self._queue: collections.deque[LogRow] = collections.deque(maxlen=max_queue)
        self._interval = interval
        self._retention = retention
        self._retention_every = retention_every
        self._on_drop = on_drop
        self._on_error = on_error
        self._flush_lock = threading.Lock()
        self._queue_lock = threading.Lock()  # put, flush and a requeue see the bound the same way
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mlmon-store", daemon=True)
        self._thread.start()

    def put(self, rows: Iterable[LogRow]) -> None:
        rows = rows if isinstance(rows, list) else list(rows)
        with self._queue_lock:
            evicted = len(self._queue) + len(rows) - (self._queue.maxlen or 0)  # beyond the bound (always set)
            if evicted > 0:
                self._on_drop(evicted)  # the extend below evicts the oldest rows
            self._queue.extend(rows)

    def __len__(self) -> int:
        return len(self._queue)

    def flush(self) -> bool:
        """Write everything queued now; False when the write failed for a reason that may pass
        (the database locked, out of space or out of reach: the rows are queued again). A batch refused for
        any other reason is written row by row, and the rows that cannot be are dropped and
        counted: one bad row never blocks the log."""
        with self._flush_lock:
            with self._queue_lock:
                batch = list(self._queue)
                self._queue.clear()
            if not batch:
                return True
            try:
                self.store.write(batch)
            except self.store.transient_errors as exc:  # locked, disk full, connection lost: worth retrying
                self._requeue(batch)
                self._on_error(exc)
                return False
            except Exception:
                self._one_by_one(batch)
            return True

    def _one_by_one(self, batch: list[LogRow]) -> None:
        """Write a refused batch row by row; each row that cannot be written is reported."""
        for row in batch:
            try:
                self.store.write([row])
            except Exception as exc:
                self._on_error(exc)

    def _requeue(self, batch: list[LogRow]) -> None:
        """Put a failed batch back in front of what was queued since, as far as the bound allows."""
        with self._queue_lock:
            queue = self._queue
            room = (queue.maxlen or len(batch)) - len(queue)
            keep = batch[len(batch) - room:] if room < len(batch) else batch  # the newest of the batch
            if len(keep) < len(batch):
                self._on_drop(len(batch) - len(keep))
            if keep:
                queue.extendleft(reversed(keep))

    def _run(self) -> None:
        last_retention = time.monotonic()
        delay = self._interval
        while not self._stop.wait(delay):
            with switching.working() if self._queue else contextlib.nullcontext():  # idle: nothing to shorten
                written = self.flush()
            delay = self._interval if written else min(delay * 2, self.MAX_BACKOFF)
            if any(v is not None for v in self._retention) and time.monotonic() - last_retention >= self._retention_every:
                last_retention = time.monotonic()
                try:
                    self.store.apply_retention(*self._retention)
                except Exception as exc:
                    self._on_error(exc)

    def close(self) -> None:
        """Write what is queued and stop (a clean shutdown loses nothing): a failing write is
        retried for up to ``CLOSE_RETRIES`` seconds; what still cannot be written is counted."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        deadline = time.monotonic() + self.CLOSE_RETRIES
        while not self.flush() and time.monotonic() < deadline:
            time.sleep(0.2)
        if self._queue:
            self._on_drop(len(self._queue))
            self._queue.clear()
        self.store.close()
