"""Streaming baselines: the chunked profiler, `mlmon baseline build`, bounded memory."""

import json
import subprocess
import sys

import numpy as np
import orjson
import pandas as pd
import pytest
from scipy.stats import chisquare

from mlmon_middleware import Baseline
from mlmon_middleware.cli import main
from mlmon_middleware.drift.engine import compare
from mlmon_middleware.payload import extract_rows
from mlmon_middleware.profile import Profiler
from mlmon_middleware.schema import FeatureSchema

SCHEMA = FeatureSchema(["x", "y", "c"], ["numeric", "numeric", "categorical"])


def data(n, seed=0):
    rng = np.random.default_rng(seed)
    numeric = np.column_stack([rng.normal(3, 2, n), rng.exponential(1, n)])
    numeric[rng.random(n) < 0.05, 1] = np.nan
    categorical = rng.choice(["a", "b", "c", None], n, p=[0.5, 0.3, 0.15, 0.05]).reshape(n, 1)
    return numeric, categorical


def test_chunks_give_the_same_profile_as_one_pass():
    numeric, categorical = data(30_000)
    whole = Profiler(SCHEMA, sample_rows=50_000)
    whole.add(numeric, categorical)
    chunked = Profiler(SCHEMA, sample_rows=50_000)
    cuts = np.sort(np.random.default_rng(1).choice(np.arange(1, 30_000), 40, replace=False))
    for a, b in zip([0, *cuts], [*cuts, 30_000]):
        chunked.add(numeric[a:b], categorical[a:b])
    profile, other = whole.profiles(10, 2000), chunked.profiles(10, 2000)
    for name in ("x", "y"):  # moments merge chunk by chunk: equal up to rounding; the rest exactly
        for key in ("mean", "std"):
            assert other[name].pop(key) == pytest.approx(profile[name].pop(key), rel=1e-12)
    assert other == profile
    profile = whole.profiles(10, 2000)
    y = numeric[:, 1][~np.isnan(numeric[:, 1])]
    assert profile["y"]["mean"] == pytest.approx(y.mean(), abs=1e-9)
    assert profile["y"]["std"] == pytest.approx(y.std(ddof=1), abs=1e-9)
    assert (profile["y"]["min"], profile["y"]["max"]) == (y.min(), y.max())
    assert profile["y"]["missing_rate"] == pytest.approx(np.isnan(numeric[:, 1]).mean(), abs=1e-12)
    present = [v for v in categorical[:, 0] if v is not None]
    assert profile["c"]["frequencies"] == pytest.approx({k: present.count(k) / len(present) for k in "abc"}, abs=1e-12)


