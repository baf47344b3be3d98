"""Drift forecasts (mlmon_middleware.drift.forecast): Sen's slope and interval against scipy, the
trend's points (disjoint windows only), the forecast on a slowly drifting stream through a real
check, the DriftForecast alert, and the exported gauge."""

import math

import numpy as np
import pytest
from scipy import stats

from mlmon_middleware import Baseline, Monitor, MonitorConfig
from mlmon_middleware.analyzer import CheckInputs
from mlmon_middleware.config import ConfigError
from mlmon_middleware.drift.forecast import DriftTrend, forecast, lag1_autocorrelations, sen_slope, sen_slopes
from mlmon_middleware.drift.policy import DriftPolicy
from mlmon_middleware.gauges import observe
from mlmon_middleware.instruments import DRIFT_FORECAST

HOUR = 3600.0


def test_sen_slope_and_its_interval_are_scipys():
    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(3, 60))
        x = np.sort(rng.uniform(0, 1e5, n))
        if trial % 4 == 0:
            x = np.round(x / 2e4) * 2e4  # ties in time
        y = rng.normal(size=n) + rng.uniform(-1e-4, 1e-4) * x
        if trial % 5 == 0:
            y = np.round(y, 1)  # ties in value
        if len(np.unique(x)) < 2:
            continue
        confidence = float(rng.uniform(0.5, 0.9999))
        ours, theirs = sen_slope(x, y, confidence), stats.theilslopes(y, x, confidence)
        assert ours == pytest.approx((theirs.slope, theirs.intercept, theirs.low_slope, theirs.high_slope),
                                     rel=1e-9, abs=1e-12)


def test_many_series_at_once_are_each_scipys():
    rng = np.random.default_rng(2)
    x = np.sort(rng.uniform(0, 1e4, 25))
    Y = rng.normal(size=(40, 25)) + np.linspace(-1e-3, 1e-3, 40)[:, None] * x
    Y[::7] = np.round(Y[::7], 1)  # some rows with ties
    ours = sen_slopes(x, Y, 0.99)
    for i, y in enumerate(Y):
        theirs = stats.theilslopes(y, x, 0.99)
        assert [v[i] for v in ours] == pytest.approx([theirs.slope, theirs.intercept, theirs.low_slope,
                                                      theirs.high_slope], rel=1e-9, abs=1e-12)


def test_the_autocorrelation_is_the_published_lag_1_estimator_and_widens_the_interval():
    rng = np.random.default_rng(1)
    for _ in range(50):
        e = rng.normal(size=int(rng.integers(5, 50)))
        c = e - e.mean()
        assert lag1_autocorrelations(e[None, :])[0] == pytest.approx(np.sum(c[1:] * c[:-1]) / np.sum(c * c), rel=1e-9)
    x = np.arange(30.0)
    noisy = 0.1 * x + rng.normal(size=30)
    (_, _, low4, high4), (_, _, low1, high1) = sen_slope(x, noisy, 0.95, 4.0), sen_slope(x, noisy, 0.95, 1.0)
    assert low4 < low1 and high4 > high1  # inflated: strictly wider
    walk = np.cumsum(rng.normal(size=30))  # a random walk wanders like a trend: its r is high
    assert forecast(x * HOUR, walk, threshold=1e9).autocorrelation > 0.5


def test_a_trend_is_fitted_only_to_checks_of_disjoint_windows_and_restarts_with_a_new_baseline():
    trend = DriftTrend(points=5, min_points=3)
    assert trend.add("b1", 10.0, 0.0, 10.0, 100, {"x": 0.1})
    assert not trend.add("b1", 15.0, 5.0, 15.0, 100, {"x": 0.9})  # half of its rows were in the last window
    assert trend.add("b1", 25.0, 11.0, 25.0, 100, {"x": 0.2})
    assert not trend.add("b1", 35.0, 26.0, 35.0, 100, {"x": 0.0}, record=False)  # a warm-up built from it
    assert not trend.add("b1", 40.0, 30.0, 40.0, 100, {"x": 0.3})  # overlaps the skipped window
    for i in range(3, 8):
        trend.add("b1", i * 10.0 + 100, i * 10.0 + 91, i * 10.0 + 100, 100, {"x": 0.1 * i})
    assert len(trend.points) == 5  # the newest
    assert trend.add("b2", 300.0, 299.0, 300.0, 100, {"x": 0.0}) and len(trend.points) == 1


