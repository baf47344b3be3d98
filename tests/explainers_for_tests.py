"""Module-level explainers for the tests: worker processes import them by name."""

import time

import numpy as np


def halves(rows):
    """Contributions of half each feature, base 1."""
    return np.ones(len(rows)), np.asarray(rows) * 0.5


def niceness(rows):
    """Contributions of the worker's own nice value, to see how low it runs."""
    import os

    return np.zeros(len(rows)), np.full(np.shape(rows), float(os.nice(0)))


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
