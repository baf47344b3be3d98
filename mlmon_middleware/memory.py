"""The process's memory: freed memory given back after oversized input; the start-up's objects
kept out of the garbage collector's way.

A hostile or broken client can send category values of megabytes or field names of hundreds of
kilobytes. The bounds (:mod:`~mlmon_middleware.limits`) keep only a short, hashed form of them,
but the parsed originals stay alive until the pipeline's next run has read them: a burst of such
requests leaves several megabyte-sized blocks freed in the middle of the C heap, where glibc's
``free`` cannot hand them back (only the top of the heap is trimmed). The server's resident
memory would then stay up by the size of the burst, although nothing uses it any more.

:func:`give_back` asks the C allocator to return every free page (glibc's ``malloc_trim(0)``,
which since glibc 2.8 releases free pages anywhere in every arena). The pipeline calls it after a
run that met a value, a name or a row over its bound, so ordinary traffic never pays for it.
``ctypes`` releases the GIL during the call: requests keep being served meanwhile. Where the C
library has no ``malloc_trim`` (musl, macOS), it does nothing and says so.

Records waiting for the pipeline hold their call's input and result, so the request path
allocates more than it frees until the next run: the collector's young generation fills and it
runs, and what it finds alive (the waiting records, the requests in flight) is promoted. Every
so many promotions CPython runs a full collection, which walks every object of the process:
modules, the app, a loaded model. Under uvicorn that took tens of ms, with the GIL held, where
bare FastAPI never ran one (``benchmarks/tail.py gc``). :func:`freeze_startup` (at the server's
start, once per process) collects once and moves what is alive then out of the collector's
reach (``gc.freeze``): a full collection then walks only what was made since (a few ms). Frozen
objects are still freed when nothing refers to them; only a reference cycle among them would
never be reclaimed.

>>> freed = give_back()  # True where glibc's malloc_trim ran
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import os
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def give_back() -> bool:
    """Return free heap pages to the operating system; False where the C library cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


_frozen_in: int | None = None  # the process that froze its start-up's objects


def freeze_startup() -> bool:
    """Collect once, then freeze every object alive (``gc.freeze``); once per process (a forked
    child freezes its own). False when this process already did.

    Run it where the objects of the start-up are made and no traffic is served yet.
    """
    global _frozen_in
    if _frozen_in == os.getpid():
        return False
    _frozen_in = os.getpid()
    gc.collect()
    gc.freeze()
    return True
