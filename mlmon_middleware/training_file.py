"""A training file (CSV or Parquet) streamed into a :class:`~mlmon_middleware.Baseline`: what
``mlmon baseline build`` runs (:mod:`mlmon_middleware.cli`).

The file is read in chunks (pandas for CSV, pyarrow for Parquet: the ``[cli]`` extra), with a
progress bar on standard error (tqdm, also in the extra; without it the baseline is the same,
only the bar is missing), so memory stays near the reservoir sample plus one chunk whatever the
file's size. Every column but the target and the prediction is a feature; numeric columns are
numeric features unless named as categorical. A file whose name does not end in ``.parquet``
or ``.pq`` is read as CSV. A file that cannot be used is a :class:`BaselineError` naming it
and saying why, never a reader's traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from mlmon_middleware import direct_loss
from mlmon_middleware.baseline import Baseline, BaselineError
from mlmon_middleware.metrics import infer_task
from mlmon_middleware.profile import Profiler
from mlmon_middleware.schema import CATEGORICAL, NUMERIC, FeatureSchema
from mlmon_middleware.values import category_key

EXTRA = "pip install 'mlmon-middleware[cli]'"
PARQUET_MAGIC = b"PAR1"  # the first (and last) four bytes of a Parquet file


class MissingExtra(ImportError):
    """A library of the ``[cli]`` extra is not installed; the message says what needs it and
    how to install it."""


def _require(module: str, purpose: str, extra: str = EXTRA) -> None:
    """Import ``module`` now, before any work is done, or raise :class:`MissingExtra`.

    >>> _require("no_such_module_here", "testing")
    Traceback (most recent call last):
    ...
    mlmon_middleware.training_file.MissingExtra: testing needs no_such_module_here: pip install 'mlmon-middleware[cli]'
    """
    try:
        importlib.import_module(module)
    except ImportError:
        raise MissingExtra(f"{purpose} needs {module.partition('.')[0]}: {extra}", name=module) from None


def cannot_open(what: str, path: str, exc: OSError) -> str:
    """Why ``path`` could not be opened, in a few words.

    >>> cannot_open("config file", "t.yml", FileNotFoundError(2, "No such file or directory"))
    "config file 't.yml' does not exist"
    """
    if isinstance(exc, FileNotFoundError):
        return f"{what} {path!r} does not exist"
    if isinstance(exc, IsADirectoryError):
        return f"{what} {path!r} is a directory, not a file"
    return f"{what} {path!r} cannot be read: {exc.strerror or exc}"


def _is_parquet(path: str) -> bool:
    return path.endswith((".parquet", ".pq"))


def _check_training_file(path: str) -> None:
    """Raise a :class:`BaselineError` naming ``path`` unless it is a file that can be opened, is
    not empty, and, named as CSV, is not a Parquet file (which the CSV reader would call
    undecodable text)."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(len(PARQUET_MAGIC))
    except OSError as exc:
        raise BaselineError(cannot_open("training file", path, exc)) from None
    if not magic:
        raise BaselineError(f"training file {path!r} is empty (0 bytes): it needs a header and at least one row")
    if magic == PARQUET_MAGIC and not _is_parquet(path):
        raise BaselineError(f"training file {path!r} is a Parquet file: name it .parquet or .pq to read it as one")


def _parquet_chunks(path: str, chunk_rows: int) -> Iterator[tuple[Any, float]]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    total, done = parquet.metadata.num_rows or 1, 0
    for batch in parquet.iter_batches(batch_size=chunk_rows):
        done += batch.num_rows
        yield batch.to_pandas(), done / total


def _csv_chunks(path: str, chunk_rows: int) -> Iterator[tuple[Any, float]]:
    import pandas as pd

    size = os.path.getsize(path) or 1
    with open(path, "rb") as handle:
        for chunk in pd.read_csv(handle, chunksize=chunk_rows, low_memory=False):
            yield chunk, min(handle.tell() / size, 1.0)


def _chunks(path: str, chunk_rows: int) -> Iterator[tuple[Any, float]]:
    """(DataFrame chunk, share of the file read so far) of a CSV or Parquet file. What its reader
    cannot parse, at the start or halfway through, is a :class:`BaselineError` naming the file."""
    # pandas' ParserError and EmptyDataError, pyarrow's ArrowInvalid and undecodable text are ValueErrors
    errors: tuple[type[Exception], ...] = (OSError, ValueError)
    kind, read = "CSV", _csv_chunks
    if _is_parquet(path):
        import pyarrow

        errors, kind, read = (*errors, pyarrow.ArrowException), "Parquet", _parquet_chunks
    try:
        yield from read(path, chunk_rows)
    except errors as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__  # one line
        raise BaselineError(f"training file {path!r} cannot be read as {kind}: {reason}") from None


