"""Module-level explainers for the tests: worker processes import them by name."""

import time

import numpy as np


def halves(rows):
    """Contributions of half each feature, base 1."""
    return np.ones(len(rows)), np.asarray(rows) * 0.5


def slow(rows):
    time.sleep(1.0)
    return np.zeros(len(rows)), np.zeros_like(np.asarray(rows))


def broken(rows):
    raise RuntimeError("explainer failure")
