"""Label-free performance estimates (CBPE, DLE) against the realized metrics, side by side with
NannyML on the same windows.

    python benchmarks/estimation.py

Data: the public sets NannyML ships with its package (read from the ``.bench-nannyml`` venv
``make bench`` builds), each a labelled reference and an analysis period whose second half has a
covariate shift, with the analysis labels apart: California housing (real census data, binary:
price above the median), synthetic car loans (binary), synthetic credit cards (multiclass, 3
classes) and synthetic car prices (regression). The analysis period is cut into 10 consecutive
windows of equal size (NannyML's ``chunk_size``, the same rows for both).

Per data set and metric: the mean absolute error of each estimate against the realized metric
over the windows, and the share of windows whose realized value lies in the estimate's band
(ours: the 95 % band of the realized value; NannyML's: its confidence boundaries, ± 3 sampling
errors). Then the windows of two sets one by one.

Then the verdict that pages (``EstimatedPerformanceDrop``, judged by the checks' own code): the
share of windows with any metric's drop raised, on a calibrated binary scorer (scores
Beta(2, 2), each label drawn from its score; reference 20,000 rows), with no shift (false
alarms, 95 % Clopper–Pearson upper bound) and with a share of the rows moved next to the
threshold (Beta(8, 8) scores: accuracy falls from about 0.69), per window size.

Last, the cost per check against the drift check of the same window (100 features × 10,000
rows, 5 interleaved rounds): the CBPE estimate of a binary scorer, the DLE estimate (its loss
models fitted once, at the first check, timed apart), and the root causes' permutation
importance on the window for 5 drifted features (run only when a check found dataset drift or a
drop).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(__file__))
from calibration import rate_and_bound  # noqa: E402
from peers import NO_TELEMETRY, peer_python  # noqa: E402

from mlmon_middleware import direct_loss, estimation  # noqa: E402
from mlmon_middleware.estimated import estimated_performance  # noqa: E402
from mlmon_middleware.metrics import as_label, classification_metrics, regression_metrics  # noqa: E402
from mlmon_middleware.schema import FeatureSchema  # noqa: E402

WINDOWS = 10
SETS = {  # name: (reference, analysis, labels, target, task, probability columns or features, classes)
    "california housing": ("california_housing_reference.csv", "california_housing_analysis.csv",
                           "california_housing_analysis_gt.csv", "clf_target", "binary", ["y_pred_proba"], None),
    "car loan": ("synthetic_car_loan_reference.csv", "synthetic_car_loan_analysis.csv",
                 "synthetic_car_loan_analysis_target.csv", "repaid", "binary", ["y_pred_proba"], None),
    "credit card (multiclass)": ("mc_reference.csv", "mc_analysis.csv", "mc_analysis_gt.csv", "y_true", "multiclass",
                                 ["y_pred_proba_prepaid_card", "y_pred_proba_highstreet_card",
                                  "y_pred_proba_upmarket_card"], ["prepaid_card", "highstreet_card", "upmarket_card"]),
    "car price (regression)": ("regression_synthetic_reference.csv", "regression_synthetic_analysis.csv",
                               "regression_synthetic_analysis_targets.csv", "y_true", "regression",
                               ["car_age", "km_driven", "price_new", "accident_count", "door_count"], None),
}
CLASSIFICATION = ["accuracy", "precision", "recall", "f1", "roc_auc"]
REGRESSION = ["mae", "rmse"]

NANNYML = textwrap.dedent("""
    import json, sys
    import nannyml
    import pandas as pd
    spec = json.loads(sys.argv[1])
    import warnings
    warnings.simplefilter("ignore")
    pd.set_option("future.infer_string", False)  # pandas 3's Arrow strings: NannyML 0.13's DLE cannot reshape them
    reference, analysis = pd.read_csv(spec["reference"]), pd.read_csv(spec["analysis"])
    if spec["task"] == "regression":
        estimator = nannyml.DLE(feature_column_names=spec["columns"] + spec["categorical"], y_pred="y_pred",
                                y_true=spec["target"], metrics=spec["metrics"], chunk_size=spec["chunk"])
    else:
        proba = dict(zip(spec["classes"], spec["columns"])) if spec["classes"] else spec["columns"][0]
        estimator = nannyml.CBPE(problem_type="classification_" + spec["task"], y_pred_proba=proba, y_pred="y_pred",
                                 y_true=spec["target"], metrics=spec["metrics"], chunk_size=spec["chunk"])
    estimator.fit(reference)
    frame = estimator.estimate(analysis).filter(period="analysis").to_df()
    print(json.dumps({m: {k: frame[(m, k)].tolist() for k in ("value", "lower_confidence_boundary",
                                                               "upper_confidence_boundary")} for m in spec["metrics"]}))
