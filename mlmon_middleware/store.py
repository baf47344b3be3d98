"""The prediction log: every monitored prediction, joined later with its ground truth.

``PredictionStore`` is the interface; :class:`SQLiteStore` the default implementation (one file,
WAL mode). Nothing here runs on the request path: the pipeline hands rows to a
:class:`~mlmon_middleware.store_writer.StoreWriter`, whose thread inserts them in batches every ``interval`` seconds (0.5 by
default; with the pipeline's 0.5 s, at most about 1 s of predictions is lost to a ``kill -9``).
The writer's queue is bounded: when full, the oldest rows are dropped and counted.

A row (:class:`LogRow`): prediction id, model, version, timestamp, the prediction (JSON),
segment values (JSON), the feature row (JSON, optional, with redaction), the explanation, and
once it arrives the label and its timestamp. Reads return named rows (:class:`LabelledRow`,
:class:`NewLabel`) or :class:`~mlmon_middleware.reports.LoggedPrediction` dicts. Labels are set
with :meth:`PredictionStore.set_labels`: the same id twice keeps the latest; unknown ids are
reported per item.

>>> import tempfile, os
>>> store = SQLiteStore(os.path.join(tempfile.mkdtemp(), "log.db"))
>>> store.write([LogRow("p1", "fraud", "1", 100.0, '{"prediction": 0.9}', "{}", None)])
>>> [tuple(r) for r in store.set_labels("fraud", [("p1", 1, 160.0), ("nope", 0, 160.0)])]
[('p1', 'labelled', 60.0), ('nope', 'unknown', None)]
>>> row = store.labelled("fraud", since=0.0)[0]
>>> row.prediction, row.segments, row.label
('{"prediction": 0.9}', '{}', 1)
>>> found = store.lookup("fraud", "p1")
>>> found["prediction"], found["actual"], found["explanation"]
({'prediction': 0.9}, 1, None)
>>> store.close()
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import orjson

from mlmon_middleware.reports import LabelOutcome, LoggedPrediction

logger = logging.getLogger("mlmon_middleware")


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

    def newly_labelled(self, model: str, after: int) -> list[NewLabel]: ...

    def counts(self, model: str, since: float) -> tuple[int, int]: ...


class PredictionStore(LabelReader, Protocol):
    """The prediction log: rows in, labels joined, rows looked up, old rows removed."""

    def write(self, rows: Sequence[LogRow]) -> None: ...

    def set_labels(self, model: str, items: Sequence[tuple[str, Any, float]]) -> list[LabelOutcomeRow]: ...

    def lookup(self, model: str, prediction_id: str) -> LoggedPrediction | None: ...

    def recent(self, model: str, limit: int, explained: bool = False) -> list[LoggedPrediction]: ...

    def apply_retention(self, max_age: float | None, max_rows: int | None) -> int: ...

    def close(self) -> None: ...


SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    prediction_id TEXT NOT NULL,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    ts REAL NOT NULL,
    prediction TEXT NOT NULL,
    segments TEXT NOT NULL,
    features TEXT,
    label TEXT,
    label_ts REAL,
    label_updates INTEGER NOT NULL DEFAULT 0,
    explanation TEXT,
    label_seq INTEGER,
    PRIMARY KEY (model, prediction_id)
);
CREATE TABLE IF NOT EXISTS label_batches (
    model TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS predictions_by_time ON predictions (model, ts);
CREATE INDEX IF NOT EXISTS predictions_by_label_time ON predictions (model, label_ts);
"""


