"""Giving freed memory back to the operating system after oversized input.

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

>>> freed = give_back()  # True where glibc's malloc_trim ran
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
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
