"""float32 windows: chosen only where the baseline allows it, and every statistic of a check
within 1e-6 (relative) of the same check on float64 windows."""

import collections

import numpy as np
import pandas as pd
import pytest

from mlmon_middleware import Baseline, Monitor, MonitorConfig
from mlmon_middleware.drift.engine import compare
from mlmon_middleware.reservoir import SlidingWindow
from mlmon_middleware.schema import Encoded, FeatureSchema


def columns(rng: np.random.Generator, n: int, shift: float) -> dict[str, np.ndarray]:
    """Continuous, skewed, integer, tiny-scale and partly missing features."""
    gapped = rng.normal(shift, 1, n)
    gapped[rng.random(n) < 0.2] = np.nan
    return {"normal": rng.normal(shift, 1, n), "income": rng.lognormal(10 + shift, 1, n),
            "count": rng.poisson(3 + shift, n).astype(float), "tiny": rng.normal(shift, 1, n) * 1e-6,
            "gapped": gapped}


def check_on(dtype: type, baseline: Baseline, schema: FeatureSchema, current: np.ndarray) -> dict:
    window = SlidingWindow(len(current), numeric=(current.shape[1], dtype), categorical=(0, object))
    window.extend(np.zeros(len(current)), numeric=current, categorical=np.empty((len(current), 0), dtype=object))
    return compare(baseline.features, schema, window.snapshot())


def numbers(report: dict, prefix: str = "") -> dict[str, float]:
    """Every number in a feature's report, by path."""
    out = {}
    for key, value in report.items():
        if isinstance(value, dict):
            out.update(numbers(value, f"{prefix}{key}."))
        elif isinstance(value, list):
            out.update({f"{prefix}{key}.{i}": float(v) for i, v in enumerate(value) if isinstance(v, (int, float))})
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[prefix + key] = float(value)
    return out


@pytest.mark.parametrize("seed, rows, shift", [(0, 200, 0.0), (1, 5_000, 0.05), (2, 20_000, 0.3), (3, 1_000, 1.0)])
def test_a_float32_window_gives_the_float64_statistics(seed, rows, shift):
    rng = np.random.default_rng(seed)
    reference, current = pd.DataFrame(columns(rng, 5_000, 0.0)), pd.DataFrame(columns(rng, rows, shift))
    baseline = Baseline.from_data(reference)
    assert baseline.window_dtype() == np.float32
    schema = baseline.schema
    wide = check_on(np.float64, baseline, schema, current.to_numpy())
    narrow = check_on(np.float32, baseline, schema, current.to_numpy())
    for name in schema.names:
        expected, got = numbers(wide[name]), numbers(narrow[name])
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-12), (name, key)


def test_float64_stays_where_float32_cannot_tell_values_apart():
    seconds = pd.DataFrame({"t": 1.7e9 + np.arange(1000.0), "x": np.arange(1000.0)})
    assert Baseline.from_data(seconds).window_dtype() == np.float64
    huge = pd.DataFrame({"x": [1e39, 2e39, 3e39]})
    assert Baseline.from_data(huge).window_dtype() == np.float64
    close = pd.DataFrame({"x": [1.0, 1.0 + 1e-9, 2.0]})
    assert Baseline.from_data(close).window_dtype() == np.float64


def test_a_model_windows_in_float32_and_widens_for_a_baseline_that_needs_more(tmp_path):
    rng = np.random.default_rng(0)
    mon = Monitor(MonitorConfig(tracing=False, check_interval=0))
    try:
        model = mon.model("narrow", baseline=Baseline.from_data(pd.DataFrame({"t": rng.normal(size=500)})))
        model.record(pd.DataFrame({"t": [0.1, 1e300, -np.inf, np.nan]}), np.zeros(4))
        mon.flush()
        snap = model.window.snapshot()["numeric"][:, 0]
        assert model.window.dtype("numeric") == np.float32
        f32_max = float(np.finfo(np.float32).max)
        assert snap[0] == np.float32(0.1) and snap[1] == f32_max and np.isnan(snap[2:]).all()
        model.set_baseline(Baseline.from_data(pd.DataFrame({"t": 1.7e9 + np.arange(100.0)})))
        assert model.window.dtype("numeric") == np.float64
        assert model.window.snapshot()["numeric"][:2, 0].tolist() == [float(np.float32(0.1)), f32_max]
        model.record({"t": 1.7e9 + 0.5}, 0.0)
        mon.flush()
        assert model.window.snapshot()["numeric"][-1, 0] == 1.7e9 + 0.5
    finally:
        mon.shutdown()


def test_no_baseline_means_float64():
    mon = Monitor(MonitorConfig(tracing=False, check_interval=0))
    try:
        model = mon.model("plain")
        model.record({"x": 1.0 + 1e-12}, 0.0)
        mon.flush()
        assert model.window.dtype("numeric") == np.float64 and model.window.snapshot()["numeric"][0, 0] == 1.0 + 1e-12
    finally:
        mon.shutdown()


def test_a_warmup_baseline_from_a_float32_window_sums_in_float64():
    rng = np.random.default_rng(5)
    values = (1e4 + rng.normal(size=(20_000, 1))).astype(np.float32)
    encoded = Encoded(values, np.empty((20_000, 0), dtype=object), collections.Counter())
    profile = Baseline.from_encoded(FeatureSchema(["x"]), encoded).features["x"]
    exact = values.astype(np.float64)[:, 0]
    assert profile["mean"] == pytest.approx(exact.mean(), rel=1e-12)
    assert profile["std"] == pytest.approx(exact.std(ddof=1), rel=1e-9)


def test_values_float32_cannot_store_exactly_are_judged_against_references_rounded_alike():
    """A live 0.7 is stored as 0.69999998: against a float64 minimum of 0.7 it would be out of
    range, and it would change sides of every bin edge and reference value it equals."""
    rng = np.random.default_rng(3)
    reference = pd.DataFrame({"price": np.round(rng.uniform(0.7, 5.3, 5_000), 1),
                              "rating": rng.integers(1, 6, 5_000) / 2})
    current = pd.DataFrame({"price": np.round(rng.uniform(0.7, 5.3, 2_000), 1),
                            "rating": rng.integers(1, 6, 2_000) / 2})
    baseline = Baseline.from_data(reference)
    assert baseline.window_dtype() == np.float32
    wide = check_on(np.float64, baseline, baseline.schema, current.to_numpy())
    narrow = check_on(np.float32, baseline, baseline.schema, current.to_numpy())
    for name in baseline.schema.names:
        expected, got = numbers(wide[name]), numbers(narrow[name])
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-12), (name, key)
    assert narrow["price"]["out_of_range_ratio"] == 0.0
