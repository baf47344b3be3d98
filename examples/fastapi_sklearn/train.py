"""Train the demo's credit-risk model and write its baseline.

    python examples/fastapi_sklearn/train.py --out .demo

writes ``model.pkl`` (a scikit-learn pipeline), ``explainer.pkl`` (its exact SHAP values for the
numeric features, see ``explainer.py``) and ``baseline.json`` (mlmon's reference profile of the
training features and predictions) into ``--out``.
"""

from __future__ import annotations

import argparse
import pathlib
import pickle
import sys

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from mlmon_middleware import Baseline  # noqa: E402

from data import FEATURES, NUMERIC, default_risk, make_rows  # noqa: E402
from explainer import NumericLinearShap  # noqa: E402


def train(out: pathlib.Path, rows: int = 5000, seed: int = 7) -> tuple[pathlib.Path, pathlib.Path]:
    """Fit the model on ``rows`` synthetic applicants; return the model and baseline paths."""
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    data = make_rows(rows, rng)
    frame = pd.DataFrame(data, columns=list(FEATURES))
    target = default_risk(data, rng)
    model = make_pipeline(
        ColumnTransformer([("num", StandardScaler(), list(NUMERIC)),
                           ("cat", OneHotEncoder(handle_unknown="ignore"), ["region", "channel"])]),
        LogisticRegression(max_iter=1000),
    )
    model.fit(frame, target)
    model_path, baseline_path = out / "model.pkl", out / "baseline.json"
    model_path.write_bytes(pickle.dumps(model))
    (out / "explainer.pkl").write_bytes(pickle.dumps(NumericLinearShap.of_pipeline(model, frame, NUMERIC)))
    baseline = Baseline.from_data(frame, predictions=model.predict_proba(frame)[:, 1], model="credit-risk")
    baseline.save(baseline_path)
    return model_path, baseline_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path(".demo"))
    parser.add_argument("--rows", type=int, default=5000)
    args = parser.parse_args()
    model_path, baseline_path = train(args.out, args.rows)
    print(f"model: {model_path}\nbaseline: {baseline_path}")


if __name__ == "__main__":
    main()