""")


def data_folder() -> str | None:
    python = peer_python("nannyml")
    if python is None:
        return None
    out = subprocess.run([python, "-c", "import os, nannyml.datasets.data as d; print(os.path.dirname(d.__file__))"],
                         capture_output=True, text=True, check=True, env={**os.environ, **NO_TELEMETRY})
    return out.stdout.strip()


def windows_of(folder: str, spec: tuple) -> tuple[pd.DataFrame, list[pd.DataFrame], int]:
    reference_file, analysis_file, labels_file, target = spec[:4]
    reference = pd.read_csv(os.path.join(folder, reference_file))
    analysis = pd.read_csv(os.path.join(folder, analysis_file)).merge(pd.read_csv(os.path.join(folder, labels_file)),
                                                                      on="id")
    chunk = len(analysis) // WINDOWS
    analysis = analysis.iloc[: chunk * WINDOWS]
    return reference, [analysis.iloc[i * chunk:(i + 1) * chunk] for i in range(WINDOWS)], chunk


def ours(reference: pd.DataFrame, windows: list[pd.DataFrame], spec: tuple) -> tuple[list[dict], list[dict]]:
    """Our estimates and the realized metrics, per window."""
    target, task, columns, classes = spec[3:]
    estimates, realized = [], []
    if task == "regression":
        model = direct_loss.fit(reference[columns].to_numpy(float), columns, reference["y_pred"], reference[target])
        for w in windows:
            estimates.append(model.estimate(w[columns].to_numpy(float), w["y_pred"].to_numpy(float)))
            realized.append(regression_metrics(w[target].to_numpy(float), w["y_pred"].to_numpy(float)))
        return estimates, realized
    labels = [as_label(v) for v in reference[target]]
    if task == "binary":
        model = estimation.fit(labels, reference[columns].to_numpy(float), classes=["0", "1"], positive="1")
    else:
        model = estimation.fit(labels, reference[columns].to_numpy(float), classes=classes)
    for w in windows:
        proba = w[columns].to_numpy(float)
        estimates.append(model.estimate(proba))
        y = np.array([as_label(v) for v in w[target]], dtype=object)
        if task == "binary":
            predicted = np.where(proba[:, 0] >= 0.5, "1", "0").astype(object)
            realized.append(classification_metrics(y, predicted, scores=proba[:, 0], positive="1"))
        else:
            predicted = np.array(classes, dtype=object)[proba.argmax(axis=1)]
            realized.append(classification_metrics(y, predicted, proba=proba, classes=classes))
    return estimates, realized


def theirs(folder: str, spec: tuple, chunk: int, metrics: list[str], analysis_rows: int) -> dict | None:
    python = peer_python("nannyml")
    if python is None:
        return None
    reference_file, analysis_file, labels_file, target, task, columns, classes = spec
    categorical = ["fuel", "transmission"] if task == "regression" else []
    request = {"reference": os.path.join(folder, reference_file), "analysis": os.path.join(folder, analysis_file),
               "target": target, "task": task, "columns": columns, "classes": classes, "categorical": categorical,
               "metrics": metrics, "chunk": chunk}
    out = subprocess.run([python, "-c", NANNYML, json.dumps(request)], capture_output=True, text=True,
                         env={**os.environ, **NO_TELEMETRY}, timeout=1800)
    if out.returncode != 0:
        print(f"(NannyML failed: {out.stderr.strip().splitlines()[-1]})")
        return None
    found = json.loads(out.stdout.strip().splitlines()[-1])
    return {m: {k: v[:WINDOWS] for k, v in values.items()} for m, values in found.items()}


def scored(rng: np.random.Generator, n: int, moved: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A calibrated scorer's rows: scores Beta(2, 2), a share ``moved`` of them Beta(8, 8) (next
    to the threshold: a worse model), each label drawn from its score."""
    scores = rng.beta(2, 2, n)
    scores = np.where(rng.random(n) < moved, rng.beta(8, 8, n), scores)
    return scores, np.where(rng.random(n) < scores, "1", "0")


def verdicts() -> None:
    print("\n## EstimatedPerformanceDrop: windows raising it (any metric)\n")
    print("| rows moved next to the threshold | realized accuracy | n | windows | raised | rate (95 % upper bound) |")
    print("|---:|---:|---:|---:|---:|---|")
    rng = np.random.default_rng(20261206)
    scores, labels = scored(rng, 20_000)
    model = estimation.fit(labels, scores[:, None], classes=["0", "1"], positive="1")
    schema = FeatureSchema(["prediction"], ["numeric"])
    for moved in (0.0, 0.25, 0.5):
        for n in (50, 100, 1000, 10_000):
            reps = 100 if n == 10_000 else 300
            raised, accuracy = 0, []
            for _ in range(reps):
                s, y = scored(rng, n, moved)
                accuracy.append(np.mean(np.where(s >= 0.5, "1", "0") == y))
                window = {"time": np.zeros(n), "numeric": s[:, None], "categorical": np.empty((n, 0), dtype=object)}
                _, dropped = estimated_performance(model, {}, schema, window, schema, (0.05, 0.10))
                raised += bool(dropped)
            print(f"| {moved:.0%} | {np.mean(accuracy):.3f} | {n:,} | {reps} | {raised} | {rate_and_bound(raised, reps)} |",
                  flush=True)


