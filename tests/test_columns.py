"""Batches in columns (DataFrames, 2-D arrays): encoded as whole columns, with exactly the values
and the problem counts that the same batch gives as rows."""

import numpy as np
import pandas as pd
import pytest

from mlmon_middleware import Monitor, MonitorConfig, monitor
from mlmon_middleware.columns import Columns, columns_of
from mlmon_middleware.payload import extract_batch, extract_rows
from mlmon_middleware.schema import FeatureSchema

SCHEMA = FeatureSchema(["a", "b", "c"], ["numeric", "numeric", "categorical"])


def same(x, y) -> bool:
    """Equal encodings: values (NaN equal to NaN), and every count."""
    return (np.array_equal(x.numeric, y.numeric, equal_nan=True) and x.categorical.tolist() == y.categorical.tolist()
            and x.errors == y.errors and x.feature_errors == y.feature_errors
            and x.unexpected_fields == y.unexpected_fields)


def random_frame(rng: np.random.Generator, n: int) -> pd.DataFrame:
    """Numbers with NaN and infinities, integers, text with None, and an extra column."""
    a = rng.normal(size=n)
    a[rng.random(n) < 0.1] = np.nan
    a[rng.random(n) < 0.05] = np.inf
    c = rng.choice(["x", "y", "a-long-category-" * 20], n).astype(object)
    c[rng.random(n) < 0.1] = None
    return pd.DataFrame({"a": a, "b": rng.integers(-5, 5, n), "c": c, "extra": rng.random(n)})


@pytest.mark.parametrize("seed", range(5))
def test_a_frame_encodes_as_its_rows_do(seed):
    rng = np.random.default_rng(seed)
    frame = random_frame(rng, int(rng.integers(1, 400)))
    table = columns_of(frame)
    assert isinstance(table, Columns) and len(table) == len(frame)
    assert same(SCHEMA.encode(table), SCHEMA.encode(extract_rows(frame)))
    for columns in (["a", "b"], ["c", "a", "b"], ["b", "extra"]):  # missing features, other orders
        part = frame[columns]
        assert same(SCHEMA.encode(columns_of(part)), SCHEMA.encode(extract_rows(part)))


def test_object_columns_go_value_by_value_and_count_what_they_find():
    frame = pd.DataFrame({"a": [1.0, "text", None, 10**400], "b": [1, 2, 3, 4], "c": ["x", 2.0, True, None]},
                         dtype=object)
    encoded = SCHEMA.encode(columns_of(frame))
    assert same(encoded, SCHEMA.encode(extract_rows(frame)))
    assert encoded.feature_errors["a"] == {"type_mismatch": 1, "non_finite": 1}
    assert encoded.categorical[:, 0].tolist() == ["x", "2", "true", None]


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64, np.uint8, bool])
def test_a_2d_array_encodes_as_its_rows_do(dtype):
    rng = np.random.default_rng(1)
    matrix = (rng.normal(size=(50, 3)) * 10).astype(dtype)
    schema = FeatureSchema(["f0", "f1", "f2"])
    assert same(schema.encode(columns_of(matrix)), schema.encode(extract_rows(matrix)))
    narrow = schema.encode(columns_of(matrix[:, :2]))  # a width the schema does not have
    assert narrow.errors == {"shape_mismatch": 50} and np.isnan(narrow.numeric).all()


def test_inferred_schemas_agree():
    frame = pd.DataFrame({"n": [1.5, 2.5], "i": [1, 2], "t": ["u", "v"], "o": pd.Series([None, "w"], dtype=object)})
    assert FeatureSchema.infer(columns_of(frame)) == FeatureSchema.infer(extract_rows(frame))
    assert FeatureSchema.infer(columns_of(np.zeros((20, 3)))) == FeatureSchema(["f0", "f1", "f2"])


def test_what_stays_rows():
    assert extract_batch({"x": 1.0}) == [{"x": 1.0}]
    assert columns_of(np.zeros((0, 3))) is None and columns_of(np.zeros(3)) is None
    assert columns_of(np.zeros((15, 3))) is None  # a few rows: cheaper as rows
    assert columns_of(pd.DataFrame({"a": []})) is None
    assert columns_of(pd.DataFrame([[1, 2]], columns=["a", "a"])) is None  # duplicate names: rows say which wins
    assert isinstance(extract_batch({"instances": np.ones((20, 2))}), Columns)
    assert isinstance(extract_batch({"dataframe_records": pd.DataFrame({"a": [1.0]})}), Columns)


def test_a_monitored_batch_in_columns_reaches_the_window_the_log_and_the_counts(tmp_path):
    mon = Monitor(MonitorConfig(tracing=False, store_dir=str(tmp_path)))
    try:
        @monitor(model="frames", registry=mon, segments=["c"], log_features="all")
        def predict(frame: pd.DataFrame) -> np.ndarray:
            return np.asarray(frame["a"].fillna(0) > 0, dtype=float)

        frames = [random_frame(np.random.default_rng(s), 100)[["a", "b", "c"]] for s in range(3)]
        for frame in frames:
            predict(frame)
        mon.flush()
        model = mon.model("frames")
        window = model.window.snapshot()
        expected = SCHEMA.encode(extract_rows(pd.concat(frames)))
        assert np.array_equal(window["numeric"], expected.numeric, equal_nan=True)
        assert window["categorical"].tolist() == expected.categorical.tolist()
        health = model.health()
        assert health["predictions"] == {"ok": 3, "error": 0}
        assert health["capture_errors"] == dict(expected.errors)
        assert model.output_window.snapshot()["numeric"].shape == (300, 1)
        mon._store_writer.flush()
        logged = model.recent_predictions(limit=500)
        assert len(logged) == 300 and all(row["features"].keys() == {"a", "b", "c"} for row in logged)
        last = {name: frames[-1][name].tolist()[-1] for name in ("b", "c")}
        last["c"] = None if pd.isna(last["c"]) else last["c"]  # missing text: NaN or None by pandas version
        newest = max(logged, key=lambda row: (row["timestamp"], int(row["prediction_id"].rsplit(":", 1)[1])))
        assert newest["segments"] == {"c": last["c"]} and newest["features"]["b"] == last["b"]
    finally:
        mon.shutdown()


