"""The prediction log's interface and rows, shared by its implementations (``store.SQLiteStore``,
``store_postgres.PostgresStore``): a module of its own so that ``store.open_store`` can import the
PostgreSQL one lazily without an import cycle. Import these names from :mod:`mlmon_middleware.store`.

>>> logged_prediction(("p1", "m", "1", 1.0, '{"prediction": 0.9}', "{}", None, "1", 2.0, None))["actual"]
1
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple, Protocol

import orjson

from mlmon_middleware.limits import valid_text
from mlmon_middleware.reports import LabelOutcome, LoggedPrediction


class LogRow(NamedTuple):
    """One prediction as the pipeline hands it to the log (JSON columns already encoded)."""

    prediction_id: str
    model: str
    version: str
    timestamp: float
    prediction: str  # JSON
    segments: str  # JSON: the segment features' values
    features: str | None  # JSON, redacted; None when the model logs no features
    explanation: str | None = None  # JSON: the explanation the response carried


class LabelledRow(NamedTuple):
    """A labelled prediction, as the performance windows read it."""

    prediction_id: str
    prediction: str  # JSON
    segments: str  # JSON
    label: Any
    timestamp: float
    label_timestamp: float


class NewLabel(NamedTuple):
    """A newly labelled prediction: the error stream of the concept-drift detectors."""

    prediction: str  # JSON
    label: Any
    timestamp: float
    label_timestamp: float
    seq: int  # the label batch it arrived in (increasing)


class LabelOutcomeRow(NamedTuple):
    """What became of one label: ``labelled``, ``relabelled`` (the latest wins) or ``unknown``."""

    prediction_id: str
    outcome: LabelOutcome
    delay: float | None  # seconds from the prediction to its label; None when unknown


class StoreError(RuntimeError):
    """The prediction log cannot be opened or written; the message says where and why."""


class StoreBusy(RuntimeError):
    """The prediction log cannot take a write just now (locked past its busy timeout, a full
    disk): nothing was half-applied, and the same call may be retried later."""


class LabelReader(Protocol):
    """What the analysis reads from the prediction log: labelled predictions and coverage."""

    def labelled(self, model: str, since: float, limit: int | None = None) -> list[LabelledRow]: ...

    def newly_labelled(self, model: str, after: int, limit: int = ...) -> list[NewLabel]: ...

    def counts(self, model: str, since: float) -> tuple[int, int]: ...


class PredictionStore(LabelReader, Protocol):
    """The prediction log: rows in, labels joined, rows looked up, old rows removed; the fleet
    leader's role and latest results, shared by every process using the same log."""

    # what a retry may cure (a lock, a full disk, a lost connection); anything else is for good
    transient_errors: ClassVar[tuple[type[BaseException], ...]]
    #: whether processes on other hosts (replicas) may share this log: then its label-based
    #: checks are led by one of them (``try_lead``) and the others read its ``results``
    shared_by_replicas: ClassVar[bool]

    def write(self, rows: Sequence[LogRow]) -> None: ...

    def set_labels(self, model: str, items: Sequence[tuple[str, Any, float]]) -> list[LabelOutcomeRow]: ...

    def lookup(self, model: str, prediction_id: str) -> LoggedPrediction | None: ...

    def recent(self, model: str, limit: int, explained: bool = False) -> list[LoggedPrediction]: ...

    def apply_retention(self, max_age: float | None, max_rows: int | None) -> int: ...

    def try_lead(self, role: str) -> bool: ...

    def leads(self, role: str) -> bool: ...

    def put_result(self, model: str, kind: str, body: str) -> None: ...

    def get_result(self, model: str, kind: str) -> tuple[float, str] | None: ...

    def close(self) -> None: ...


#: newly labelled rows by label batch (``newly_labelled``), in both stores: labelled rows only,
#: so that logging a row (unlabelled) adds no entry; ``label_seq > ?`` implies the index's condition
LABELLED_INDEX = ("CREATE INDEX IF NOT EXISTS predictions_labelled_by_seq ON predictions (model, label_seq) "
                  "WHERE label_seq IS NOT NULL")
#: labels ``newly_labelled`` reads at most in one call (whole label batches: a batch may take it past)
NEW_LABELS = 100_000
#: the rows of the label batches after a given one, up to the batch that reaches a limit of rows,
#: in the order the predictions were made (parameters: model, after, model, after, limit; ``%s``
#: as psycopg writes them, ``?`` for SQLite)
NEWLY_LABELLED = ("SELECT prediction, label, ts, label_ts, label_seq FROM predictions "
                  "WHERE model = %s AND label_seq > %s AND label_seq <= (SELECT max(label_seq) FROM "
                  "(SELECT label_seq FROM predictions WHERE model = %s AND label_seq > %s ORDER BY label_seq LIMIT %s) AS first) "
                  "ORDER BY ts")
# the columns of a logged prediction, in the order logged_prediction() reads them
COLUMNS = "prediction_id, model, version, ts, prediction, segments, features, label, label_ts, explanation"


def logged_prediction(row: Sequence[Any]) -> LoggedPrediction:
    """A row of ``COLUMNS`` as the dict the API returns (JSON columns decoded)."""
    pid, model, version, ts, prediction, segments, features, label, label_ts, explanation = row
    return {"prediction_id": pid, "model": model, "version": version, "timestamp": ts, "prediction": _decode(prediction),
            "segments": _decode(segments), "features": _decode(features), "actual": _decode(label),
            "label_timestamp": label_ts, "explanation": _decode(explanation)}


def _decode(text: str | None) -> Any:
    return None if text is None else decode_json(text)


def decode_json(text: str) -> Any:
    """A JSON column of the log as Python values. A log written before lone surrogates were
    escaped (``log_rows._json``) may hold a ``\\ud800`` escape, which orjson refuses: such a
    row is read by the standard library, its text made valid as the writer now makes it.

    >>> decode_json('{"a": [1, "x"]}'), decode_json('{"eu\\\\ud800": "fr\\\\udfff"}') == {"eu\\\\ud800": "fr\\\\udfff"}
    ({'a': [1, 'x']}, True)
    """
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        try:
            return _valid(json.loads(text, parse_int=_as_orjson_reads))
        except RecursionError:  # deeper than the writer ever nests
            return None


def _as_orjson_reads(digits: str) -> int | float:
    """An integer as orjson reads one: past 64 bits, a float (so that answers can be written)."""
    value = int(digits)
    return value if -2**63 <= value < 2**64 else float(digits)


def _valid(value: Any) -> Any:
    if isinstance(value, str):
        return value if value.isascii() else valid_text(value)
    if isinstance(value, list):
        return [_valid(v) for v in value]
    if isinstance(value, dict):
        return {_valid(k): _valid(v) for k, v in value.items()}
    return value
