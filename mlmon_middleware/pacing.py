"""Pacing: background threads hand the GIL back to the serving thread within about 100 µs.

CPython's GIL is handed over on request only every ``sys.getswitchinterval()`` (5 ms): a
background thread that works for 2 ms while the event loop waits delays every request by up
to 2 ms (measured before pacing: in-process p99.9 12× bare). Two ways to keep that short:

* :class:`SwitchInterval`: while a background thread works (the pipeline's flushes, the
  checks, the workers' sharing, the log's writes, OTLP metric exports), the interpreter's
  switch interval is lowered (to ``MonitorConfig.switch_interval``, 100 µs by default), so a
  thread that waits for the GIL usually gets it that soon (a switch waits for the running
  bytecode: a long C call is not cut short), and the work runs on without a pause when none
  waits. Not covered: a scrape of the metrics port (prometheus_client's own thread) and the
  OpenTelemetry SDK's span exports, which run under the interpreter's interval. The
  pipeline's pace points then only measure (:meth:`Pacer.mark`).
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
    """The interpreter's switch interval, lowered while mlmon's background threads work: each
    running pipeline calls :meth:`enable` with its monitor's interval (:meth:`disable` ends
    it), and background work runs inside :meth:`working`, which lowers the interval to the
    shortest enabled one for as long as any thread works, then puts back the one from before,
    unless something else changed it meanwhile.

    Lowered only while the work lasts, not for as long as monitoring runs: the rest of the
    time the app's threads keep the interpreter's interval, and a sync endpoint's pool threads,
    which compete for the GIL among themselves, hand it over fifty times less often (measured
    under wrk with a sync endpoint computing for about 1 ms, one and three workers, two runs:
    0.90–0.95 of bare's requests/s when the interval stayed short throughout, 0.96–1.01 this
    way; docs/benchmarks.md). A thread that was already waiting for the GIL read the old
    interval (up to 5 ms) when it started waiting: the thread that lowers the interval then
    lets go of the GIL and the core once (``os.sched_yield``), so that a waiter woken by the
    release takes the GIL, and its next wait reads the short interval.

    >>> original = sys.getswitchinterval(); sys.setswitchinterval(0.005)
    >>> switching = SwitchInterval()
    >>> token = switching.enable(1e-4)
    >>> with switching.working():
    ...     round(sys.getswitchinterval() * 1e6)
    100
    >>> sys.getswitchinterval()
    0.005
    >>> switching.disable(token)
    >>> sys.setswitchinterval(original + 1e-7)  # the interpreter truncates to whole µs
    """

    def __init__(self) -> None:
        self._saved = 0.0  # the interval before the current work began
        self._lowered: float | None = None  # the interval set, while it is in force
        self._forget()
        # no fork in the middle of a change (the child would keep a short interval for good)
        os.register_at_fork(before=lambda: self._lock.acquire(), after_in_parent=lambda: self._lock.release(),
                            after_in_child=self._forget)

    def _forget(self) -> None:
        # a forked child has none of the parent's pipelines or working threads
        self._put_back()
        self._lock = threading.RLock()  # reentrant: a signal handler may do work while its thread holds it
        self._enabled: dict[object, float] = {}  # per running pipeline's token, its interval (0: none asked)
        self._working = 0  # threads inside working() in this process
        self._pid = os.getpid()

    def _put_back(self) -> None:
        """The interval from before the work began, unless something else changed it meanwhile."""
        if self._lowered is not None and sys.getswitchinterval() == self._lowered:
            _set(self._saved)
        self._lowered = None

    def enable(self, interval: float) -> object:
        """Work inside :meth:`working` runs under at most ``interval`` seconds (0: left alone)
        until :meth:`disable` with the token returned."""
        token = object()
        with self._lock:
            self._enabled[token] = interval
        return token

    def disable(self, token: object) -> None:
        """Ends an :meth:`enable` (a second time, from two shutdowns at once: nothing to end)."""
        with self._lock:
            self._enabled.pop(token, None)

    @contextlib.contextmanager
    def working(self) -> Iterator[None]:
        """A background thread's work: under the shortest enabled interval until the last
        thread working leaves (see the class docstring)."""
        pid, lowered_here = os.getpid(), False
        with self._lock:  # counted before the try: the finally never ends an entry not counted
            self._working += 1
            if self._working == 1 and self._lowered is None:  # (not lowered: a put-back may be under way)
                self._saved = sys.getswitchinterval()
                target = min((i for i in self._enabled.values() if i > 0), default=0.0)
                if 0 < target < self._saved:
                    _set(target)
                    self._lowered = sys.getswitchinterval()  # as the interpreter keeps it
                    lowered_here = True
        try:
            if lowered_here:
                _yield()  # a thread already waiting for the GIL takes it, and waits later under the short interval
            yield
        finally:
            with self._lock:
                if pid == self._pid:  # not in a child forked meanwhile: its count started afresh
                    self._working -= 1
                    if self._working == 0:
                        self._put_back()


def _yield() -> None:
    """Let go of the GIL and of the core for a moment: ``os.sched_yield`` (about 1 µs; the
    waiter woken by the release runs), else a zero sleep (on Linux it sleeps the timer slack,
    about 50 µs)."""
    if hasattr(os, "sched_yield"):
        os.sched_yield()
    else:  # pragma: no cover (Windows)
        time.sleep(0)


def _set(seconds: float) -> None:
    """``sys.setswitchinterval``, rounded to the whole µs the interpreter keeps (it truncates:
    100 µs set as is would come back as 99)."""
    sys.setswitchinterval(round(seconds * 1e6) / 1e6 + 1e-7)


#: the process's one: every pipeline enables its interval there, and background work runs in its ``working()``
switching = SwitchInterval()