@pytest.mark.parametrize("answer, class_names", [
    (np.array([0.1, 0.7, 0.2]), None),
    (np.array([[0.1, 0.9], [0.6, 0.4], [0.5, 0.5]]), ["ok", "fraud"]),
    (np.array([[0.1, 0.9], [0.6, 0.4], [0.5, 0.5]]), ["only one name"]),
    (np.array([[1], [2], [3]]), None),
    (np.array(["cat", "dog", "cat"]), None),
    (np.array([True, False, True]), None),
    (pd.Series([3.0, 1.0, 2.0]), None),
])
def test_an_array_answer_stays_in_columns_with_the_names_rows_would_get(answer, class_names):
    from mlmon_middleware.payload import extract_predictions

    for wrapped in (answer, {"predictions": answer}):
        table = extract_predictions(wrapped, 3, class_names=class_names)
        plain = answer.tolist() if isinstance(answer, (np.ndarray, pd.Series)) else answer
        assert isinstance(table, Columns)
        assert list(table) == extract_predictions(plain if wrapped is answer else {"predictions": plain}, 3,
                                                  class_names=class_names)
    assert not isinstance(extract_predictions(np.array([0.1, 0.9]), 1), Columns)  # one row's class vector


@pytest.mark.parametrize("seed", range(3))
def test_the_fast_paths_give_what_the_general_path_gives_on_clean_data(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    frame = pd.DataFrame({"a": rng.normal(size=n), "b": rng.integers(-5, 5, n), "c": rng.choice(["x", "y"], n)})
    batches = [extract_rows(frame), [list(r) for r in frame.itertuples(index=False)], columns_of(frame)]
    fast = [SCHEMA.encode(b) for b in batches if b is not None]
    monkeypatch.setattr(FeatureSchema, "_encode_plain", lambda self, rows: None)
    monkeypatch.setattr(FeatureSchema, "_columns_plain", lambda self, table: None)
    general = [SCHEMA.encode(b) for b in batches if b is not None]
    assert len(fast) == 3 and all(same(f, g) for f, g in zip(fast, general))
    numeric = FeatureSchema(["f0", "f1"])
    matrix = rng.normal(size=(40, 2))
    with_fast = numeric.encode(columns_of(matrix))
    monkeypatch.undo()
    assert same(with_fast, numeric.encode(extract_rows(matrix)))


def test_rows_reach_the_window_in_arrival_order():
    mon = Monitor(MonitorConfig(tracing=False, check_interval=0, reservoir_size=50))
    try:
        model = mon.model("ordered")
        model.record(np.arange(200.0).reshape(100, 2), np.zeros(100))  # a batch in columns, then a row
        model.record([9.0, 9.0], 0.0)
        mon.flush()
        snap = model.window.snapshot()
        assert snap["numeric"][-1].tolist() == [9.0, 9.0] and (np.diff(snap["time"]) >= 0).all()
    finally:
        mon.shutdown()


def test_columns_by_position_take_the_declared_names_and_kinds():
    rows = extract_batch(np.array([[31, "eu"]] * 20, dtype=object))
    assert isinstance(rows, Columns)
    assert FeatureSchema.infer(rows, names=["age", "region"]) == FeatureSchema(["age", "region"], ["numeric", "categorical"])


def test_answers_arrays_cannot_be_read_from_keep_the_rows():
    mon = Monitor(MonitorConfig(tracing=False, check_interval=0))
    try:
        scalar = mon.model("scalar")
        scalar.record(np.ones((20, 2)), np.array(0.5))  # one value for 20 rows
        classes = mon.model("classes", class_names=(0, 1))  # names as model.classes_ gives them
        classes.record(np.ones((20, 2)), np.full((20, 2), 0.5))
        mon.flush()
        assert scalar.health()["rows_in_window"] == 20 and "prediction_mismatch" in scalar.health()["capture_errors"]
        assert classes.health()["rows_in_window"] == 20 and classes.output_schema.names == ("0", "1")
    finally:
        mon.shutdown()


def test_logged_integers_of_a_numeric_frame_stay_integers(tmp_path):
    mon = Monitor(MonitorConfig(tracing=False, check_interval=0, store_dir=str(tmp_path)))
    try:
        model = mon.model("ints", log_features="all")
        model.record(pd.DataFrame({"id": [2**53 + 1] * 20, "x": [0.5] * 20}), np.zeros(20))
        logged = model.recent_predictions(limit=1)[0]
        assert logged["features"] == {"id": 2**53 + 1, "x": 0.5}
    finally:
        mon.shutdown()
