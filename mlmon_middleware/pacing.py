"""Pacing: background threads hand the GIL back to the serving thread within about 100 µs.

CPython's GIL is handed over on request only every ``sys.getswitchinterval()`` (5 ms): a
background thread that works for 2 ms while the event loop waits delays every request by up
to 2 ms (measured before pacing: in-process p99.9 12× bare). Two ways to keep that short:

* :class:`SwitchInterval`: while the pipeline thread lives, the interpreter's switch interval
  is lowered (to ``MonitorConfig.switch_interval``, 100 µs by default), so a thread that waits
  for the GIL usually gets it that soon (a switch waits for the running bytecode: a long C call
  is not cut short), and the pipeline runs on without a pause when none waits. Its pace points
  then only measure (:meth:`Pacer.mark`).
* a :class:`Pacer` that sleeps: once ``budget`` seconds have passed since the thread last let
  go, it sleeps ``pause`` seconds, which releases the GIL long enough for a waiting thread to
  take it (a zero sleep often does not: the sleeper takes it straight back). Every pause costs
  a sleep, two context switches and the caches refilled, whether a thread waited or not:
  under wrk that was 47–78 µs of server CPU per request more than the short interval
  (docs/benchmarks.md). The analyzer's checks use it, and so does the pipeline with
  ``switch_interval=0``.

Code that may run in a background thread but also elsewhere (a drift check: in the analyzer's
thread, or for a caller of ``check_now``) calls :func:`pace_point`, which paces only where a
thread has set its pacer with :func:`paced`.

The longest stretch of work between two pace points is kept (``longest``, in the thread's CPU
time: wall time would also count the waits for the GIL that other threads' work causes). With
a sleeping pacer it is the longest the thread held the GIL; under a short switch interval the
interpreter hands the GIL over inside stretches too, so it is an upper bound.

>>> pace = Pacer(budget=0.001, pause=0.0)
>>> for _ in range(3):
...     pace()
>>> 0 <= pace.longest < 1
True
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator

BUDGET = 50e-6  # work between two releases of the GIL (seconds)
PAUSE = 50e-6  # how long the GIL is left to others; the kernel's timer slack adds ~50 µs


class Pacer:
    """Call it between small pieces of a background thread's work; see the module docstring."""

    __slots__ = ("budget", "pause", "longest", "_since", "_cpu_since")

    def __init__(self, budget: float = BUDGET, pause: float = PAUSE) -> None:
        self.budget = budget
        self.pause = pause
        self.longest = 0.0  # seconds of CPU: the longest stretch of work between two releases
        self.restart()

    def restart(self) -> None:
        """The thread has just (re)taken the GIL after waiting: a stretch starts now."""
        self._since = time.perf_counter()
        self._cpu_since = time.thread_time()

    def rest(self) -> None:
        """The thread is about to wait (and let go of the GIL): the stretch ends here."""
        held = time.thread_time() - self._cpu_since
        if held > self.longest:
            self.longest = held

    def __call__(self) -> None:
        if time.perf_counter() - self._since >= self.budget:  # the cheap clock decides; the CPU clock measures
            self.rest()
            time.sleep(self.pause)
            self.restart()

    def mark(self) -> None:
        """A pace point that never sleeps (under a short switch interval): the stretch since
        the last one is measured and a new one starts."""
        self.rest()
        self.restart()


def no_pace() -> None:
    """The pacer of work that runs in the caller's own thread (a flush on demand): it never sleeps."""


_local = threading.local()


@contextlib.contextmanager
def paced(pacer: Pacer | None = None) -> Iterator[Pacer]:
    """Within this block, :func:`pace_point` in this thread calls ``pacer`` (default: the
    thread's pacer if it has one, else a new one; in a thread running an event loop, one that
    never pauses).

    >>> with paced(Pacer(budget=0.0, pause=0.0)) as pacer:
    ...     pace_point()
    >>> pacer.longest >= 0, pace_point()
    (True, None)
    """
    previous = getattr(_local, "pacer", None)
    if pacer is None and previous is None and asyncio._get_running_loop() is not None:
        pacer = Pacer(budget=float("inf"))  # in an event loop's thread a pause would stall the loop itself
    pacer = pacer or previous or Pacer()
    _local.pacer = pacer
    pacer.restart()
    try:
        yield pacer
    finally:
        pacer.rest()
        _local.pacer = previous


def pace_point() -> None:
    """A point between two pieces of work where this thread's pacer (if any) may pause."""
    pacer = getattr(_local, "pacer", None)
    if pacer is not None:
        pacer()


class SwitchInterval:
    """The interpreter's switch interval, lowered while monitoring runs: :meth:`lower` by each
    pipeline that starts (in any :class:`~mlmon_middleware.Monitor` of the process), put back
    by :meth:`restore` after the last one stops, unless something else changed it meanwhile.

    Lowered for as long as the pipeline thread lives, not only while it works: a thread that
    starts waiting for the GIL reads the interval then, so an interval lowered once the
    pipeline holds the GIL would come too late for a thread already waiting (up to 5 ms).

    >>> original = sys.getswitchinterval(); sys.setswitchinterval(0.005)
    >>> switching = SwitchInterval()
    >>> switching.lower(1e-4); round(sys.getswitchinterval() * 1e6)
    100
    >>> switching.restore(); sys.getswitchinterval()
    0.005
    >>> sys.setswitchinterval(original + 1e-7)  # the interpreter truncates to whole µs
    """

    def __init__(self) -> None:
        self._saved = 0.0  # the interval before the first lower
        self._lowered: float | None = None  # the interval set, while it is in force
        self._forget()
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        # a forked child has none of the parent's pipelines: its own lower it again when they start
        self._put_back()
        self._lock = threading.Lock()
        self._users = 0

    def _put_back(self) -> None:
        """The interval from before the first lower, unless something else changed it meanwhile."""
        if self._lowered is not None and sys.getswitchinterval() == self._lowered:
            _set(self._saved)
        self._lowered = None

    def lower(self, interval: float) -> None:
        """At most ``interval`` seconds from now on (0: left alone); each call needs one
        :meth:`restore`."""
        with self._lock:
            self._users += 1
            if self._users == 1:
                self._saved = sys.getswitchinterval()
            if 0 < interval < sys.getswitchinterval():
                _set(interval)
                self._lowered = sys.getswitchinterval()  # as the interpreter keeps it

    def restore(self) -> None:
        """Ends one :meth:`lower`; after the last, the interval is what it was before the first."""
        with self._lock:
            if self._users == 0:  # one restore too many (two shutdowns at once): nothing to end
                return
            self._users -= 1
            if self._users == 0:
                self._put_back()


def _set(seconds: float) -> None:
    """``sys.setswitchinterval``, rounded to the whole µs the interpreter keeps (it truncates:
    100 µs set as is would come back as 99)."""
    sys.setswitchinterval(round(seconds * 1e6) / 1e6 + 1e-7)


#: the process's one: every pipeline lowers and restores through it
switching = SwitchInterval()
