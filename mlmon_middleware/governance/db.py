"""Where the registry and the audit log live: the prediction log's database.

A SQLite file by default (the monitor's ``<store_dir>/predictions.sqlite``, WAL mode) or
PostgreSQL when ``MLMON_STORE_URL`` says so, so that every replica sharing the log sees one
registry and one audit chain. :class:`GovernanceDB` holds one connection behind a lock and
offers two kinds of transaction; the SQL of the callers is the same for both backends (``?``
placeholders, portable types) and only what differs lives here:

* :meth:`GovernanceDB.write` is *exclusive*: SQLite's ``BEGIN IMMEDIATE`` (one writer per file,
  other processes wait up to ``busy_timeout``), PostgreSQL's transaction-scoped advisory lock
  ``mlmon:governance``. Everything that changes the registry or appends to the audit chain runs
  in one, so reading the chain's head and inserting the next event can never interleave with
  another process doing the same, and a state change and its audit event commit together.
* :meth:`GovernanceDB.read` is a consistent snapshot (SQLite's deferred read transaction in WAL
  mode, PostgreSQL's ``REPEATABLE READ READ ONLY``), for verifying the chain against its head.

>>> import os, tempfile
>>> db = GovernanceDB(os.path.join(tempfile.mkdtemp(), "predictions.sqlite"))
>>> with db.write() as tx:
...     _ = tx.execute("INSERT INTO registry_policies (model, body) VALUES (?, ?)", ("fraud", "{}"))
...     tx.one("SELECT body FROM registry_policies WHERE model = ?", ("fraud",))
('{}',)
>>> db.close()
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from mlmon_middleware.store_types import StoreError

SCHEMA = (  # (name, statement): the same text for SQLite and PostgreSQL
    ("audit_events", """CREATE TABLE IF NOT EXISTS audit_events (
        seq BIGINT PRIMARY KEY,
        time TEXT NOT NULL,
        event_type TEXT NOT NULL,
        actor TEXT NOT NULL,
        model TEXT,
        version TEXT,
        details TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL,
        mac TEXT)"""),
    ("audit_head", "CREATE TABLE IF NOT EXISTS audit_head (chain TEXT PRIMARY KEY, seq BIGINT NOT NULL, "
                   "hash TEXT NOT NULL, mac TEXT)"),
    ("audit_by_model", "CREATE INDEX IF NOT EXISTS audit_by_model ON audit_events (model, time)"),
    ("registry_versions", """CREATE TABLE IF NOT EXISTS registry_versions (
        model TEXT NOT NULL,
        version TEXT NOT NULL,
        state TEXT NOT NULL,
        artifact_sha256 TEXT NOT NULL,
        baseline_sha256 TEXT,
        metrics TEXT NOT NULL,
        group_metrics TEXT NOT NULL,
        facts TEXT NOT NULL,
        registered_by TEXT NOT NULL,
        registered_at TEXT NOT NULL,
        submitted_by TEXT,
        submitted_at TEXT,
        approved_by TEXT,
        approved_at TEXT,
        approval_reason TEXT,
        deployed_at TEXT,
        changed_at TEXT NOT NULL,
        PRIMARY KEY (model, version))"""),
    ("registry_policies", "CREATE TABLE IF NOT EXISTS registry_policies (model TEXT PRIMARY KEY, body TEXT NOT NULL)"),
)


def default_location() -> str:
    """Where the monitor keeps its prediction log, from the environment: ``MLMON_STORE_URL``
    (PostgreSQL), else ``predictions.sqlite`` in ``MLMON_STORE_DIR`` (default: the current folder).

    >>> os.environ.pop("MLMON_STORE_URL", None) and None
    >>> os.environ["MLMON_STORE_DIR"] = "/var/lib/mlmon"
    >>> default_location()
    '/var/lib/mlmon/predictions.sqlite'
    >>> del os.environ["MLMON_STORE_DIR"]
    """
    url = os.environ.get("MLMON_STORE_URL")
    if url:
        return url
    return os.path.join(os.environ.get("MLMON_STORE_DIR") or ".", "predictions.sqlite")


def is_postgres(location: str) -> bool:
    scheme, sep, _ = location.partition("://")
    return bool(sep) and scheme.lower() in ("postgresql", "postgres")


def resolve(location: str | None) -> str:
    """The database a location names: a ``postgresql://`` URL as it is, a folder's
    ``predictions.sqlite`` (a monitor's ``store_dir``), any other path as an SQLite file; None
    is :func:`default_location`.

    >>> resolve("postgresql://db/mlmon"), resolve("/nonexistent/log.db")
    ('postgresql://db/mlmon', '/nonexistent/log.db')
    """
    if location is None:
        return default_location()
    if not is_postgres(location) and os.path.isdir(location):
        return os.path.join(location, "predictions.sqlite")
    return location


class Tx:
    """One open transaction: ``execute`` returns every row (the statements here are small);
    each statement has a cursor of its own, so a lookup never disturbs a ``rows`` being read."""

    def __init__(self, connection: Any, placeholder: str) -> None:
        self._db = connection
        self._placeholder = placeholder

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cursor = self._db.execute(sql.replace("?", self._placeholder), tuple(params))
        return list(cursor.fetchall()) if cursor.description is not None else []

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        rows = self.execute(sql, params)
        return rows[0] if rows else None

    def rows(self, sql: str, params: Sequence[Any] = (), size: int = 1000) -> Iterator[tuple[Any, ...]]:
        """The rows of a large query, ``size`` at a time (the chain is read this way)."""
        cursor = self._db.execute(sql.replace("?", self._placeholder), tuple(params))
        while batch := cursor.fetchmany(size):
            yield from batch


class GovernanceDB:
    """The registry's and audit log's tables in the database at ``location`` (see
    :func:`resolve`: an SQLite file, a folder holding ``predictions.sqlite``, a ``postgresql://``
    URL, None for the environment's); thread-safe (one connection behind a lock). Raises
    :class:`~mlmon_middleware.store.StoreError` when the database cannot be opened."""

    def __init__(self, location: str | None = None, *, busy_timeout: float = 30.0) -> None:
        location = self.location = resolve(location)
        self.postgres = is_postgres(location)
        self._lock = threading.Lock()
        self._busy_timeout = busy_timeout
        self._db: Any = None
        if self.postgres:
            from mlmon_middleware.postgres import describe
            self.where = describe(location)
        else:
            self.where = repr(location)
        with self._lock:
            self._connection()  # fail now, with the reason, rather than at the first change

    # ----------------------------------------------------------------------------- connections
    def _connection(self) -> Any:
        if self._db is not None and not getattr(self._db, "closed", False):
            return self._db
        try:
            self._db = self._open_postgres() if self.postgres else self._open_sqlite()
        except StoreError:
            raise
        except Exception as exc:  # sqlite3.Error, OSError, psycopg.Error: each says why
            message = " ".join(str(exc).split())
            if self.postgres:
                from mlmon_middleware.postgres import redact
                message = redact(message, self.location)
            raise StoreError(f"registry and audit log {self.where} cannot be used: {message}") from None
        return self._db

    def _open_sqlite(self) -> sqlite3.Connection:
        os.makedirs(os.path.dirname(self.location) or ".", exist_ok=True)
        db = sqlite3.connect(self.location, check_same_thread=False, isolation_level=None, timeout=self._busy_timeout)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("BEGIN IMMEDIATE")  # two processes creating the tables at once take turns
            for _, statement in SCHEMA:
                db.execute(statement)
            db.execute("COMMIT")
        except BaseException:
            db.close()
            raise
        return db

    def _open_postgres(self) -> Any:
        from mlmon_middleware.postgres import connect, create_missing

        # the prediction log's connection settings: timeouts, and keepalives that notice a lost peer
        db = connect(self.location, connect_timeout=5, statement_timeout=self._busy_timeout)
        try:
            create_missing(db, SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    # ---------------------------------------------------------------------------- transactions
    @contextmanager
    def write(self) -> Iterator[Tx]:
        """An exclusive transaction (see the module docstring): committed when the block ends,
        rolled back if it raises."""
        with self._transaction(exclusive=True) as tx:
            yield tx

    @contextmanager
    def read(self) -> Iterator[Tx]:
        """A read-only snapshot: every statement in the block sees the same committed state."""
        with self._transaction(exclusive=False) as tx:
            yield tx

    @contextmanager
    def _transaction(self, exclusive: bool) -> Iterator[Tx]:
        with self._lock:
            db = self._connection()
            if self.postgres:
                with self._postgres_errors(), db.transaction():
                    if exclusive:
                        from mlmon_middleware.postgres import lock_key
                        db.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key("mlmon:governance"),))
                    else:
                        db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    yield Tx(db, "%s")
                return
            with self._sqlite_errors():
                db.execute("BEGIN IMMEDIATE" if exclusive else "BEGIN")
                try:
                    yield Tx(db, "?")
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:  # the block raised, or COMMIT failed (a full disk): nothing stays open
                        db.execute("ROLLBACK")
                    raise

    @contextmanager
    def _sqlite_errors(self) -> Iterator[None]:
        """SQLite's failures (locked past ``busy_timeout``, a full disk, a read-only file, a
        table gone) leave as :class:`StoreError` with sqlite3's error as its cause, as
        PostgreSQL's do; refusals of ours (``GovernanceError``) pass unchanged."""
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreError(f"registry and audit log {self.where}: {exc}") from exc

    @contextmanager
    def _postgres_errors(self) -> Iterator[None]:
        """A connection that met a lost server is dropped: the next transaction connects again.
        A database failure leaves as :class:`StoreError` (the routes answer 503 for it), with
        psycopg's error as its cause; refusals of ours (``GovernanceError``) pass unchanged."""
        import psycopg

        try:
            yield
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.OperationalError):
                if self._db is not None:
                    self._db.close()
                self._db = None
            from mlmon_middleware.postgres import redact

            raise StoreError(f"registry and audit log {self.where}: {redact(str(exc), self.location)}") from exc

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