def _category(value: object) -> str | None:
    """A file's categorical value as requests will name it (dates and other types by their text)."""
    try:
        return category_key(value)
    except (TypeError, ValueError):
        return str(value)


def _matrices(frame: Any, schema: FeatureSchema) -> tuple[np.ndarray, np.ndarray]:
    """The numeric (NaN for missing or unparseable) and categorical (None for missing) matrices
    of a DataFrame's columns in ``schema``."""
    import pandas as pd

    n = len(frame)
    numeric = np.empty((n, len(schema.numeric_names)))
    for j, name in enumerate(schema.numeric_names):
        numeric[:, j] = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    categorical = np.empty((n, len(schema.categorical_names)), dtype=object)
    for j, name in enumerate(schema.categorical_names):
        column = frame[name]
        categorical[:, j] = [None if missing else _category(v) for v, missing in zip(column.tolist(), column.isna().tolist())]
    return numeric, categorical


def _schema(frame: Any, columns: Sequence[str], categorical: Sequence[str]) -> FeatureSchema:
    import pandas as pd

    kinds = [CATEGORICAL if c in categorical or not pd.api.types.is_numeric_dtype(frame[c]) else NUMERIC
             for c in columns]
    return FeatureSchema(columns, kinds)


def _progress_bar(path: str, enabled: bool) -> Any:
    """A progress bar on standard error, or None when ``enabled`` is false or tqdm is missing:
    tqdm only draws the bar, the baseline is the same without it, so its absence is a note
    rather than a reason to refuse the work."""
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        print(f"mlmon: note: no progress bar without tqdm ({EXTRA})", file=sys.stderr)
        return None
    return tqdm(total=100, unit="%", desc=f"profiling {os.path.basename(path)}", file=sys.stderr,
                bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}<{remaining}]")


