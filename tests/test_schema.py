import math

import numpy as np
import pandas as pd
import pytest
from pydantic import BaseModel

from mlmon_middleware.payload import CaptureError, extract_predictions, extract_rows
from mlmon_middleware.schema import FeatureSchema


class Tx(BaseModel):
    amount: float
    country: str


@pytest.mark.parametrize("payload, rows", [
    ({"amount": 1.0, "country": "fr"}, [{"amount": 1.0, "country": "fr"}]),
    (Tx(amount=2.0, country="de"), [{"amount": 2.0, "country": "de"}]),
    ([Tx(amount=1.0, country="a"), Tx(amount=2.0, country="b")],
     [{"amount": 1.0, "country": "a"}, {"amount": 2.0, "country": "b"}]),
    ({"instances": [[1, 2], [3, 4]]}, [[1, 2], [3, 4]]),
    ({"inputs": [{"a": 1}]}, [{"a": 1}]),
    ([1.0, "x"], [[1.0, "x"]]),
    (np.array([1.0, 2.0]), [[1.0, 2.0]]),
    (np.array([[1.0, 2.0], [3.0, 4.0]]), [[1.0, 2.0], [3.0, 4.0]]),
    (pd.DataFrame({"a": [1.0, 2.0], "b": ["x", "y"]}), [{"a": 1.0, "b": "x"}, {"a": 2.0, "b": "y"}]),
])
def test_extract_rows_reads_every_input_shape(payload, rows):
    assert extract_rows(payload) == rows


@pytest.mark.parametrize("payload, reason", [
    ({}, "empty_input"), ([], "empty_input"), ([[1, 2], [3]], "shape_mismatch"),
    ([{"a": 1}, [1]], "shape_mismatch"), ("text", "unsupported_input"), (3.0, "unsupported_input"),
    (object(), "unsupported_input"),
])
def test_extract_rows_names_the_problem(payload, reason):
    with pytest.raises(CaptureError) as info:
        extract_rows(payload)
    assert info.value.reason == reason


@pytest.mark.parametrize("output, n, kwargs, expected", [
    (0.7, 1, {}, [{"prediction": 0.7}]),
    (np.float32(0.5), 1, {}, [{"prediction": 0.5}]),
    ("fraud", 1, {}, [{"prediction": "fraud"}]),
    ([0.1, 0.2], 2, {}, [{"prediction": 0.1}, {"prediction": 0.2}]),
    ([0.3, 0.7], 1, {"class_names": ["no", "yes"]}, [{"no": 0.3, "yes": 0.7}]),
    (np.array([[0.3, 0.7]]), 1, {}, [{"class_0": 0.3, "class_1": 0.7}]),
    ({"score": 3.5, "model": "x"}, 1, {}, [{"prediction": 3.5}]),
    ({"risk": 0.2}, 1, {"key": "risk"}, [{"prediction": 0.2}]),
    ({"probabilities": {"a": 0.4, "b": 0.6}}, 1, {}, [{"a": 0.4, "b": 0.6}]),
    ([{"prediction": 1, "decision": "x"}, {"prediction": 0, "decision": "y"}], 2, {},
     [{"prediction": 1}, {"prediction": 0}]),
])
def test_extract_predictions(output, n, kwargs, expected):
    assert extract_predictions(output, n, **kwargs) == expected


@pytest.mark.parametrize("output, n, kwargs, reason", [
    ([0.1, 0.2, 0.3], 2, {}, "prediction_mismatch"),
    ({"other": 1}, 1, {}, "missing_prediction"),
    ({"score": 1}, 1, {"key": "risk"}, "missing_prediction"),
    (object(), 1, {}, "unsupported_output"),
])
def test_extract_predictions_names_the_problem(output, n, kwargs, reason):
    with pytest.raises(CaptureError) as info:
        extract_predictions(output, n, **kwargs)
    assert info.value.reason == reason


def test_encode_counts_each_problem_once_per_row():
    schema = FeatureSchema(["a", "b", "c"], ["numeric", "numeric", "categorical"])
    rows = [
        {"a": 1, "b": 2.5, "c": "x"},
        {"a": float("nan"), "b": float("inf"), "c": "y"},   # non-finite twice: one row, one count
        {"a": "1", "b": [1], "c": {"k": 1}},               # type mismatches
        {"a": 1},                                           # missing b and c
        {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5},           # extra keys; numeric category kept as text
        [1, 2, "z"],                                        # by position
        [1, 2],                                             # wrong width
        {"a": True, "b": None, "c": None},                  # bool is numeric; None is a missing value
    ]
    enc = schema.encode(rows)
    assert dict(enc.errors) == {"non_finite": 1, "type_mismatch": 1, "missing_feature": 1,
                                "unexpected_feature": 1, "shape_mismatch": 1}
    assert enc.feature_errors == {"a": {"non_finite": 1, "type_mismatch": 1},
                                  "b": {"non_finite": 1, "type_mismatch": 1, "missing_feature": 1},
                                  "c": {"type_mismatch": 1, "missing_feature": 1}}
    np.testing.assert_array_equal(enc.numeric[:, 0], [1, np.nan, np.nan, 1, 1, 1, np.nan, 1])
    assert enc.categorical[:, 0].tolist() == ["x", "y", None, None, "3", "z", None, None]
    assert math.isnan(enc.numeric[7, 1])


