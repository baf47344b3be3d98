"""Bounds on what a client controls, and the tally of how often they were hit.

Everything a request can make larger (field names, category values, the width of an inferred
schema, model names, feedback bodies, label values, on-demand checks) has a bound, so that memory
and work stay a function of configuration, never of traffic. The fixed bounds are here; those a
deployment may want to change are :class:`~mlmon_middleware.MonitorConfig` fields
(``max_features``, ``max_models``, ``max_feedback_bytes``, ``refresh_interval``). Bounds hit on
the capture path are capture errors (``mlmon_capture_errors_total{reason}``: ``too_wide``,
``name_too_long``, ``value_truncated``); the others are counted here and exported as
``mlmon_limit_hits_total{limit}``. Text a client sends that is not valid Unicode is counted on
the capture path too (``invalid_text``, :func:`is_valid_text`).

>>> hits = LimitHits()
>>> hits.hit("feedback_body", "a 3 MB body")
>>> hits.counts()
{'feedback_body': 1}
>>> bounded_category("x" * 300)[-20:]
'xxxxxxxx…#07791d26ef'
"""

from __future__ import annotations

import collections
import hashlib
import logging
import threading
import time
from collections.abc import Iterable

logger = logging.getLogger("mlmon_middleware")

#: longest field (feature) name taken into an inferred schema or the unmonitored-field list
MAX_NAME_CHARS = 128
#: longest category value kept as it is; longer ones keep this many characters and a hash
MAX_CATEGORY_CHARS = 256
#: capture-error reasons of input over a bound: after a batch with any, the pipeline gives the
#: memory the originals held back to the system (:func:`~mlmon_middleware.memory.give_back`)
OVERSIZED = frozenset({"too_wide", "name_too_long", "value_truncated"})
#: largest ``actual`` of one feedback item, as JSON
MAX_LABEL_BYTES = 4096
#: most items in one feedback body
MAX_FEEDBACK_ITEMS = 10_000
#: largest body of a registry step, a registration or an alert acknowledgement
MAX_GOVERNANCE_BYTES = 256 * 1024

#: longest JSON of a logged prediction's features, or of its prediction; a longer one is logged
#: cut (at most :data:`MAX_LOGGED_FIELDS` fields and about this many characters, each text value
#: at :data:`MAX_CATEGORY_CHARS` characters)
MAX_LOGGED_CHARS = 65_536
#: bytes of request and response bodies captured by path that the pipeline's queue holds at most
MAX_QUEUED_BODY_BYTES = 256 << 20
#: most fields of a logged prediction's features (or prediction) that were over :data:`MAX_LOGGED_CHARS`
MAX_LOGGED_FIELDS = 1_000

LIMITS = ("models", "feedback_body", "feedback_items", "label_value", "refresh_rate", "governance_body", "logged_row")


def bounded_category(value: str) -> str:
    """``value`` itself when short enough; otherwise its first :data:`MAX_CATEGORY_CHARS`
    characters, ``…#`` and 10 hex digits of its BLAKE2b hash, so that long values stay
    distinct (two different ones are practically never merged) while holding bounded memory."""
    return _bounded(value, MAX_CATEGORY_CHARS)


def bounded_name(name: str) -> str:
    """A field name cut like :func:`bounded_category`, at :data:`MAX_NAME_CHARS` characters."""
    return _bounded(name, MAX_NAME_CHARS)


def _bounded(text: str, limit: int) -> str:
    if not text.isascii():
        text = valid_text(text)
    if len(text) <= limit:
        return text
    digest = hashlib.blake2b(text.encode(), digest_size=5).hexdigest()
    return f"{text[:limit]}…#{digest}"


def is_valid_text(texts: Iterable[str]) -> bool:
    """Whether every one of ``texts`` is valid Unicode, that UTF-8 can hold. JSON's ``"\\ud800"``
    escape gives Python a lone surrogate, which no writer downstream (orjson, SQLite, the
    exposition) accepts: such text is counted (``invalid_text``) and left out, or made valid by
    :func:`valid_text`. One C pass over the texts joined.

    >>> is_valid_text(["fr", "é", "😀"]), is_valid_text(["fr", "\\ud800"])
    (True, False)
    """
    try:
        "".join(texts).encode()
    except UnicodeEncodeError:
        return False
    return True


def valid_text(text: str) -> str:
    """``text`` with each lone surrogate written out as its escape (``\\ud800`` becomes the six
    characters ``\\``, ``u``, ``d``, ``8``, ``0``, ``0``): valid text that keeps distinct values
    distinct.

    >>> valid_text("fr\\udfff") == "fr\\\\udfff", valid_text("été")
    (True, 'été')
    """
    return text.encode("utf-8", "backslashreplace").decode()


class LimitHits:
    """Thread-safe count of bounds hit, by limit, with a warning at most once a minute per limit."""

    def __init__(self, log_interval: float = 60.0) -> None:
        self._log_interval = log_interval
        self._lock = threading.Lock()
        self._counts: collections.Counter[str] = collections.Counter()
        self._last_logged: dict[str, float] = {}

    def hit(self, limit: str, detail: str) -> None:
        """Count one hit of ``limit`` (one of :data:`LIMITS`: a closed set, so the exported series
        stay few); ``detail`` goes into the log line."""
        if limit not in LIMITS:
            raise ValueError(f"unknown limit {limit!r}; limits: {LIMITS}")
        now = time.monotonic()
        with self._lock:
            self._counts[limit] += 1
            last = self._last_logged.get(limit)
            should_log = last is None or now - last >= self._log_interval
            if should_log:
                self._last_logged[limit] = now
        if should_log:
            logger.warning("mlmon: limit %r hit (%s); counted in mlmon_limit_hits_total{limit=%r}",
                           limit, detail, limit)

    def after_fork(self) -> None:
        """In a forked child: a fresh lock (a parent's thread may have held it at the fork)."""
        self._lock = threading.Lock()

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)