class SQLiteStore:
    """A :class:`PredictionStore` in one SQLite file (WAL mode); thread-safe."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        folder = os.path.dirname(self.path) or "."
        try:
            os.makedirs(folder, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=5.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(predictions)")}
            for column, kind in (("explanation", "TEXT"), ("label_seq", "INTEGER")):
                if column not in columns:  # a log written by an earlier version
                    try:
                        self._db.execute(f"ALTER TABLE predictions ADD COLUMN {column} {kind}")
                    except sqlite3.OperationalError as exc:  # another worker upgraded it first
                        if "duplicate column" not in str(exc):
                            raise
            self._db.execute("CREATE INDEX IF NOT EXISTS predictions_by_label_seq ON predictions (model, label_seq)")
            self._db.execute("SELECT count(*) FROM predictions LIMIT 1").fetchone()
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"prediction log {self.path!r} cannot be used: {exc} "
                             f"(set store_dir / MLMON_STORE_DIR to a writable folder, or remove a corrupt file)") from None
        self._lock = threading.Lock()

    def write(self, rows: Sequence[LogRow]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    "INSERT OR REPLACE INTO predictions (prediction_id, model, version, ts, prediction, segments, features,"
                    " explanation) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def set_labels(self, model: str, items: Sequence[tuple[str, Any, float]]) -> list[LabelOutcomeRow]:
        """Set labels ``(prediction id, actual, label time)``; per item ``(id, outcome, delay)``
        with outcome ``labelled``, ``relabelled`` (had a label: the latest wins) or ``unknown``."""
        out: list[LabelOutcomeRow] = []
        with self._lock:
            self._db.execute("BEGIN")
            try:
                # the order labels arrived in, whatever times they carry: readers of new labels follow
                # it. A counter of its own, so that retention deleting rows never makes it go back.
                self._db.execute("INSERT INTO label_batches (model, seq) VALUES (?, 1) "
                                 "ON CONFLICT (model) DO UPDATE SET seq = seq + 1", (model,))
                seq = self._db.execute("SELECT seq FROM label_batches WHERE model = ?", (model,)).fetchone()[0]
                for pid, actual, when in items:
                    found = self._db.execute("SELECT ts, label_updates FROM predictions WHERE model = ? AND prediction_id = ?",
                                             (model, pid)).fetchone()
                    if found is None:
                        out.append(LabelOutcomeRow(pid, "unknown", None))
                        continue
                    self._db.execute("UPDATE predictions SET label = ?, label_ts = ?, label_updates = label_updates + 1, "
                                     "label_seq = ? WHERE model = ? AND prediction_id = ?",
                                     (orjson.dumps(actual).decode(), when, seq, model, pid))
                    out.append(LabelOutcomeRow(pid, "relabelled" if found[1] else "labelled", when - found[0]))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return out

    def labelled(self, model: str, since: float, limit: int | None = None) -> list[LabelledRow]:
        """Labelled predictions made at or after ``since``, oldest first (the last ``limit`` when given)."""
        query = ("SELECT prediction_id, prediction, segments, label, ts, label_ts FROM predictions "
                 "WHERE model = ? AND ts >= ? AND label IS NOT NULL ORDER BY ts DESC")
        params: tuple[Any, ...] = (model, since)
        if limit is not None:
            query += " LIMIT ?"
            params += (limit,)
        with self._lock:
            rows = self._db.execute(query, params).fetchall()
        return [LabelledRow(pid, p, s, orjson.loads(label), ts, lts) for pid, p, s, label, ts, lts in reversed(rows)]

    def newly_labelled(self, model: str, after: int) -> list[NewLabel]:
        """Predictions whose label arrived after label batch ``after`` (a ``NewLabel.seq``; 0 for
        all), in the order they were made: the error stream for concept-drift detectors. Arrival
        order, not the labels' own timestamps, so back-dated labels are never skipped."""
        with self._lock:
            rows = self._db.execute("SELECT prediction, label, ts, label_ts, label_seq FROM predictions "
                                    "WHERE model = ? AND label_seq > ? ORDER BY ts", (model, after)).fetchall()
        return [NewLabel(p, orjson.loads(label), ts, lts, seq) for p, label, ts, lts, seq in rows]

    def counts(self, model: str, since: float) -> tuple[int, int]:
        """(predictions, labelled predictions) made at or after ``since``: label coverage."""
        with self._lock:
            total, labelled = self._db.execute(
                "SELECT count(*), count(label) FROM predictions WHERE model = ? AND ts >= ?", (model, since)).fetchone()
        return int(total), int(labelled)

    def lookup(self, model: str, prediction_id: str) -> LoggedPrediction | None:
        """One logged prediction as a dict (JSON columns decoded), or None when not logged."""
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM predictions WHERE model = ? AND prediction_id = ?",
                                   (model, prediction_id)).fetchone()
        return None if row is None else _as_dict(row)

    def recent(self, model: str, limit: int, explained: bool = False) -> list[LoggedPrediction]:
        """The newest ``limit`` logged predictions, newest first (only explained ones if asked)."""
        where = " AND explanation IS NOT NULL" if explained else ""
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM predictions WHERE model = ?{where} ORDER BY ts DESC LIMIT ?",
                                    (model, limit)).fetchall()
        return [_as_dict(r) for r in rows]

    def apply_retention(self, max_age: float | None, max_rows: int | None) -> int:
        """Delete rows older than ``max_age`` seconds, and beyond the newest ``max_rows`` per model."""
        deleted = 0
        with self._lock:
            if max_age is not None:
                deleted += self._db.execute("DELETE FROM predictions WHERE ts < ?", (time.time() - max_age,)).rowcount
            if max_rows is not None:
                for (model,) in self._db.execute("SELECT DISTINCT model FROM predictions").fetchall():
                    cutoff = self._db.execute("SELECT ts FROM predictions WHERE model = ? ORDER BY ts DESC LIMIT 1 OFFSET ?",
                                              (model, max_rows)).fetchone()
                    if cutoff is not None:
                        deleted += self._db.execute("DELETE FROM predictions WHERE model = ? AND ts <= ?",
                                                    (model, cutoff[0])).rowcount
        return deleted

    def close(self) -> None:
        with self._lock:
            self._db.close()


_COLUMNS = "prediction_id, model, version, ts, prediction, segments, features, label, label_ts, explanation"


def _as_dict(row: tuple[Any, ...]) -> LoggedPrediction:
    pid, model, version, ts, prediction, segments, features, label, label_ts, explanation = row
    return {"prediction_id": pid, "model": model, "version": version, "timestamp": ts, "prediction": _decode(prediction),
            "segments": _decode(segments), "features": _decode(features), "actual": _decode(label),
            "label_timestamp": label_ts, "explanation": _decode(explanation)}


def _decode(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)
