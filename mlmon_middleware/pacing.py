"""Pacing: background threads hand the GIL back to the serving thread every few tens of µs.

CPython's GIL is handed over on request only every ``sys.getswitchinterval()`` (5 ms): a
background thread that works for 2 ms while the event loop waits delays every request by up
to 2 ms (measured before pacing: in-process p99.9 12× bare). Our background threads therefore
call a :class:`Pacer` between small pieces of work; once ``budget`` seconds have passed since
the thread last let go, it sleeps ``pause`` seconds, which releases the GIL long enough for a
waiting thread to take it (a zero sleep often does not: the sleeper takes it straight back).

Code that may run in a background thread but also elsewhere (a drift check: in the analyzer's
thread, or for a caller of ``check_now``) calls :func:`pace_point`, which paces only where a
thread has set its pacer with :func:`paced`.

The longest stretch of work between two releases is kept (``longest``, in the thread's CPU
time: wall time would also count the waits for the GIL that other threads' work causes), so
benchmarks and health can show what the serving thread may have to wait for.

>>> pace = Pacer(budget=0.001, pause=0.0)
>>> for _ in range(3):
...     pace()
>>> 0 <= pace.longest < 1
True
"""

from __future__ import annotations

import asyncio
import contextlib
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