class LabelledSample:
    """A uniform random sample of at most ``size`` (label, values) rows of a file read in
    chunks: each chunk's rows join the sample in the number a uniform sample of everything read
    so far would hold (a hypergeometric draw), so the sample never depends on the file's order."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size, self.seen = size, 0
        self.labels: np.ndarray = np.empty(0, dtype=object)
        self.values: np.ndarray = np.empty((0, 0))
        self._rng = np.random.default_rng(seed)

    def add(self, labels: np.ndarray, values: np.ndarray) -> None:
        keep = labels != None  # noqa: E711 (elementwise): a row without its label says nothing
        labels, values = labels[keep], values[keep]
        if not self.seen:
            self.values = np.empty((0, values.shape[1]))
        total = self.seen + len(labels)
        room = min(self.size, total)
        new = room - len(self.labels) if total <= self.size else int(self._rng.hypergeometric(len(labels), self.seen, room))
        old = room - new
        kept_old = np.sort(self._rng.choice(len(self.labels), old, replace=False))
        kept_new = np.sort(self._rng.choice(len(labels), new, replace=False))
        self.labels = np.concatenate([self.labels[kept_old], labels[kept_new]])
        self.values = np.vstack([self.values[kept_old], values[kept_new]])
        self.seen = total


def build_baseline(path: str, model: str, *, target: str | None = None, prediction: str | None = None,
                   categorical: Sequence[str] = (), bins: int = 10, sample_rows: int = 200_000,
                   chunk_rows: int = 100_000, progress: bool = True, proba: Sequence[str] = (),
                   positive: str = "1", threshold: float = 0.5) -> Baseline:
    """Stream ``path`` into a :class:`Baseline` (see the module docstring).

    With ``target`` (the labels) and ``proba`` (the model's probability columns: a binary
    model's positive-class score, or one column per class named as the class) the baseline
    also keeps the model's performance on the file and its label-free estimator
    (:mod:`~mlmon_middleware.estimation`, fitted on a uniform sample of ``sample_rows`` labelled
    rows; needs scikit-learn), and the probabilities are its predictions. With ``target`` and a
    ``prediction`` column of numbers (a regressor), it keeps the direct loss estimator's labelled
    rows instead (:mod:`~mlmon_middleware.direct_loss`).

    A file that cannot be used is a :class:`BaselineError` naming it and saying why (missing, a
    directory, unreadable, empty, no rows under its header, not parsable as CSV or Parquet,
    without a named column, or with no feature column); a missing pandas or pyarrow is a
    :class:`MissingExtra`.
    """
    _check_training_file(path)
    _require("pandas", "reading a training file")
    if _is_parquet(path):
        _require("pyarrow.parquet", "reading a Parquet file")
    no_rows = f"training file {path!r} has no data rows (a header at most): a baseline needs at least one row"
    chunks = _chunks(path, chunk_rows)
    try:
        first, share = next(chunks)
    except StopIteration:
        raise BaselineError(no_rows) from None
    if proba and prediction is not None:
        raise BaselineError("give --prediction or --proba, not both (the probabilities are the predictions)")
    if proba and target is None:
        raise BaselineError("--proba needs --labels: the estimator is calibrated on the labelled rows")
    if proba:  # before the file is read, which may take long
        _require("sklearn", "the label-free performance estimator (--proba)", extra="pip install 'mlmon-middleware[sklearn]'")
    named = [c for c in (target, prediction, *proba) if c is not None]
    missing = [c for c in [*named, *categorical] if c not in first.columns]
    if missing:
        raise BaselineError(f"training file {path!r} has no column {missing[0]!r}; columns: {list(first.columns)}")
    columns = [str(c) for c in first.columns if c not in named]
    if not columns:
        raise BaselineError(f"training file {path!r} has no feature column: its only columns are the labels and predictions")
    first.columns = [str(c) for c in first.columns]
    # what to read from each chunk (a schema of the file's columns) -> what accumulates it
    sources = [(_schema(first, columns, categorical), Profiler(_schema(first, columns, categorical), sample_rows))]
    outputs: dict[str, Profiler] = {}
    predicted = [prediction] if prediction else list(proba)
    for key, columns_read, names in (("predictions", predicted, ["prediction"] if len(predicted) == 1 else predicted),
                                     ("target", [target] if target else [], [target] if target else [])):
        if columns_read:  # the predictions named as the service's are captured
            read = _schema(first, columns_read, categorical)
            outputs[key] = Profiler(FeatureSchema(names, read.kinds), sample_rows, seed=len(sources))
            sources.append((read, outputs[key]))
    # what the label-free estimator learns from: the labels with the probabilities (CBPE), or with
    # the numeric features and the prediction (a regressor's DLE, if the labels are numbers)
    learnt = list(proba) if proba else [*sources[0][0].numeric_names, prediction] if target and prediction else []
    labelled = LabelledSample(sample_rows if proba else min(sample_rows, 4 * direct_loss.MAX_ROWS)) if learnt else None
    bar = _progress_bar(path, progress)
    chunk: Any = first
    try:
        while True:
            chunk.columns = [str(c) for c in chunk.columns]
            for read, profiler in sources:
                profiler.add(*_matrices(chunk, read))
            if labelled is not None:
                values = _matrices(chunk, FeatureSchema(learnt, [NUMERIC] * len(learnt)))[0]
                labelled.add(np.array([None if v != v else v for v in chunk[target].tolist()], dtype=object), values)
            if bar is not None:
                bar.update(share * 100 - bar.n)
            try:
                chunk, share = next(chunks)
            except StopIteration:
                break
    finally:  # an error then starts on a line of its own
        if bar is not None:
            bar.close()
    if sources[0][1].rows == 0:
        raise BaselineError(no_rows)
    baseline = Baseline.from_profilers(sources[0][1], outputs.get("predictions"), model=model, bins=bins)
    if "target" in outputs:  # the label's distribution, for label drift once labels arrive
        baseline.payload["target"] = outputs["target"].profiles(bins, 2000)
    if labelled is not None and proba:
        _add_estimator(baseline, labelled, proba, positive, threshold)
    elif labelled is not None and len(labelled.labels) and infer_task(labelled.labels.tolist()) == "regression":
        estimator = direct_loss.fit(labelled.values[:, :-1], learnt[:-1], labelled.values[:, -1],
                                    labelled.labels.astype(float))
        if estimator is not None:
            baseline.keep_estimator(estimator)
    return baseline


def _add_estimator(baseline: Baseline, labelled: LabelledSample, proba: Sequence[str], positive: str,
                   threshold: float) -> None:
    """Fit the label-free estimator on the labelled sample (its reference metrics become the
    baseline's performance), or say why there can be none."""
    from mlmon_middleware import estimation

    usable = np.isfinite(labelled.values).all(axis=1)
    if not usable.any():
        raise BaselineError(f"no row has both a label and every --proba column ({', '.join(proba)}) as numbers")
    outputs = ["prediction"] if len(proba) == 1 else list(proba)
    rows = labelled.values[usable].tolist()
    estimator = estimation.estimator_for(None, labelled.labels[usable].tolist(), rows, outputs, positive=positive,
                                         threshold=threshold)
    if estimator is None:
        raise BaselineError("no label-free estimator: --proba must hold probabilities in [0, 1] (not 0/1 labels), one "
                            "column for a binary model or one per class named as the class; the labels must be those "
                            "classes")
    baseline.keep_estimator(estimator)