@pytest.mark.parametrize("seed", range(6))
def test_plain_rows_encode_in_one_pass_as_they_do_value_by_value(seed, monkeypatch):
    """Dict and list rows of every plain number type (big integers too; one numeric feature or
    several) give what the value-by-value encoding gives; an integer too large for a float sends
    the batch that way, where it is counted."""
    rng = np.random.default_rng(seed)
    makers = [float, int, np.float64, np.float32, np.int64, np.int32]

    def number():
        value = rng.normal(0, 10.0 ** rng.integers(0, 19))
        maker = makers[rng.integers(len(makers))]
        return maker(np.clip(value, -2**31, 2**31 - 1)) if maker is np.int32 else maker(value) if maker is not int \
            else int(value) + int(rng.choice([0, 2**53 + 1, 2**63 + 7, 2**70]))

    for numeric in (1, 3):
        names = [f"n{i}" for i in range(numeric)] + ["c"]
        schema = FeatureSchema(names, ["numeric"] * numeric + ["categorical"])
        n = int(rng.integers(1, 60))
        dicts = [{**{name: number() for name in names[:-1]}, "c": str(rng.integers(3))} for _ in range(n)]
        lists = [list(row.values()) for row in dicts]
        fast = [schema.encode(rows) for rows in (dicts, lists)]
        with monkeypatch.context() as patched:
            patched.setattr(FeatureSchema, "_encode_plain", lambda self, rows: None)
            general = [schema.encode(rows) for rows in (dicts, lists)]
        for f, g in zip(fast, general):
            np.testing.assert_array_equal(f.numeric, g.numeric)
            assert f.numeric.shape == (n, numeric) and f.categorical.tolist() == g.categorical.tolist()
            assert not f.errors and not g.errors
    huge = FeatureSchema(["a", "b"]).encode([{"a": 1.0, "b": 2.0}, {"a": 2**1100, "b": 3.0}])
    assert dict(huge.errors) == {"non_finite": 1} and np.isnan(huge.numeric[1, 0]) and huge.numeric[1, 1] == 3.0


class _ArrayLike:
    """A 0-d array-like whose ``__array__`` and ``__float__`` disagree (numpy's list conversion
    would read it through either)."""

    def __array__(self, dtype=None, copy=None):
        return np.array(2.5)

    def __float__(self):
        return 7.0


@pytest.mark.parametrize("cells", [
    [1.5, 2], [True, 2.5], [True, False], [np.float16(0.1), np.uint8(7)],  # numbers of every kind
    [2**63 + 7, 5], [2**63 + 7, -5], [2**64 + 1, 1.5], [-2**63 - 1, 1.0],  # beyond int64
    [[1.5], [2.5]], [(1.0, 2.0), (3.0, 4.0)], [[], 1.0],  # sequences are not numbers, whatever their shape
    ["1.5", 2.0], [None, 1.0], [np.datetime64("2026-01-01"), 1.0],
    [np.array(1.5), 2.0], [_ArrayLike(), 1.0], [np.ma.masked, 1.0],  # array-likes are not numbers either
])
def test_the_one_pass_encoding_reads_odd_cells_as_the_value_by_value_one(cells, monkeypatch):
    """Whatever a cell holds, a batch encodes as it does value by value (numbers, flags, counts)."""
    for width in (1, 2):  # one numeric feature (a column of values) and two (rows of tuples)
        names = [f"n{i}" for i in range(width)] + ["c"]
        dicts = [{**{name: cell for name in names[:-1]}, "c": "x"} for cell in cells]
        schema = FeatureSchema(names, ["numeric"] * width + ["categorical"])
        for rows in (dicts, [list(row.values()) for row in dicts]):
            fast = schema.encode(rows)
            with monkeypatch.context() as patched:
                patched.setattr(FeatureSchema, "_encode_plain", lambda self, rows: None)
                general = schema.encode(rows)
            np.testing.assert_array_equal(fast.numeric, general.numeric)
            assert fast.categorical.tolist() == general.categorical.tolist()
            assert dict(fast.errors) == dict(general.errors) and fast.feature_errors == general.feature_errors
    plain = [{"n0": 1.5, "n1": 2, "c": "x"}, {"n0": -3.0, "n1": np.float32(0.5), "c": "y"}]  # the fast path takes these
    assert FeatureSchema(["n0", "n1", "c"], ["numeric", "numeric", "categorical"])._encode_plain(plain) is not None


def test_infer_takes_kinds_from_values_and_overrides():
    rows = [{"a": None, "b": "x", "c": 1}, {"a": 2.0, "b": "y", "c": 2}]
    assert FeatureSchema.infer(rows).to_dict() == {"a": "numeric", "b": "categorical", "c": "numeric"}
    assert FeatureSchema.infer(rows, kinds={"c": "categorical"}).kinds == ("numeric", "categorical", "categorical")
    assert FeatureSchema.infer([[1, "a"]]).names == ("f0", "f1")


def test_schema_rejects_bad_definitions():
    with pytest.raises(ValueError, match="unique"):
        FeatureSchema(["a", "a"])
    with pytest.raises(ValueError, match="kind must be one of"):
        FeatureSchema(["a"], ["text"])
