"""The drift verdict's calibration, on a seeded, fast subset of benchmarks/calibration.py.

The benchmark prints the full tables (docs/drift.md); these tests hold the same properties with
binomial margins: under no drift the default policy flags a check with any feature at most about
0.5 % of the time (at most 7 alarms in 300 checks: above that is unlikely at 1 %, and all but
impossible at 0.5 %); its power is at least the "Failing Loudly" baseline's on the same data; and
a trivial shift at a large window is at most "info".
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))

import calibration  # noqa: E402

from mlmon_middleware.drift.policy import RANK, DriftPolicy  # noqa: E402


@pytest.mark.parametrize("family", ["gaussian", "student_t3", "poisson2", "binary_0.05", "zero_inflated",
                                    "categorical_50", calibration.MIX])
def test_no_drift_checks_alarm_at_most_7_of_300_times(family):
    rng = np.random.default_rng(sum(map(ord, family)))
    setup = calibration.Setup(family, 20, 5_000, rng)
    alarms = calibration.false_alarms(family, 20, 5_000, 1_000, 300, rng, DriftPolicy(), setup)
    assert alarms <= 7


@pytest.mark.parametrize("drift", list(calibration.DRIFTS))
@pytest.mark.parametrize("n", [200, 1_000])
def test_power_is_at_least_the_failing_loudly_baseline(drift, n):
    rng = np.random.default_rng(n + sum(map(ord, drift)))
    ours, theirs = calibration.power(drift, n, 5_000, 20, 60, rng, DriftPolicy())
    assert ours >= theirs - 3  # of 60 checks: the same test at the same level, Holm over Bonferroni


def test_a_trivial_shift_at_a_large_window_is_at_most_info():
    rng = np.random.default_rng(2)
    setup = calibration.Setup("gaussian", 5, 100_000, rng)
    for _ in range(5):
        window = setup.draw(rng, 50_000, drift={0: calibration.shift(0.02)})
        assert RANK[setup.verdicts(window, DriftPolicy())[setup.schema.names[0]]] <= RANK["info"]
