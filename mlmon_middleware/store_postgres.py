"""The prediction log in PostgreSQL: one log that many replicas share (``postgresql://`` URL).

The schema and every answer are the same as ``store.SQLiteStore``'s: a replica can log a
prediction and another join its label. The differences are those of a server:

* **Writes** are batched with ``COPY`` into a per-connection temporary table and one
  ``INSERT ... ON CONFLICT DO UPDATE`` (the same id twice: the last row wins and its label is
  cleared, as SQLite's ``INSERT OR REPLACE``); rows are taken in key order, so two writers never
  wait on each other in a cycle. COPY measured 1.2 to 1.3 times the rows per second of
  ``executemany`` (pipeline mode) for batches of 1,000 new rows.
* **Label batches** are numbered by ``INSERT ... ON CONFLICT ... DO UPDATE ... RETURNING seq``: the
  row lock serialises replicas labelling the same model at once, so each batch gets its own,
  increasing number; the predictions it labels are locked (``FOR UPDATE``) while their outcomes
  are decided, so two replicas never both answer ``labelled`` for one prediction.
* **Leadership** (``try_lead``) is a session-level advisory lock held on a connection of its own:
  the replica whose session holds it leads; when that process closes the store or dies, the
  server ends the session and releases the lock, and another replica takes it at its next try.
* **Failures**: one connection per store behind a lock (the writer, the analyzer and request
  threads share it). A call that meets a lost connection raises ``psycopg.OperationalError``
  (``transient_errors``: the writer keeps the rows and retries); the next call connects again.
  Nothing waits forever: a connect timeout, a statement timeout, and TCP timeouts both ways (a
  peer that vanished is noticed in about 25 s, by the client and by the server, which then frees
  the leader's lock).
* **Opening** creates the tables if they are missing under an advisory lock (replicas starting
  together), and raises ``StoreError`` when the server cannot be reached or used; the message
  names the server without the password.

Example (needs a server, so not run as a doctest)::

    store = PostgresStore("postgresql://mlmon:secret@db:5432/mlmon")
    store.write([LogRow("p1", "fraud", "1", 100.0, '{"prediction": 0.9}', "{}", None)])
    store.set_labels("fraud", [("p1", 1, 160.0)])  # [LabelOutcomeRow('p1', 'labelled', 60.0)]
    store.try_lead("labels")  # True in exactly one of the processes using this database
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import orjson
import psycopg

from mlmon_middleware.postgres import Connection, connect, create_missing, describe, lock_key, redact
from mlmon_middleware.reports import LoggedPrediction
from mlmon_middleware.store_types import (
    COLUMNS,
    LABELLED_INDEX,
    NEW_LABELS,
    NEWLY_LABELLED,
    LabelledRow,
    LabelOutcomeRow,
    LogRow,
    NewLabel,
    StoreError,
    logged_prediction,
)

SCHEMA = (  # (name, statement): each run only when its table or index is missing
    ("predictions", """CREATE TABLE IF NOT EXISTS predictions (
        prediction_id TEXT NOT NULL,
        model TEXT NOT NULL,
        version TEXT NOT NULL,
        ts DOUBLE PRECISION NOT NULL,
        prediction TEXT NOT NULL,
        segments TEXT NOT NULL,
        features TEXT,
        label TEXT,
        label_ts DOUBLE PRECISION,
        label_updates INTEGER NOT NULL DEFAULT 0,
        explanation TEXT,
        label_seq BIGINT,
        PRIMARY KEY (model, prediction_id))"""),
    ("label_batches", "CREATE TABLE IF NOT EXISTS label_batches (model TEXT PRIMARY KEY, seq BIGINT NOT NULL)"),
    ("results", """CREATE TABLE IF NOT EXISTS results (
        model TEXT NOT NULL,
        kind TEXT NOT NULL,
        updated DOUBLE PRECISION NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (model, kind))"""),
    ("predictions_by_time", "CREATE INDEX IF NOT EXISTS predictions_by_time ON predictions (model, ts)"),
    # labelled rows only (a logged row, unlabelled, adds no entry): as SQLite's LABELLED_INDEX; a
    # log of an earlier version keeps its two full label indexes (dropping needs the owner's rights)
    ("predictions_labelled_by_seq", LABELLED_INDEX),
)

# rows of one write, before they join the table; emptied at each commit
INCOMING = ("CREATE TEMPORARY TABLE IF NOT EXISTS incoming (n INTEGER, prediction_id TEXT, model TEXT, version TEXT, "
            "ts DOUBLE PRECISION, prediction TEXT, segments TEXT, features TEXT, explanation TEXT) ON COMMIT DELETE ROWS")
WRITE_COLUMNS = "prediction_id, model, version, ts, prediction, segments, features, explanation"
MERGE = (f"INSERT INTO predictions ({WRITE_COLUMNS}) SELECT DISTINCT ON (model, prediction_id) {WRITE_COLUMNS} "
         "FROM incoming ORDER BY model, prediction_id, n DESC "
         "ON CONFLICT (model, prediction_id) DO UPDATE SET version = EXCLUDED.version, ts = EXCLUDED.ts, "
         "prediction = EXCLUDED.prediction, segments = EXCLUDED.segments, features = EXCLUDED.features, "
         "explanation = EXCLUDED.explanation, label = NULL, label_ts = NULL, label_updates = 0, label_seq = NULL")
NEXT_BATCH = ("INSERT INTO label_batches (model, seq) VALUES (%s, 1) "
              "ON CONFLICT (model) DO UPDATE SET seq = label_batches.seq + 1 RETURNING seq")
SET_LABELS = ("UPDATE predictions AS p SET label = v.label, label_ts = v.label_ts, "
              "label_updates = p.label_updates + v.n, label_seq = %s "
              "FROM unnest(%s::text[], %s::text[], %s::float8[], %s::int[]) AS v(prediction_id, label, label_ts, n) "
              "WHERE p.model = %s AND p.prediction_id = v.prediction_id")


class PostgresStore:
    """A ``PredictionStore`` in a PostgreSQL database that many processes share; thread-safe.

    ``connect_timeout`` bounds each connection attempt, ``statement_timeout`` each statement
    (seconds); a store whose server went away raises at once (or after the first) and connects
    again at the next call."""

    # a connection lost, the server shutting down, a statement or lock timeout, a deadlock, a full disk
    transient_errors: ClassVar[tuple[type[BaseException], ...]] = (psycopg.OperationalError,)
    shared_by_replicas: ClassVar[bool] = True

    def __init__(self, url: str, *, connect_timeout: float = 5.0, statement_timeout: float = 60.0) -> None:
        self.url = url
        self.where = describe(url)
        self._connect_timeout = max(2, round(connect_timeout))  # libpq's smallest
        self._statement_timeout = statement_timeout
        self._lock = threading.Lock()
        self._db: Connection | None = None
        self._lead_lock = threading.Lock()
        self._leader: Connection | None = None  # the session holding this process's leader locks
        self._leading: set[str] = set()
        self._closed = False
        try:
            with self._session() as db:
                create_missing(db, SCHEMA)
        except (psycopg.Error, OSError) as exc:
            self.close()  # a session that connected, then failed, is not kept
            raise StoreError(f"prediction log {self.where} cannot be used: {redact(' '.join(str(exc).split()), url)} "
                             "(check MLMON_STORE_URL: the server, the database, the user and its rights)") from None

    # ------------------------------------------------------------------------------- connections
    def _connect(self, writes: bool = True) -> Connection:
        db = connect(self.url, connect_timeout=self._connect_timeout, statement_timeout=self._statement_timeout)
        if writes:
            try:
                db.execute(INCOMING)
            except BaseException:
                db.close()
                raise
        return db

    @contextmanager
    def _session(self) -> Iterator[Connection]:
        """The store's connection, for one call, under the lock; a connection that met a failure
        is closed, and the next call opens a new one."""
        with self._lock:
            if self._closed:
                raise StoreError(f"prediction log {self.where} is closed")
            if self._db is None or self._db.closed:
                self._db = self._connect()
            try:
                yield self._db
            except psycopg.OperationalError:
                self._db.close()  # lost, or in a state not worth trusting: start afresh next time
                self._db = None
                raise

    # ----------------------------------------------------------------------------------- writing
    def write(self, rows: Sequence[LogRow]) -> None:
        with self._session() as db, db.transaction(), db.cursor() as cur:
            with cur.copy(f"COPY incoming (n, {WRITE_COLUMNS}) FROM STDIN") as copy:
                for n, row in enumerate(rows):
                    copy.write_row((n, *row))
            cur.execute(MERGE)

    def set_labels(self, model: str, items: Sequence[tuple[str, Any, float]]) -> list[LabelOutcomeRow]:
        """Set labels ``(prediction id, actual, label time)``; per item ``(id, outcome, delay)``
        with outcome ``labelled``, ``relabelled`` (had a label: the latest wins) or ``unknown``."""
        labels = [(pid, orjson.dumps(actual).decode(), float(when)) for pid, actual, when in items]
        with self._session() as db, db.transaction():
            # the order labels arrived in, whatever times they carry (see SQLiteStore.set_labels)
            seq = _one(db.execute(NEXT_BATCH, (model,)))[0]
            found = {pid: (ts, updates) for pid, ts, updates in db.execute(
                "SELECT prediction_id, ts, label_updates FROM predictions WHERE model = %s AND prediction_id = ANY(%s) "
                "ORDER BY prediction_id FOR UPDATE", (model, sorted({pid for pid, _, _ in labels if _storable(pid)})))}
            out, latest = _outcomes(labels, found)
            if latest:
                ids = list(latest)
                db.execute(SET_LABELS, (seq, ids, [latest[i][0] for i in ids], [latest[i][1] for i in ids],
                                        [latest[i][2] for i in ids], model))
        return out

    def apply_retention(self, max_age: float | None, max_rows: int | None) -> int:
        """Delete rows older than ``max_age`` seconds, and beyond the newest ``max_rows`` per model."""
        deleted = 0
        with self._session() as db:
            if max_age is not None:
                deleted += db.execute("DELETE FROM predictions WHERE ts < %s", (time.time() - max_age,)).rowcount
            if max_rows is not None:
                for (model,) in db.execute("SELECT DISTINCT model FROM predictions").fetchall():
                    cutoff = db.execute("SELECT ts FROM predictions WHERE model = %s ORDER BY ts DESC LIMIT 1 OFFSET %s",
                                        (model, max_rows)).fetchone()
                    if cutoff is not None:
                        deleted += db.execute("DELETE FROM predictions WHERE model = %s AND ts <= %s",
                                              (model, cutoff[0])).rowcount
        return deleted

    # ----------------------------------------------------------------------------------- reading
    def labelled(self, model: str, since: float, limit: int | None = None) -> list[LabelledRow]:
        """Labelled predictions made at or after ``since``, oldest first (the last ``limit`` when given)."""
        query = ("SELECT prediction_id, prediction, segments, label, ts, label_ts FROM predictions "
                 "WHERE model = %s AND ts >= %s AND label IS NOT NULL ORDER BY ts DESC")
        params: tuple[Any, ...] = (model, since)
        if limit is not None:
            query += " LIMIT %s"
            params += (limit,)
        rows = self._all(query, params)
        return [LabelledRow(pid, p, s, orjson.loads(label), ts, lts) for pid, p, s, label, ts, lts in reversed(rows)]

    def newly_labelled(self, model: str, after: int, limit: int = NEW_LABELS) -> list[NewLabel]:
        """Predictions whose label arrived after label batch ``after``, in the order they were
        made: whole label batches, the first to reach ``limit`` rows (as ``SQLiteStore``'s)."""
        rows = self._all(NEWLY_LABELLED, (model, after, model, after, limit))
        return [NewLabel(p, orjson.loads(label), ts, lts, seq) for p, label, ts, lts, seq in rows]

    def counts(self, model: str, since: float) -> tuple[int, int]:
        """(predictions, labelled predictions) made at or after ``since``: label coverage."""
        [(total, labelled)] = self._all("SELECT count(*), count(label) FROM predictions WHERE model = %s AND ts >= %s",
                                        (model, since))
        return int(total), int(labelled)

    def lookup(self, model: str, prediction_id: str) -> LoggedPrediction | None:
        """One logged prediction as a dict (JSON columns decoded), or None when not logged."""
        if not _storable(prediction_id):
            return None
        rows = self._all(f"SELECT {COLUMNS} FROM predictions WHERE model = %s AND prediction_id = %s", (model, prediction_id))
        return logged_prediction(rows[0]) if rows else None

    def recent(self, model: str, limit: int, explained: bool = False) -> list[LoggedPrediction]:
        """The newest ``limit`` logged predictions, newest first (only explained ones if asked)."""
        where = " AND explanation IS NOT NULL" if explained else ""
        rows = self._all(f"SELECT {COLUMNS} FROM predictions WHERE model = %s{where} ORDER BY ts DESC LIMIT %s",
                         (model, limit))
        return [logged_prediction(r) for r in rows]

    def _all(self, query: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self._session() as db:
            return db.execute(query, params).fetchall()

    # ---------------------------------------------------------------------- the fleet's leader
    def try_lead(self, role: str) -> bool:
        """Whether this process leads ``role`` among every process using this database: it holds
        the role's advisory lock, on a session of its own. Call it at every check: True as long
        as that session lives; once it is lost (the server restarted, the network), so is the
        lead, and the lock is tried again on a new session. False, too, when the server cannot
        be reached (nothing that needs the log can run then anyway)."""
        with self._lead_lock:
            if self._closed:
                return False
            if not self._alive(self._leader):
                self._drop_leader()
            if role in self._leading:
                return True
            try:
                if self._leader is None:
                    self._leader = self._connect(writes=False)
                if _one(self._leader.execute("SELECT pg_try_advisory_lock(%s)", (lock_key(f"mlmon:lead:{role}"),)))[0]:
                    self._leading.add(role)
            except psycopg.OperationalError:
                self._drop_leader()
            return role in self._leading

    def leads(self, role: str) -> bool:
        """Whether this process holds ``role``'s lock now, without trying to take it (an
        on-demand check must not take the fleet's lead from the one that checks on schedule)."""
        with self._lead_lock:
            return role in self._leading and self._alive(self._leader)

    @staticmethod
    def _alive(db: Connection | None) -> bool:
        if db is None or db.closed:
            return False
        try:
            db.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            return False

    def _drop_leader(self) -> None:
        """Close the leader's session: every lock it held is released (or already was).

        The locks are released before the session closes: the server ends a closed session
        asynchronously, and until it does, another replica's ``try_lead`` would still fail."""
        if self._leader is not None:
            if not self._leader.closed:
                try:
                    self._leader.execute("SELECT pg_advisory_unlock_all()")
                except psycopg.Error:
                    pass  # the session is lost: the server releases its locks as it ends it
            self._leader.close()
        self._leader = None
        self._leading.clear()

    def put_result(self, model: str, kind: str, body: str) -> None:
        """Keep ``body`` (JSON) as ``model``'s latest result of ``kind``, stamped now."""
        with self._session() as db:
            db.execute("INSERT INTO results (model, kind, updated, body) VALUES (%s, %s, %s, %s) "
                       "ON CONFLICT (model, kind) DO UPDATE SET updated = EXCLUDED.updated, body = EXCLUDED.body",
                       (model, kind, time.time(), body))

    def get_result(self, model: str, kind: str) -> tuple[float, str] | None:
        """(when it was put, body) of ``model``'s latest result of ``kind``, or None."""
        rows = self._all("SELECT updated, body FROM results WHERE model = %s AND kind = %s", (model, kind))
        return (float(rows[0][0]), str(rows[0][1])) if rows else None

    def close(self) -> None:
        """Close both sessions: another process may take the lead at its next ``try_lead``."""
        with self._lead_lock:
            self._drop_leader()
            with self._lock:
                self._closed = True
                if self._db is not None:
                    self._db.close()
                    self._db = None


def _outcomes(labels: list[tuple[str, str, float]], found: dict[str, tuple[float, int]]
              ) -> tuple[list[LabelOutcomeRow], dict[str, tuple[str, float, int]]]:
    """Per label its outcome, in order, as SQLite's one-by-one updates give them (an id twice:
    ``labelled`` then ``relabelled``); and per known id its last label, time and number of labels."""
    out: list[LabelOutcomeRow] = []
    latest: dict[str, tuple[str, float, int]] = {}
    for pid, label, when in labels:
        if pid not in found:
            out.append(LabelOutcomeRow(pid, "unknown", None))
            continue
        ts, updates = found[pid]
        before = updates + (latest[pid][2] if pid in latest else 0)
        out.append(LabelOutcomeRow(pid, "relabelled" if before else "labelled", when - ts))
        latest[pid] = (label, when, before - updates + 1)
    return out, latest


def _storable(text: str) -> bool:
    """Whether PostgreSQL can hold ``text``: an id it cannot was never logged (``unknown``), and
    asking for it must not fail the call (SQLite holds any string)."""
    return "\x00" not in text


def _one(cursor: psycopg.Cursor[tuple[Any, ...]]) -> tuple[Any, ...]:
    row = cursor.fetchone()
    assert row is not None  # statements that always return a row
    return row
