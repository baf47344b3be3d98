"""Prediction ids: random 128-bit ids as 32 hex characters, cheap enough for the request path.

>>> a, b = new_prediction_id(), new_prediction_id()
>>> len(a), a != b, int(a, 16) >= 0
(32, True, True)
"""

from __future__ import annotations

import os
import threading


class _PredictionIds:
    """Ids from the OS's CSPRNG, 256 at a time.

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
