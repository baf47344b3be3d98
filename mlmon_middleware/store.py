"""The prediction log: every monitored prediction, joined later with its ground truth.

``PredictionStore`` is the interface; :class:`SQLiteStore` the default implementation (one file,
WAL mode), ``store_postgres.PostgresStore`` the one that many replicas share (a ``postgresql://``
URL; :func:`open_store` picks by location). Nothing here runs on the request path: the pipeline hands rows to a
:class:`~mlmon_middleware.store_writer.StoreWriter`, whose thread inserts them in batches every ``interval`` seconds (0.5 by
default; with the pipeline's 0.5 s, at most about 1 s of predictions is lost to a ``kill -9``).
The writer's queue is bounded: when full, the oldest rows are dropped and counted.

A row (:class:`LogRow`): prediction id, model, version, timestamp, the prediction (JSON),
segment values (JSON), the feature row (JSON, optional, with redaction), the explanation, and
once it arrives the label and its timestamp. Reads return named rows (:class:`LabelledRow`,
:class:`NewLabel`) or :class:`~mlmon_middleware.reports.LoggedPrediction` dicts. Labels are set
with :meth:`PredictionStore.set_labels`: the same id twice keeps the latest; unknown ids are
reported per item. Beside the predictions, a ``results`` table holds each model's latest report
by kind (the fleet leader's, for the other replicas to read); ``try_lead`` says whether this
process leads a role among all those sharing the log (always, for a file on one host).

>>> import tempfile, os
>>> store = open_store(os.path.join(tempfile.mkdtemp(), "log.db"))
>>> store.write([LogRow("p1", "fraud", "1", 100.0, '{"prediction": 0.9}', "{}", None)])
>>> [tuple(r) for r in store.set_labels("fraud", [("p1", 1, 160.0), ("nope", 0, 160.0)])]
[('p1', 'labelled', 60.0), ('nope', 'unknown', None)]
>>> row = store.labelled("fraud", since=0.0)[0]
>>> row.prediction, row.segments, row.label
('{"prediction": 0.9}', '{}', 1)
>>> found = store.lookup("fraud", "p1")
>>> found["prediction"], found["actual"], found["explanation"]
({'prediction': 0.9}, 1, None)
>>> store.put_result("fraud", "performance", '{"accuracy": 1.0}')
>>> store.get_result("fraud", "performance")[1], store.try_lead("labels")
('{"accuracy": 1.0}', True)
>>> store.close()
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import orjson

from mlmon_middleware.reports import LoggedPrediction
from mlmon_middleware.store_types import (
    COLUMNS,
    LABELLED_INDEX,
    NEW_LABELS,
    NEWLY_LABELLED,
    LabelledRow,
    LabelOutcomeRow,
    LabelReader,
    LogRow,
    NewLabel,
    PredictionStore,
    StoreBusy,
    StoreError,
    logged_prediction,
)

__all__ = ["LabelOutcomeRow", "LabelReader", "LabelledRow", "LogRow", "NewLabel", "PredictionStore", "SQLiteStore",
           "StoreBusy", "StoreError", "open_store"]

_NEWLY_LABELLED = NEWLY_LABELLED.replace("%s", "?")  # SQLite's placeholders

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
CREATE TABLE IF NOT EXISTS results (
    model TEXT NOT NULL,
    kind TEXT NOT NULL,
    updated REAL NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (model, kind)
);
CREATE INDEX IF NOT EXISTS predictions_by_time ON predictions (model, ts);
"""


class SQLiteStore:
    """A :class:`PredictionStore` in one SQLite file (WAL mode); thread-safe."""

    transient_errors: ClassVar[tuple[type[BaseException], ...]] = (sqlite3.OperationalError,)  # locked, disk full, I/O
    shared_by_replicas: ClassVar[bool] = False  # one host's file

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        folder = os.path.dirname(self.path) or "."
        try:
            os.makedirs(folder, mode=0o700, exist_ok=True)  # a folder made here: the owner's only
            # the log holds the inputs: a new file is the owner's only (SQLite gives its WAL and
            # shared-memory files the same permissions); an existing one keeps what it has
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
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
            # Every index is a B-tree insert for each row logged. Earlier versions had two on the
            # label columns: one no query uses (model, label_ts), and one whose every new row, still
            # unlabelled, paid for an entry. Only labelled rows are looked up by label_seq.
            self._db.execute("DROP INDEX IF EXISTS predictions_by_label_time")
            self._db.execute("DROP INDEX IF EXISTS predictions_by_label_seq")
            self._db.execute(LABELLED_INDEX)
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

    def newly_labelled(self, model: str, after: int, limit: int = NEW_LABELS) -> list[NewLabel]:
        """Predictions whose label arrived after label batch ``after`` (a ``NewLabel.seq``; 0 for
        all), in the order they were made: the error stream for concept-drift detectors. Arrival
        order, not the labels' own timestamps, so back-dated labels are never skipped. Whole label
        batches, the first to reach ``limit`` rows (a backfill of millions is read a part at a
        time: the next call goes on after the last batch returned)."""
        with self._lock:
            rows = self._db.execute(_NEWLY_LABELLED, (model, after, model, after, limit)).fetchall()
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
            row = self._db.execute(f"SELECT {COLUMNS} FROM predictions WHERE model = ? AND prediction_id = ?",
                                   (model, prediction_id)).fetchone()
        return None if row is None else logged_prediction(row)

    def recent(self, model: str, limit: int, explained: bool = False) -> list[LoggedPrediction]:
        """The newest ``limit`` logged predictions, newest first (only explained ones if asked)."""
        where = " AND explanation IS NOT NULL" if explained else ""
        with self._lock:
            rows = self._db.execute(f"SELECT {COLUMNS} FROM predictions WHERE model = ?{where} ORDER BY ts DESC LIMIT ?",
                                    (model, limit)).fetchall()
        return [logged_prediction(r) for r in rows]

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

    def try_lead(self, role: str) -> bool:
        """Always: the processes sharing a file are on one host, which elects its own leader."""
        return True

    def leads(self, role: str) -> bool:
        """Always, as :meth:`try_lead`."""
        return True

    def put_result(self, model: str, kind: str, body: str) -> None:
        """Keep ``body`` (JSON) as ``model``'s latest result of ``kind``, stamped now."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO results (model, kind, updated, body) VALUES (?, ?, ?, ?)",
                             (model, kind, time.time(), body))

    def get_result(self, model: str, kind: str) -> tuple[float, str] | None:
        """(when it was put, body) of ``model``'s latest result of ``kind``, or None."""
        with self._lock:
            row = self._db.execute("SELECT updated, body FROM results WHERE model = ? AND kind = ?", (model, kind)).fetchone()
        return None if row is None else (float(row[0]), str(row[1]))

    def close(self) -> None:
        with self._lock:
            self._db.close()


def open_store(location: str) -> PredictionStore:
    """The prediction log at ``location``: a ``postgresql://`` (or ``postgres://``) URL gives a
    PostgreSQL log shared by every process given the same URL, anything else an SQLite file."""
    scheme, sep, rest = location.partition("://")
    if sep and scheme.lower() in ("postgresql", "postgres"):
        try:
            from mlmon_middleware.store_postgres import PostgresStore
        except ImportError as exc:  # psycopg is an extra
            raise StoreError(f"a postgresql:// prediction log needs psycopg ({exc}): "
                             "pip install 'mlmon-middleware[postgres]'") from None
        return PostgresStore(f"{scheme.lower()}://{rest}")  # libpq knows the scheme in lower case only
    return SQLiteStore(location)