def test_windows_that_shrink_are_no_trend_and_a_forecast_counts_from_now_and_streaks_by_point():
    """Under a time window with falling traffic the effect's noise floor (1/√rows) rises: the
    points of windows much smaller than the newest are left out, so no trend is read into it."""
    trend = DriftTrend(points=20, min_points=3)
    for i, rows in enumerate([5000, 4000, 3000, 2000, 1000, 500, 300, 300, 300]):
        trend.add("b", i * HOUR, i * HOUR - HOUR + 1, i * HOUR, rows, {"x": 0.8 / np.sqrt(rows)})
    flat = trend.forecasts({"x": 0.1}, 0.99, 8 * HOUR)["x"]  # fitted to the three windows of 300 rows only
    assert math.isinf(flat.seconds) and flat.slope == 0.0
    rising = DriftTrend(points=20, min_points=3)
    for i in range(10):
        rising.add("b", i * HOUR, i * HOUR - HOUR + 1, i * HOUR, 1000, {"x": 0.01 + 0.002 * i})
        found = rising.forecasts({"x": 0.05}, 0.99, i * HOUR)
    assert found["x"].seconds == pytest.approx(11 * HOUR) and rising.streaks == {"x": 8}  # points 3 to 10
    later = rising.forecasts({"x": 0.05}, 0.99, 10 * HOUR)["x"]  # an hour on, no new point: counts down
    assert later.seconds == pytest.approx(10 * HOUR) and rising.streaks == {"x": 8}



def test_forecast_of_a_level_already_there_and_of_no_trend():
    t = np.arange(10) * HOUR
    assert forecast(t, 0.2 + 0.01 * np.arange(10), threshold=0.1).seconds == 0.0  # rising, and there already
    assert math.isinf(forecast(t, np.full(10, 0.2), threshold=0.1).seconds)  # above it but flat: not a forecast
    assert math.isinf(forecast(t, 0.2 - 0.01 * np.arange(10), threshold=0.5).seconds)  # falling
    with pytest.raises(ValueError, match="3 or more"):
        forecast(t[:2], np.zeros(2), 0.1)
    with pytest.raises(ConfigError, match="forecast_min_points"):
        DriftPolicy(forecast_points=5, forecast_min_points=6)
    with pytest.raises(ConfigError, match="forecast_horizon"):
        DriftPolicy(forecast_horizon=-1)


def drifting(seed: int, checks: int, rate: float, rows: int = 50_000, start: float = 0.0, with_model: bool = False,
             warning: float = 0.2):
    """A monitor checking hourly windows (disjoint, ``rows`` each) whose mean moves ``rate`` σ an
    hour from ``start``, with the feature's warning level at effect ``warning``; yields (check
    number, report, alert events so far[, the model])."""
    rng = np.random.default_rng(seed)
    # the reference: N(0, 1)'s quantiles, so that its own sampling error does not move the crossing
    exact = stats.norm.ppf((np.arange(50_000) + 0.5) / 50_000)[:, None]
    baseline = Baseline.from_data(exact, features=["x"], sample_size=50_000)
    events = []
    mon = Monitor(MonitorConfig(tracing=False, check_interval=0))
    policy = DriftPolicy(forecast_points=40, forecast_min_points=8, forecast_horizon=12 * HOUR, fire_after=1,
                         overrides={"x": {"effect": warning}})
    model = mon.model("m", baseline=baseline, drift_policy=policy, on_alert=events.append)
    try:
        for i in range(checks):
            now = 1e9 + i * HOUR
            window = {"time": np.linspace(now - HOUR + 1, now, rows), "numeric": rng.normal(start + rate * i, 1, (rows, 1)),
                      "categorical": np.empty((rows, 0), dtype=object)}
            report = model.checker.check(CheckInputs("m", "1", now, window, schema=baseline.schema,
                                                     baseline=baseline)).report
            yield (i, report, events, model) if with_model else (i, report, events)
    finally:
        mon.shutdown()


