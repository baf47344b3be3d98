"""Baseline: the reference profile of a model's inputs and predictions, saved as a versioned file.

Built once from training (or validation) data and shipped with the model, it holds per feature
what the drift and quality checks compare production against: the kind, quantile bin edges and
the share of rows in each bin (for PSI and the fleet-wide bin counters), a bounded random
sample (for KS and Wasserstein), min/max, missing rate and category frequencies; the same for
each prediction output; and the row count, a schema hash, the creation time and the package
version.

>>> import numpy as np, tempfile, os
>>> rng = np.random.default_rng(0)
>>> rows = [{"age": float(a), "region": r} for a, r in zip(rng.normal(40, 10, 500), rng.choice(["eu", "us"], 500))]
>>> base = Baseline.from_data(rows, predictions=rng.random(500), model="demo")
>>> base.schema
FeatureSchema(['age', 'region'], ['numeric', 'categorical'])
>>> len(base.features["age"]["bin_proportions"]), round(sum(base.features["age"]["bin_proportions"]), 9)
(10, 1.0)
>>> path = os.path.join(tempfile.mkdtemp(), "baseline.json")
>>> base.save(path)
>>> Baseline.load(path).schema_hash == base.schema_hash
True
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from mlmon_middleware import direct_loss, estimation
from mlmon_middleware._version import __version__
from mlmon_middleware.drift import classifier, multivariate
from mlmon_middleware.payload import CaptureError, extract_rows
from mlmon_middleware.profile import Profiler
from mlmon_middleware.reports import BaselineSummary
from mlmon_middleware.schema import CATEGORICAL, FeatureSchema

FORMAT = "mlmon-baseline"
FORMAT_VERSION = 2  # 2: categories named by values.category_key; numeric reference grids
NO_ROWS = "no rows to profile: a baseline needs at least one row"


class BaselineError(ValueError):
    """A baseline file or its data cannot be used; the message says which and why."""


def schema_hash(schema: FeatureSchema) -> str:
    """A short stable hash of feature names and kinds, to tell baselines of other schemas apart."""
    text = "\n".join(f"{n}:{k}" for n, k in zip(schema.names, schema.kinds))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Baseline:
    """Reference profile of one model. Build with :meth:`from_data`, persist with :meth:`save`
    and :meth:`load`. ``payload`` is the file's content, with each numeric feature's reference
    grid (``sample``) and the explainers' ``background`` as float64 arrays: :meth:`to_json` gives
    its JSON."""

    def __init__(self, payload: Mapping[str, Any]) -> None:
        self.payload = dict(payload)
        # the samples as float64 arrays, not lists of floats: 8 bytes a value instead of 32
        self.features: dict[str, dict[str, Any]] = _compact(self.payload["features"])
        self.predictions: dict[str, dict[str, Any]] = _compact(self.payload.get("predictions") or {})
        self.payload["features"] = self.features
        if self.predictions:
            self.payload["predictions"] = self.predictions
        self.schema = FeatureSchema(list(self.features), [f["kind"] for f in self.features.values()])
        self.schema_hash: str = self.payload["schema_hash"]
        self.model: str | None = self.payload.get("model")
        self.row_count: int = self.payload["row_count"]
        self.created_at: str = self.payload["created_at"]
        self.warmup: bool = bool(self.payload.get("warmup", False))
        found = self.payload.get("multivariate")
        #: the PCA reconstruction of the numeric features (:mod:`~mlmon_middleware.drift.multivariate`);
        #: None for a baseline without one (fewer than 2 numeric features, or built before it existed)
        self.pca = multivariate.PCAModel.from_dict(found) if found else None
        found = self.payload.get("estimation")
        #: the label-free performance estimator (:mod:`~mlmon_middleware.estimation`); None without one
        self.estimator: estimation.CBPE | direct_loss.DLE | None = None
        if found:
            self.estimator = (direct_loss.DLE if found.get("method") == "dle" else estimation.CBPE).from_dict(found)
        found = self.payload.get("domain_classifier")
        #: the reference rows of the domain classifier (:mod:`~mlmon_middleware.drift.classifier`);
        #: None for a baseline without them (fewer than 2 numeric features, or built before it existed)
        self.classifier = classifier.ClassifierReference.from_dict(found) if found else None
        if self.classifier is not None:  # the rows as an array, as the samples: 8 bytes a value
            self.payload["domain_classifier"] = self.classifier.to_dict()
        #: up to 200 whole rows of the numeric features (schema order), for explainers
        background = self.payload.get("background")
        self.background = np.asarray(background if background is not None else [], dtype=float)
        if background is not None:
            self.payload["background"] = self.background

    @classmethod
    def from_data(cls, data: Any, *, features: Sequence[str] | None = None, predictions: Any = None,
                  categorical: Sequence[str] = (), model: str | None = None, bins: int = 10,
                  sample_size: int = 2000, seed: int = 0, labels: Any = None, task: str | None = None,
                  positive: Any = 1, threshold: float = 0.5, proba: Sequence[str] | None = None) -> Baseline:
        """Profile ``data`` (a pandas DataFrame, a 2-D array or a list of dicts).

        ``features`` picks and orders the columns (default: all but a prediction column);
        ``predictions`` is a column name in ``data`` or the predictions themselves (a sequence,
        or an (n × k) array of class probabilities); ``categorical`` forces kinds. With
        ``labels`` (validation data's ground truth) the baseline also keeps the model's
        performance on it, the reference for degradation alerts (``task``, ``positive`` and
        ``threshold`` as in :class:`~mlmon_middleware.performance.PerformanceTracker`), and a
        classifier's label-free estimator (:mod:`~mlmon_middleware.estimation`, with scikit-learn
        installed). ``proba`` names the columns of ``data`` holding the model's probabilities: a
        binary model's positive-class score (one column, captured from the service as
        ``prediction``), or one column per class, named as the class (multiclass: the service's
        ``class_names``, or the keys of the dict it answers); they are the predictions. Data without
        rows is refused (:class:`BaselineError`), as by :meth:`from_profilers`.
        """
        try:
            rows = extract_rows(data)
        except CaptureError as exc:
            if exc.reason == "empty_input":
                raise BaselineError(NO_ROWS) from None
            raise
        pred_values = None
        if proba:
            if predictions is not None:
                raise BaselineError("give predictions or proba columns, not both")
            missing = [c for c in proba if not isinstance(rows[0], Mapping) or c not in rows[0]]
            if missing:
                raise BaselineError(f"probability column(s) {', '.join(map(repr, missing))} not in the data")
            pred_values = [[r[c] for c in proba] for r in rows]
        elif isinstance(predictions, str):
            if not isinstance(rows[0], Mapping) or predictions not in rows[0]:
                raise BaselineError(f"prediction column {predictions!r} is not in the data")
            pred_values = [r[predictions] for r in rows]
        elif predictions is not None:
            pred_values = np.asarray(predictions).tolist() if hasattr(predictions, "__array__") else list(predictions)
            if len(pred_values) != len(rows):
                raise BaselineError(f"{len(pred_values)} predictions for {len(rows)} rows")
        if features is None and isinstance(rows[0], Mapping):
            outputs_in_data = {predictions} if isinstance(predictions, str) else set(proba or ())
            features = [k for k in rows[0] if k not in outputs_in_data]
        kinds = {name: CATEGORICAL for name in categorical}
        schema = FeatureSchema.infer(rows, names=features, kinds=kinds)
        outputs = None
        if pred_values is not None:
            pred_rows = [v if isinstance(v, list) else [v] for v in pred_values]
            # named as the service's outputs are captured: a score is "prediction", class probabilities
            # are named by their classes (the proba columns)
            names = ["prediction"] if len(pred_rows[0]) == 1 else list(proba) if proba else \
                [f"class_{i}" for i in range(len(pred_rows[0]))]
            pred_schema = FeatureSchema.infer(pred_rows, names=names)
            outputs = (pred_schema, pred_schema.encode(pred_rows))
        baseline = cls.from_encoded(schema, schema.encode(rows), outputs, model=model, bins=bins,
                                    sample_size=sample_size, seed=seed)
        if labels is not None:
            from mlmon_middleware.metrics import compute_metrics, first_number, infer_task

            if pred_values is None:
                raise BaselineError("labels need predictions to measure the model's performance")
            labels = np.asarray(labels).tolist() if hasattr(labels, "__array__") else list(labels)
            if len(labels) != len(rows):
                raise BaselineError(f"{len(labels)} labels for {len(rows)} rows")
            output_names: Sequence[str] = outputs[0].names if outputs else ("prediction",)
            preds = [dict(zip(output_names, v if isinstance(v, list) else [v])) for v in pred_values]
            metrics = compute_metrics(task, preds, labels, positive=positive, threshold=threshold)
            baseline.payload["performance"] = {k: v for k, v in metrics.items() if k != "count" and v is not None}
            estimator = direct_loss.fit(schema.encode(rows).numeric, schema.numeric_names, [first_number(p) for p in preds],
                                        labels) if (task or infer_task(labels)) == "regression" else \
                estimation.estimator_for(task, labels, pred_values, list(output_names), positive=positive, threshold=threshold)
            if estimator is not None:
                baseline.keep_estimator(estimator)
        return baseline

    def keep_estimator(self, estimator: estimation.CBPE | direct_loss.DLE) -> None:
        """Keep a label-free performance estimator (in the file and as :attr:`estimator`); its
        reference metrics become the baseline's performance when it has none."""
        self.payload["estimation"] = estimator.to_dict()
        self.payload.setdefault("performance", dict(estimator.reference))
        self.estimator = estimator

    @classmethod
    def from_encoded(cls, schema: FeatureSchema, encoded: Any, outputs: tuple[FeatureSchema, Any] | None = None, *,
                     model: str | None = None, bins: int = 10, sample_size: int = 2000, seed: int = 0,
                     warmup: bool = False) -> Baseline:
        """Profile already-encoded rows (anything with ``numeric`` and ``categorical`` matrices,
        such as :class:`~mlmon_middleware.schema.Encoded`); ``outputs`` likewise for predictions.
        ``warmup=True`` marks a baseline built from the first production rows."""
        features = Profiler(schema, sample_rows=max(len(encoded.numeric), 1), seed=seed)
        features.add(encoded.numeric, encoded.categorical)
        predictions = None
        if outputs:
            predictions = Profiler(outputs[0], sample_rows=max(len(outputs[1].numeric), 1), seed=seed + 1)
            predictions.add(outputs[1].numeric, outputs[1].categorical)
        return cls.from_profilers(features, predictions, model=model, bins=bins, sample_size=sample_size,
                                  seed=seed, warmup=warmup)

    @classmethod
    def from_profilers(cls, features: Profiler, predictions: Profiler | None = None, *, model: str | None = None,
                       bins: int = 10, sample_size: int = 2000, seed: int = 0, warmup: bool = False) -> Baseline:
        """The baseline of what two :class:`~mlmon_middleware.profile.Profiler` accumulated (the
        streaming path of ``mlmon baseline build``). A profiler of no rows is refused: its
        baseline would hold no distribution, and every window would be judged unchanged from it.

        >>> Baseline.from_profilers(Profiler(FeatureSchema(["x"])))
        Traceback (most recent call last):
        ...
        mlmon_middleware.baseline.BaselineError: no rows to profile: a baseline needs at least one row
        """
        if features.rows == 0:
            raise BaselineError(NO_ROWS)
        if bins < 2:
            raise BaselineError(f"bins must be >= 2, got {bins}")
        rng = np.random.default_rng(seed)
        profiles = features.profiles(bins, sample_size)
        pred_profiles = predictions.profiles(bins, sample_size) if predictions and predictions.rows else {}
        background = features.background(200, rng)
        pca = multivariate.fit(features.numeric_rows(), features.schema.numeric_names, seed=seed)
        reference = classifier.fit(features.numeric_rows(), features.schema.numeric_names, seed=seed)
        return cls({
            "format": FORMAT, "format_version": FORMAT_VERSION, "model": model,
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "mlmon_version": __version__, "row_count": features.rows, "schema_hash": schema_hash(features.schema),
            "warmup": warmup, "features": profiles, "predictions": pred_profiles,
            "background": background, "multivariate": None if pca is None else pca.to_dict(),
            "domain_classifier": None if reference is None else reference.to_dict(),
        })

    def to_json(self, indent: bool = False) -> bytes:
        """The baseline as the JSON of its file (arrays written as lists)."""
        return orjson.dumps(self.payload, option=orjson.OPT_SERIALIZE_NUMPY | (orjson.OPT_INDENT_2 if indent else 0))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the baseline as JSON (atomically: a reader never sees half a file, and a failed
        write, such as a full disk or ``path`` naming a directory, leaves no partial file)."""
        tmp = f"{os.fspath(path)}.tmp-{os.getpid()}"
        try:
            with open(tmp, "wb") as fh:
                fh.write(self.to_json(indent=True))
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Baseline:
        """Read a baseline file, with a clear error for a missing, corrupt, foreign or newer file."""
        try:
            with open(path, "rb") as fh:
                payload = orjson.loads(fh.read())
        except FileNotFoundError:
            raise BaselineError(f"baseline file {os.fspath(path)!r} does not exist") from None
        except orjson.JSONDecodeError as exc:
            raise BaselineError(f"baseline file {os.fspath(path)!r} is corrupt (not JSON: {exc})") from None
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise BaselineError(f"{os.fspath(path)!r} is not an mlmon baseline (no \"format\": {FORMAT!r})")
        version = payload.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise BaselineError(f"{os.fspath(path)!r} has format_version {version!r}; this mlmon "
                                f"({__version__}) reads up to {FORMAT_VERSION}: upgrade mlmon-middleware")
        if version < 2:
            payload = _upgrade_categories(payload)
        try:
            baseline = cls(payload)
        except (KeyError, TypeError, ValueError) as exc:
            raise BaselineError(f"baseline file {os.fspath(path)!r} is corrupt: {exc!r}") from None
        if schema_hash(baseline.schema) != baseline.schema_hash:
            raise BaselineError(f"baseline file {os.fspath(path)!r} is corrupt: its schema hash does not match its features")
        return baseline

    def window_dtype(self, outputs: bool = False) -> type[np.floating[Any]]:
        """The dtype a window of this model's numeric features (``outputs``: predictions) can
        use: float32 (half the memory) when rounding to it keeps every reference value and bin
        edge distinct, in order and finite, so that no statistic can tell; float64 otherwise
        (timestamps, large identifiers, values closer than float32 can tell apart).

        >>> base = Baseline.from_data([{"x": float(v)} for v in range(100)])
        >>> base.window_dtype().__name__
        'float32'
        >>> Baseline.from_data([{"t": 1.7e9 + v} for v in range(100)]).window_dtype().__name__
        'float64'
        """
        for profile in (self.predictions if outputs else self.features).values():
            if profile.get("kind") != "numeric":
                continue
            extremes = [v for v in (profile.get("min"), profile.get("max")) if v is not None]
            for values in (profile.get("sample"), profile.get("bin_edges"), extremes):
                exact = np.unique(np.asarray(values if values is not None else [], dtype=np.float64))
                with np.errstate(over="ignore"):  # beyond float32's range: inf, and float64 it is
                    rounded = exact.astype(np.float32)
                if not np.isfinite(rounded).all() or len(np.unique(rounded)) != len(exact):
                    return np.float64
        return np.float32

    def summary(self) -> BaselineSummary:
        """What ``/mlmon/health`` shows of the baseline."""
        return {"model": self.model, "rows": self.row_count, "created_at": self.created_at,
                "features": len(self.features), "schema_hash": self.schema_hash, "warmup": self.warmup}

    def age_seconds(self) -> float:
        """Seconds since the baseline was created."""
        created = _dt.datetime.fromisoformat(self.created_at)
        return (_dt.datetime.now(_dt.timezone.utc) - created).total_seconds()


_OLD_WHOLE_NUMBER = re.compile(r"-?\d+\.0\Z")


def _compact(profiles: Mapping[str, Any]) -> dict[str, Any]:
    """Profiles whose ``sample`` (the KS/Wasserstein reference grid) is a float64 array; the
    caller's dicts are left as they are."""
    return {name: {**profile, "sample": np.asarray(profile["sample"], dtype=np.float64)}
            if isinstance(profile, dict) and isinstance(profile.get("sample"), list) else profile
            for name, profile in profiles.items()}


def _upgrade_categories(payload: dict[str, Any]) -> dict[str, Any]:
    """A version-1 baseline named categories by ``str()``: ``True`` and ``1.0`` where requests now
    say ``true`` and ``1`` (:func:`~mlmon_middleware.values.category_key`). Rename them the
    same way so that an upgrade does not turn every request into a new category."""
    def key(name: str) -> str:
        if name in ("True", "False"):
            return name.lower()
        return name[:-2] if _OLD_WHOLE_NUMBER.match(name) else name

    upgraded = dict(payload)
    for section in ("features", "predictions"):
        profiles = {}
        for feature, profile in (payload.get(section) or {}).items():
            if isinstance(profile, dict) and isinstance(profile.get("frequencies"), dict):
                renamed: dict[str, float] = {}
                for name, share in profile["frequencies"].items():
                    renamed[key(name)] = renamed.get(key(name), 0.0) + share
                profile = {**profile, "frequencies": renamed}
            profiles[feature] = profile
        upgraded[section] = profiles
    return upgraded
