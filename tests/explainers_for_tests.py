"""Module-level explainers for the tests: worker processes import them by name."""

import time

import numpy as np


def halves(rows):
    """Contributions of half each feature, base 1."""
    return np.ones(len(rows)), np.asarray(rows) * 0.5


def niceness(rows):
    """How low the worker runs: contributions of the lowest and the highest nice value among its
    threads (on Linux a nice value is per thread), then the calling thread's, then zeros."""
    import os

    tasks = "/proc/self/task"
    values = [os.getpriority(os.PRIO_PROCESS, int(t)) for t in os.listdir(tasks)] if os.path.isdir(tasks) else [os.nice(0)]
    out = np.zeros(np.shape(rows))
    out[:, :3] = min(values), max(values), os.nice(0)
    return np.zeros(len(rows)), out


def slow(rows):
    time.sleep(1.0)
    return np.zeros(len(rows)), np.zeros_like(np.asarray(rows))


def broken(rows):
    raise RuntimeError("explainer failure")


def fragile(rows):
    """Halves, except that a first feature of 666 kills the worker and 777 hangs it."""
    import os

    if rows[0][0] == 666:
        os._exit(1)
    if rows[0][0] == 777:
        time.sleep(3600)
    return halves(rows)


def _explode():
    raise RuntimeError("cannot be loaded in a worker")


class Unloadable:
    """An explainer that pickles in the serving process but fails to load in the worker (as a
    model whose class lives in a ``__main__`` without an import guard does under spawn)."""

    def __reduce__(self):
        return (_explode, ())

    def __call__(self, rows):
        return halves(rows)
