import numpy as np
import orjson
import pandas as pd
import pytest

from mlmon_middleware import Baseline, BaselineError, ConfigError, Monitor, MonitorConfig
from mlmon_middleware.baseline import FORMAT_VERSION
from mlmon_middleware.drift.engine import compare
from mlmon_middleware.drift.policy import DriftPolicy


def make_frame(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    income = rng.lognormal(10, 0.5, n)
    income[rng.random(n) < 0.05] = np.nan
    return pd.DataFrame({"income": income, "age": rng.normal(40, 12, n),
                         "region": rng.choice(["n", "s", "e"], n, p=[0.5, 0.3, 0.2])})


def test_profiles_agree_with_numpy():
    frame = make_frame()
    base = Baseline.from_data(frame, predictions=np.linspace(0, 1, len(frame)), model="m", sample_size=500)
    income = frame["income"].to_numpy()
    present = income[~np.isnan(income)]
    prof = base.features["income"]
    edges = np.unique(np.quantile(present, np.linspace(0, 1, 11)))
    np.testing.assert_allclose(prof["bin_edges"], edges, rtol=0, atol=1e-9)
    # bins [e_i, e_i+1), the outer ones open to -inf / +inf: counted independently of searchsorted
    inner = edges[1:-1]
    expected = [np.sum(present < inner[0])] + [np.sum((present >= lo) & (present < hi)) for lo, hi in
                                                zip(inner[:-1], inner[1:])] + [np.sum(present >= inner[-1])]
    np.testing.assert_allclose(prof["bin_proportions"], np.array(expected) / len(present), rtol=0, atol=1e-12)
    assert prof["missing_rate"] == pytest.approx(np.isnan(income).mean(), abs=1e-12)
    assert (prof["min"], prof["max"]) == (present.min(), present.max())
    assert prof["mean"] == pytest.approx(present.mean(), abs=1e-9)
    assert prof["std"] == pytest.approx(present.std(ddof=1), abs=1e-9)
    assert len(prof["sample"]) == 500 and set(prof["sample"]) <= set(present)
    freqs = base.features["region"]["frequencies"]
    counts = frame["region"].value_counts(normalize=True)
    assert freqs == pytest.approx(counts.to_dict(), abs=1e-12)
    assert list(freqs) == list(counts.index)  # most frequent first
    assert base.predictions["prediction"]["kind"] == "numeric"
    assert base.schema.to_dict() == {"income": "numeric", "age": "numeric", "region": "categorical"}


def test_round_trip_and_errors(tmp_path):
    base = Baseline.from_data(make_frame(200), model="m")
    path = tmp_path / "b.json"
    base.save(path)
    loaded = Baseline.load(path)
    assert loaded.to_json() == base.to_json() and loaded.schema == base.schema

    with pytest.raises(BaselineError, match="does not exist"):
        Baseline.load(tmp_path / "missing.json")
    (tmp_path / "corrupt.json").write_bytes(b'{"format": "mlmon-base')
    with pytest.raises(BaselineError, match="is corrupt"):
        Baseline.load(tmp_path / "corrupt.json")
    (tmp_path / "foreign.json").write_bytes(b'{"hello": 1}')
    with pytest.raises(BaselineError, match="is not an mlmon baseline"):
        Baseline.load(tmp_path / "foreign.json")
    newer = {**base.payload, "format_version": FORMAT_VERSION + 1}
    (tmp_path / "newer.json").write_bytes(orjson.dumps(newer, option=orjson.OPT_SERIALIZE_NUMPY))
    with pytest.raises(BaselineError, match="upgrade mlmon-middleware"):
        Baseline.load(tmp_path / "newer.json")
    tampered = {**base.payload, "features": {**base.payload["features"], "extra": base.payload["features"]["age"]}}
    (tmp_path / "tampered.json").write_bytes(orjson.dumps(tampered, option=orjson.OPT_SERIALIZE_NUMPY))
    with pytest.raises(BaselineError, match="schema hash does not match"):
        Baseline.load(tmp_path / "tampered.json")
    broken = {k: v for k, v in base.payload.items() if k != "row_count"}
    (tmp_path / "broken.json").write_bytes(orjson.dumps(broken, option=orjson.OPT_SERIALIZE_NUMPY))
    with pytest.raises(BaselineError, match="is corrupt"):
        Baseline.load(tmp_path / "broken.json")


def test_model_features_must_match_the_baseline(tmp_path):
    path = tmp_path / "b.json"
    Baseline.from_data(make_frame(100)).save(path)
    mon = Monitor(MonitorConfig(tracing=False))
    assert mon.model("ok", baseline=path).schema.names == ("income", "age", "region")
    with pytest.raises(ConfigError, match="do not match the baseline"):
        mon.model("bad", features=["age", "income"], baseline=path)
    with pytest.raises(BaselineError, match="does not exist"):
        mon.model("gone", baseline=tmp_path / "nope.json")


def test_bad_arguments():
    with pytest.raises(BaselineError, match="prediction column 'y' is not in the data"):
        Baseline.from_data([{"a": 1.0}], predictions="y")
    with pytest.raises(BaselineError, match="2 predictions for 1 rows"):
        Baseline.from_data([{"a": 1.0}], predictions=[1, 2])
    with pytest.raises(BaselineError, match="bins must be >= 2"):
        Baseline.from_data([{"a": 1.0}], bins=1)
    base = Baseline.from_data([{"a": 1.0, "y": 0}, {"a": 2.0, "y": 1}], predictions="y")
    assert list(base.features) == ["a"] and list(base.predictions) == ["prediction"]


def test_a_category_is_its_value_from_pandas_and_from_json_alike():
    frame = pd.DataFrame({"plan": [1.0, 2.0, 2.0, None] * 250, "flag": [True, False, False, True] * 250})
    base = Baseline.from_data(frame, categorical=["plan", "flag"])
    assert sorted(base.features["plan"]["frequencies"]) == ["1", "2"]
    assert sorted(base.features["flag"]["frequencies"]) == ["false", "true"]
    requests = [{"plan": 1, "flag": True}, {"plan": "2", "flag": False}, {"plan": 2.0, "flag": False}] * 200
    window = base.schema.encode(requests)
    result = compare(base.features, base.schema, {"numeric": window.numeric, "categorical": window.categorical})
    assert result["plan"]["new_category_ratio"] == 0 and result["flag"]["new_category_ratio"] == 0
    assert result["plan"]["psi"] < 0.01


def test_low_cardinality_numbers_are_binned_by_value():
    rng = np.random.default_rng(0)
    base = Baseline.from_data([{"clicked": float(v), "visits": float(k)}
                               for v, k in zip(rng.random(5000) < 0.3, rng.poisson(2, 5000))])
    assert base.features["clicked"]["discrete"] and len(base.features["clicked"]["bin_proportions"]) == 2
    assert base.features["clicked"]["bin_proportions"] == pytest.approx([0.7, 0.3], abs=0.02)
    assert base.features["visits"]["discrete"]
    n = 2000
    numeric = np.column_stack([(rng.random(n) < 0.9).astype(float), rng.poisson(2, n).astype(float)])
    result = compare(base.features, base.schema, {"numeric": numeric, "categorical": np.empty((n, 0), object)})
    assert result["clicked"]["psi"] > 1.0  # 30 % -> 90 % ones moves the value bins' shares
    verdicts = DriftPolicy().judge(result)
    assert verdicts == {"clicked": "critical", "visits": "none"}


def test_a_version_1_baseline_is_read_with_its_categories_renamed(tmp_path):
    base = Baseline.from_data([{"plan": p, "vip": v} for p, v in [("1", "true"), ("2", "false")] * 50],
                              categorical=["plan", "vip"])
    old = dict(base.payload, format_version=1)
    old["features"] = {**old["features"],
                       "plan": {**old["features"]["plan"], "frequencies": {"1.0": 0.25, "1": 0.25, "2.0": 0.5}},
                       "vip": {**old["features"]["vip"], "frequencies": {"True": 0.5, "False": 0.5}}}
    (tmp_path / "old.json").write_bytes(orjson.dumps(old, option=orjson.OPT_SERIALIZE_NUMPY))
    loaded = Baseline.load(tmp_path / "old.json")
    assert loaded.features["plan"]["frequencies"] == {"1": 0.5, "2": 0.5}
    assert loaded.features["vip"]["frequencies"] == {"true": 0.5, "false": 0.5}
