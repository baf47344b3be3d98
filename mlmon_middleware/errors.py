"""Failures inside monitoring: counted, remembered, logged once per kind.

Monitoring must never break the service it watches, so every stage that can fail
(capture, ingest, export, ...) reports here instead of raising. The counts feed
``mlmon.monitor.errors{stage}`` and ``/mlmon/health``; the log line for a given
``(stage, exception type)`` is written at most once per ``log_interval`` seconds so
that a failure on every request cannot flood the service's logs.

>>> log = ErrorLog(log_interval=60.0)
>>> try:
...     1 / 0
... except ZeroDivisionError as exc:
...     log.report("ingest", exc)
>>> log.counts()
{'ingest': 1}
>>> log.recent()[0]["error"]
'ZeroDivisionError: division by zero'
"""

from __future__ import annotations

import collections
import logging
import threading
import time

logger = logging.getLogger("mlmon_middleware")


class ErrorLog:
    """Thread-safe tally of monitoring failures by stage, with rate-limited logging."""

    def __init__(self, log_interval: float = 60.0, keep: int = 20) -> None:
        self._log_interval = log_interval
        self._lock = threading.Lock()
        self._counts: collections.Counter[str] = collections.Counter()
        self._recent: collections.deque[dict[str, object]] = collections.deque(maxlen=keep)
        self._last_logged: dict[tuple[str, str], float] = {}
        self._last_kind: dict[str, str] = {}  # per stage, the last failure's kind (exception type or our message)

    def report(self, stage: str, exc: BaseException | None = None, message: str = "", count: int = 1) -> None:
        """Count ``count`` failures of ``stage`` (one each: a record, a row); log it unless the
        same kind (``stage`` and the exception's type, or ``message``) was logged recently."""
        text = f"{type(exc).__name__}: {exc}" if exc is not None else message
        now = time.time()
        kind = (stage, type(exc).__name__ if exc is not None else message)
        with self._lock:
            self._counts[stage] += count
            self._last_kind[stage] = kind[1]
            self._recent.append({"stage": stage, "error": text, "time": now})
            last = self._last_logged.get(kind)
            should_log = last is None or now - last >= self._log_interval
            if should_log:
                self._last_logged[kind] = now
        if should_log:
            logger.warning("mlmon: %s failed (%s); serving continues, failures are counted in "
                           "mlmon_monitor_errors_total{stage=%r}", stage, text, stage,
                           exc_info=exc if exc is not None and logger.isEnabledFor(logging.DEBUG) else None)

    def after_fork(self) -> None:
        """In a forked child: a fresh lock (a parent's thread may have held it at the fork)."""
        self._lock = threading.Lock()

    def counts(self) -> dict[str, int]:
        """Failures so far by stage."""
        with self._lock:
            return dict(self._counts)

    def last_kinds(self) -> dict[str, str]:
        """Per stage, the kind of its last failure: the exception's type, or the message
        monitoring itself wrote (never an exception's text, which may quote inputs)."""
        with self._lock:
            return dict(self._last_kind)

    def recent(self) -> list[dict[str, object]]:
        """The last few failures, oldest first: ``{"stage", "error", "time"}``."""
        with self._lock:
            return list(self._recent)