def test_a_slow_drift_is_forecast_within_20_percent_of_when_it_reaches_warning():
    """The mean moves 0.005 σ an hour; the feature's warning level is an effect (Wasserstein/σ,
    the mean shift here) of 0.2, reached at check 40. Forecast at check 30, 10 hours before:
    within ±2 hours in at least 9 of 10 seeds (the spread over 20 seeds at these sizes: about
    ±8 %; docs/insight.md has the accuracy at other sizes)."""
    errors = []
    for seed in range(10):
        for i, report, _ in drifting(seed, 31, rate=0.005):
            if i == 30:
                seconds = report["forecast"]["x"]["seconds"]
                errors.append(math.inf if seconds is None else abs(seconds - 10 * HOUR) / (10 * HOUR))
    assert sum(e <= 0.2 for e in errors) >= 9, errors


def test_the_forecast_alert_fires_before_the_drift_does_and_is_exported():
    fired, exported = {}, None
    for i, report, events, model in drifting(3, 45, rate=0.005, with_model=True):
        for e in events:
            fired.setdefault((e["alertname"], e["state"]), i)
        if i == 30:
            exported = {o[1]["feature"]: o[0] for o in observe(DRIFT_FORECAST, [model], model.registry.errors)}
            assert exported["x"] == exported["__all__"] == report["forecast"]["x"]["seconds"]
        if i == 5:
            assert observe(DRIFT_FORECAST, [model], model.registry.errors) == []  # fewer than 8 points: none
    assert exported is not None
    assert fired[("DriftForecast", "firing")] < fired[("FeatureDrift", "firing")]
    assert fired[("DriftForecast", "resolved")] >= fired[("FeatureDrift", "firing")]  # drifting now: no forecast alert


def test_a_flat_stream_is_not_trending_and_exports_plus_infinity():
    *_, (_, report, events, model) = drifting(4, 12, rate=0.0, with_model=True)
    assert report["forecast"]["x"]["seconds"] is None
    assert [o[0] for o in observe(DRIFT_FORECAST, [model], model.registry.errors)] == [math.inf, math.inf]
    from prometheus_client import generate_latest

    scraped = generate_latest(model.registry.telemetry.registry).decode()
    assert 'mlmon_drift_forecast_seconds{feature="x",mlmon_model_name="m",mlmon_model_version="unknown"} +Inf' in scraped
    assert not [e for e in events if e["alertname"] == "DriftForecast"]


def test_workers_sharing_a_server_scrape_the_infinite_forecast_through_their_state():
    """A worker's families go to the others as JSON, which has no infinity: +Inf must survive."""
    import orjson
    from prometheus_client import CollectorRegistry, generate_latest

    from mlmon_middleware.merge import families, merged_families

    *_, (_, _, _, model) = drifting(4, 12, rate=0.0, with_model=True)
    state = orjson.loads(orjson.dumps({"metrics": families(model.registry.telemetry.registry), "models": {}}))
    merged = merged_families({"w1": state}, {}, leader="w1", per_worker=False)

    class Merged:
        def collect(self):
            return merged

    registry = CollectorRegistry()
    registry.register(Merged())
    assert 'mlmon_drift_forecast_seconds{feature="x",mlmon_model_name="m",mlmon_model_version="unknown"} +Inf' \
        in generate_latest(registry).decode()


def test_the_warm_up_check_adds_no_point_and_an_on_demand_check_after_a_new_baseline_forecasts_nothing():
    rng = np.random.default_rng(6)
    mon = Monitor(MonitorConfig(tracing=False, check_interval=0))
    model = mon.model("m", drift_policy=DriftPolicy(forecast_min_points=3), warmup_rows=500)
    try:
        schema = None
        for i in range(5):
            rows = {"x": rng.normal(size=1000)}
            now = 1e9 + i * HOUR
            window = {"time": np.linspace(now - HOUR + 1, now, 1000), "numeric": rows["x"][:, None],
                      "categorical": np.empty((1000, 0), dtype=object)}
            schema = schema or Baseline.from_data(rows["x"][:, None], features=["x"]).schema
            result = model.checker.check(CheckInputs("m", "1", now, window, schema=schema, baseline=model.baseline))
            if result.warmup_baseline is not None:
                model.set_baseline(result.warmup_baseline)
                assert len(model.checker._trend.points) == 0  # compared with itself: no point
        assert len(model.checker._trend.points) == 4
        other = Baseline.from_data(rng.normal(size=(2000, 1)), features=["x"])
        report = model.checker.check(CheckInputs("m", "1", 1e9 + 5 * HOUR, window, schema=other.schema, baseline=other,
                                                 scheduled=False)).report
        assert report["forecast"] == {}
    finally:
        mon.shutdown()