def cost() -> None:
    from mlmon_middleware import Baseline
    from mlmon_middleware.causes import importance_on_window
    from mlmon_middleware.drift.engine import compare
    from mlmon_middleware.drift.policy import DriftPolicy

    rng = np.random.default_rng(7)
    d, n = 100, 10_000
    names = [f"f{j}" for j in range(d)]
    reference, rows = rng.normal(size=(20_000, d)), rng.normal(size=(n, d))
    weights = rng.normal(size=d) / np.sqrt(d)
    baseline = Baseline.from_data(reference, features=names)
    scores_ref = 1 / (1 + np.exp(-reference @ weights))
    cbpe = estimation.fit((rng.random(20_000) < scores_ref).astype(int), scores_ref[:, None], classes=["0", "1"],
                          positive="1")
    predicted_ref = reference @ weights
    dle = direct_loss.fit(reference, names, predicted_ref, predicted_ref + rng.normal(scale=np.abs(reference[:, 0]) + 0.5))
    scores, predicted = 1 / (1 + np.exp(-rows @ weights)), rows @ weights
    window = {"time": np.arange(n, dtype=float), "numeric": rows, "categorical": np.empty((n, 0), dtype=object)}
    outputs = {"time": window["time"], "numeric": scores[:, None], "categorical": np.empty((n, 0), dtype=object)}
    policy = DriftPolicy()
    start = time.perf_counter()
    dle.estimate(rows[:10], predicted[:10])
    fit_seconds = time.perf_counter() - start
    steps = {"drift check": lambda: policy.judge(compare(baseline.features, baseline.schema, window)),
             "CBPE estimate": lambda: cbpe.estimate(scores[:, None]),
             "DLE estimate": lambda: dle.estimate(rows, predicted),
             "causes' permutation importance (5 drifted features)": lambda: importance_on_window(
                 window, baseline.schema, outputs, FeatureSchema(["prediction"], ["numeric"]), names[:5])}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(5):
        for name, step in steps.items():
            begin = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - begin)
    print(f"\n## Cost per check: {d} features × {n:,} rows, 5 interleaved rounds\n")
    print("| step | ms (median, range) | against the drift check (median, range) |")
    print("|---|---|---|")
    for name, values in times.items():
        ratios = [v / c for v, c in zip(values, times["drift check"])]
        print(f"| {name} | {np.median(values) * 1e3:.1f} ({min(values) * 1e3:.1f}–{max(values) * 1e3:.1f}) | "
              f"{np.median(ratios):.3f} ({min(ratios):.3f}–{max(ratios):.3f}) |")
    print(f"\nDLE's loss models, fitted once at the first check: {fit_seconds:.2f} s")


def main() -> int:
    print(f"# {time.strftime('%Y-%m-%d')} on {platform.node()}: {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}\n")
    folder = data_folder()
    if folder is None:
        print("NannyML's venv (and with it the data sets) is missing: run `make bench` first")
        return 1
    print("## Estimated against realized, per data set and metric (10 windows each)\n")
    print("| data | metric | rows per window | realized (range) | ours: MAE | ours: band covers | "
          "NannyML: MAE | NannyML: band covers |")
    print("|---|---|---:|---|---:|---:|---:|---:|")
    details = {}
    for name, spec in SETS.items():
        reference, windows, chunk = windows_of(folder, spec)
        metrics = REGRESSION if spec[4] == "regression" else CLASSIFICATION
        estimates, realized = ours(reference, windows, spec)
        peer = theirs(folder, spec, chunk, metrics, chunk * WINDOWS)
        for m in metrics:
            truth = np.array([r[m] for r in realized], dtype=float)
            mine = np.array([e[m]["value"] for e in estimates], dtype=float)
            covered = np.mean([e[m]["low"] <= t <= e[m]["high"] for e, t in zip(estimates, truth)])
            line = (f"| {name} | {m} | {chunk:,} | {truth.mean():.3f} ({truth.min():.3f}–{truth.max():.3f}) | "
                    f"{np.mean(np.abs(mine - truth)):.4f} | {covered:.0%} |")
            if peer is not None and m in peer:
                value = np.array(peer[m]["value"], dtype=float)
                low = np.array(peer[m]["lower_confidence_boundary"], dtype=float)
                high = np.array(peer[m]["upper_confidence_boundary"], dtype=float)
                line += f" {np.mean(np.abs(value - truth)):.4f} | {np.mean((low <= truth) & (truth <= high)):.0%} |"
            else:
                line += " – | – |"
            print(line, flush=True)
        details[name] = (estimates, realized, peer, metrics[0])
    for name in ("car loan", "car price (regression)"):
        estimates, realized, peer, m = details[name]
        print(f"\n## {name}: {m} per window\n")
        print("| window | realized | ours (band) | NannyML (band) |")
        print("|---:|---:|---|---|")
        for i, (e, r) in enumerate(zip(estimates, realized)):
            their = (f"{peer[m]['value'][i]:.3f} ({peer[m]['lower_confidence_boundary'][i]:.3f}–"
                     f"{peer[m]['upper_confidence_boundary'][i]:.3f})") if peer else "–"
            print(f"| {i + 1} | {r[m]:.3f} | {e[m]['value']:.3f} ({e[m]['low']:.3f}–{e[m]['high']:.3f}) | {their} |")
    verdicts()
    cost()
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