def test_the_reservoir_is_a_uniform_sample():
    profiler = Profiler(FeatureSchema(["i"]), sample_rows=2000, seed=5)
    index = np.arange(200_000, dtype=float).reshape(-1, 1)
    for start in range(0, 200_000, 7_000):
        profiler.add(index[start:start + 7_000], np.empty((len(index[start:start + 7_000]), 0), dtype=object))
    sample = profiler._reservoir[:, 0]
    assert len(np.unique(sample)) == 2000
    counts = np.bincount((sample // 20_000).astype(int), minlength=10)  # by tenth of the stream
    assert chisquare(counts).pvalue > 0.001
    exact = profiler.profiles(10, 2000)["i"]
    assert (exact["min"], exact["max"], exact["count"]) == (0.0, 199_999.0, 200_000)
    assert exact["mean"] == pytest.approx(99_999.5, abs=1e-6)


@pytest.fixture(scope="module")
def training_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train")
    rng = np.random.default_rng(0)
    n = 20_000
    frame = pd.DataFrame({"age": rng.normal(40, 10, n), "income": rng.lognormal(10, 1, n),
                          "region": rng.choice(["n", "s"], n), "code": rng.integers(0, 4, n),
                          "label": rng.integers(0, 2, n), "score": rng.random(n)})
    frame.loc[::50, "income"] = np.nan
    frame.to_csv(folder / "train.csv", index=False)
    frame.to_parquet(folder / "train.parquet")
    return folder, frame


def test_cli_builds_the_same_baseline_from_csv_and_parquet(training_files, capsys):
    folder, frame = training_files
    outs = []
    for name in ("train.csv", "train.parquet"):
        out = folder / f"{name}.json"
        assert main(["baseline", "build", str(folder / name), "--model", "m", "--out", str(out), "--target", "label",
                     "--prediction", "score", "--categorical", "code", "--chunk-rows", "3000", "--quiet"]) == 0
        outs.append(Baseline.load(out))
    csv, parquet = outs
    assert csv.schema == parquet.schema == FeatureSchema(["age", "income", "region", "code"],
                                                         ["numeric", "numeric", "categorical", "categorical"])
    def plain(profiles: dict) -> bytes:
        return orjson.dumps(profiles, option=orjson.OPT_SERIALIZE_NUMPY)

    assert plain(csv.features) == plain(parquet.features) and plain(csv.predictions) == plain(parquet.predictions)
    assert csv.row_count == 20_000 and list(csv.predictions) == ["prediction"]
    assert csv.payload["target"]["label"]["mean"] == pytest.approx(frame["label"].mean())
    income = csv.features["income"]
    assert income["missing_rate"] == pytest.approx(frame["income"].isna().mean())
    assert income["mean"] == pytest.approx(frame["income"].mean(), rel=1e-12)
    assert "20000 rows, 4 features" in capsys.readouterr().out


def test_cli_errors(training_files, capsys):
    folder, _ = training_files
    assert main(["baseline", "build", str(folder / "missing.csv"), "--model", "m", "--out", "x.json"]) == 2
    assert main(["baseline", "build", str(folder / "train.csv"), "--model", "m", "--out", "x.json",
                 "--target", "nope", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "has no column 'nope'" in err


def test_memory_does_not_grow_with_the_file(tmp_path):
    """Peak RSS building from a file 10x larger stays within a few MB: memory is the reservoir
    plus one chunk, not the file."""
    script = (  # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forking parent
        "import sys\n"
        "from mlmon_middleware.training_file import build_baseline\n"
        "build_baseline(sys.argv[1], 'm', sample_rows=10000, chunk_rows=10000, progress=False)\n"
        "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))\n"
    )
    peaks = {}
    rng = np.random.default_rng(0)
    for rows in (20_000, 200_000):  # the larger file is 15 MB of float64 once read: far above the margin
        path = tmp_path / f"{rows}.csv"
        pd.DataFrame(rng.normal(size=(rows, 10)), columns=[f"f{i}" for i in range(10)]).to_csv(path, index=False)
        out = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        peaks[rows] = int(out.stdout.strip()) / 1024  # MB
    sample_mb = 10_000 * 10 * 8 / 2**20
    assert peaks[200_000] - peaks[20_000] < 2 * sample_mb + 4, json.dumps(peaks)  # + allocator noise


def test_categories_from_a_csv_and_a_parquet_file_match_json_requests_both_ways(tmp_path):
    frame = pd.DataFrame({"plan": [1, 2, 2, 3] * 250, "vip": [True, False, False, False] * 250,
                          "x": np.arange(1000, dtype=float)})
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.astype({"plan": float}).to_parquet(tmp_path / "t.parquet")  # floats in the file: 1.0, 2.0, 3.0
    requests = [{"plan": p, "vip": v, "x": 1.0} for p, v in [(1, True), ("2", False), (2.0, False), (3, False)] * 100]
    for name in ("t.csv", "t.parquet"):
        out = tmp_path / f"{name}.json"
        assert main(["baseline", "build", str(tmp_path / name), "--model", "m", "--out", str(out), "--quiet",
                     "--categorical", "plan", "vip"]) == 0
        base = Baseline.load(out)
        assert sorted(base.features["plan"]["frequencies"]) == ["1", "2", "3"]
        assert sorted(base.features["vip"]["frequencies"]) == ["false", "true"]
        window = base.schema.encode(requests)
        result = compare(base.features, base.schema, {"numeric": window.numeric, "categorical": window.categorical})
        assert result["plan"]["new_category_ratio"] == result["vip"]["new_category_ratio"] == 0
    # and the other way: a baseline of JSON-like rows, requests from a DataFrame with a float column
    base = Baseline.from_data([{"plan": p} for p in [1, 2, 2, 3] * 250], categorical=["plan"])
    window = base.schema.encode(extract_rows(pd.DataFrame({"plan": [1.0, 2.0, 3.0, None] * 100})))
    result = compare(base.features, base.schema, {"numeric": window.numeric, "categorical": window.categorical})
    assert result["plan"]["new_category_ratio"] == 0 and result["plan"]["missing_ratio"] == 0.25
