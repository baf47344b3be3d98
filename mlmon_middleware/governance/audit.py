"""The audit log: append-only, hash-chained governance events in the prediction log's database.

Every event has a type, an actor, a time, the model and version it concerns, details (a JSON
object) and the hash of the event before it (:mod:`~mlmon_middleware.governance.chain` says
exactly what is hashed). ``append`` reads the chain's head and inserts the next event in one
exclusive transaction (:class:`~mlmon_middleware.governance.db.GovernanceDB`), so processes
and replicas appending at once still build one chain; the registry appends its events in the
same transaction as the change they record. With a key (``MLMON_AUDIT_KEY`` by default) each
event and the head also carry an HMAC-SHA256.

>>> import os, tempfile
>>> log = AuditLog(os.path.join(tempfile.mkdtemp(), "predictions.sqlite"), key=b"")
>>> event = log.append("baseline_set", "ana", "fraud", "1", {"sha256": "ab" * 32})
>>> event.seq, event.prev_hash == GENESIS, len(event.hash)
(1, True, 64)
>>> _ = log.append("alert_fired", "mlmon", "fraud", "1", {"alert": "FeatureDriftHigh"})
>>> [e.event_type for e in log.query(model="fraud", event_type="alert_fired")]
['alert_fired']
>>> print(log.verify())  # doctest: +ELLIPSIS
ok: 2 events, head 2:...
>>> log.close()
"""

from __future__ import annotations

import datetime
import hmac
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any

from mlmon_middleware.governance.chain import (
    GENESIS,
    AuditEvent,
    VerifyResult,
    canonical_details,
    head_mac,
    make_event,
    verify_chain,
)
from mlmon_middleware.governance.db import GovernanceDB, Tx
from mlmon_middleware.governance.errors import ChainBroken, GovernanceError

__all__ = ["EVENT_TYPES", "GENESIS", "AuditEvent", "AuditLog", "VerifyResult", "audit_key_from_env", "parse_time"]

#: the event types mlmon writes; others may be appended (lower case, digits and ``_``)
EVENT_TYPES = ("registered", "submitted", "approved", "rejected", "deployed", "rolled_back", "retired", "policy_changed",
               "baseline_set", "alert_fired", "alert_severity_changed", "alert_resolved", "alert_acknowledged",
               "labels_ingested", "first_served", "report_exported")
MAX_TEXT = 200  # characters of an actor, model, version or event type
MAX_DETAILS = 65_536  # bytes of one event's details, as JSON
EVENT_TYPE = re.compile(r"[a-z][a-z0-9_]*\Z")
CHAIN = "main"  # the head record's key: one chain per database
COLUMNS = "seq, time, event_type, actor, model, version, details, prev_hash, hash, mac"
DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])\Z")


def audit_key_from_env() -> bytes | None:
    """``MLMON_AUDIT_KEY`` as bytes (UTF-8), or None when it is unset or empty."""
    value = os.environ.get("MLMON_AUDIT_KEY")
    return value.encode("utf-8") if value else None


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")


def parse_time(value: float | str | datetime.datetime, *, now: float | None = None) -> str:
    """A bound for :meth:`AuditLog.query` as the log writes times (ISO 8601, UTC, microseconds):
    from Unix seconds, a ``datetime`` (naive means UTC), an ISO 8601 date or time, or a duration
    before now (``90s``, ``15m``, ``12h``, ``7d``). Raises ``ValueError`` naming the value.

    >>> parse_time("2024-05-01")
    '2024-05-01T00:00:00.000000+00:00'
    >>> parse_time("2h", now=7200.0)
    '1970-01-01T00:00:00.000000+00:00'
    """
    if isinstance(value, str):
        match = DURATION.match(value.strip())
        if match:
            seconds = float(match[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]
            value = (datetime.datetime.now(datetime.timezone.utc).timestamp() if now is None else now) - seconds
        else:
            try:
                value = datetime.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
            except ValueError:
                raise ValueError(f"not a time: {value!r} (give ISO 8601 like 2024-05-01 or 2024-05-01T12:00:00Z, "
                                 "or a duration before now like 7d, 12h, 30m)") from None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = datetime.datetime.fromtimestamp(value, datetime.timezone.utc)
    if not isinstance(value, datetime.datetime):
        raise ValueError(f"not a time: {value!r}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return value.astimezone(datetime.timezone.utc).isoformat(timespec="microseconds")


def check_text(value: object, what: str, *, optional: bool = False) -> str | None:
    """A name, version or actor as stored: a non-empty string of at most :data:`MAX_TEXT`
    characters without control characters (None passes when ``optional``)."""
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        raise GovernanceError(f"{what} must be a non-empty string, got {value!r}")
    if len(value) > MAX_TEXT or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise GovernanceError(f"{what} must be at most {MAX_TEXT} characters without control characters, "
                              f"got {value[:80]!r}")
    return value


class AuditLog:
    """The audit log in the database at ``location`` (as :class:`ModelRegistry`'s; default:
    the monitor's prediction log as the environment sets it), or on an open ``db``. ``key``:
    the HMAC key (a ``str`` is taken as UTF-8); None (the default) reads ``MLMON_AUDIT_KEY``,
    ``b""`` means no key even when that is set. Thread- and process-safe."""

    def __init__(self, location: str | None = None, *, key: bytes | str | None = None, db: GovernanceDB | None = None) -> None:
        self.db = db if db is not None else GovernanceDB(location)
        if key is None:
            key = audit_key_from_env()
        self.key = (key.encode("utf-8") if isinstance(key, str) else key) or None

    # ------------------------------------------------------------------------------- writing
    def append(self, event_type: str, actor: str, model: str | None = None, version: str | None = None,
               details: Mapping[str, Any] | None = None) -> AuditEvent:
        """Append one event and return it (with its ``seq``, ``time`` and ``hash``). Raises
        :class:`~mlmon_middleware.governance.errors.GovernanceError` for a bad type, actor, name
        or details (a ``ValueError``), ``StoreError`` or the driver's error when the database fails."""
        with self.db.write() as tx:
            return self.append_in(tx, event_type, actor, model, version, details)

    def append_in(self, tx: Tx, event_type: str, actor: str, model: str | None, version: str | None,
                  details: Mapping[str, Any] | None) -> AuditEvent:
        """Append within ``tx``, an open :meth:`GovernanceDB.write` transaction: the event commits
        (or not) with whatever else the transaction changes."""
        if not isinstance(event_type, str) or not EVENT_TYPE.match(event_type) or len(event_type) > MAX_TEXT:
            raise GovernanceError(f"event type must be lower case letters, digits and '_' (like {EVENT_TYPES[0]!r}), "
                                  f"got {event_type!r}")
        actor = check_text(actor, "actor") or ""
        model, version = check_text(model, "model", optional=True), check_text(version, "version", optional=True)
        try:
            body = canonical_details(details)
        except ValueError as exc:
            raise GovernanceError(str(exc)) from None
        if len(json.dumps(body)) > MAX_DETAILS:
            raise GovernanceError(f"details of a {event_type!r} event are larger than {MAX_DETAILS} bytes as JSON")
        head = self._head(tx)
        event = make_event(head[0] + 1, now_iso(), event_type, actor, model, version, body, head[1], self.key)
        tx.execute(f"INSERT INTO audit_events ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (event.seq, event.time, event.event_type, event.actor, event.model, event.version,
                    json.dumps(body), event.prev_hash, event.hash, event.mac))
        signature = None if self.key is None else head_mac(self.key, event.seq, event.hash)
        tx.execute("INSERT INTO audit_head (chain, seq, hash, mac) VALUES (?, ?, ?, ?) ON CONFLICT (chain) DO UPDATE "
                   "SET seq = excluded.seq, hash = excluded.hash, mac = excluded.mac", (CHAIN, event.seq, event.hash, signature))
        return event

    def _head(self, tx: Tx) -> tuple[int, str]:
        """The ``(seq, hash)`` to append after: the head record, once it is checked against the
        log's real last event and (with a key) its HMAC. Raises :class:`ChainBroken` instead of
        appending after a cut-off end or a moved or removed head: the next event would hide it.
        A head without an HMAC is taken under a key only after an unsigned last event (a log
        written before the key was set); ``verify`` decides whether that unsigned start is allowed."""
        head = tx.one("SELECT seq, hash, mac FROM audit_head WHERE chain = ?", (CHAIN,))
        last = tx.one("SELECT seq, hash, mac FROM audit_events ORDER BY seq DESC LIMIT 1")
        if head is None and last is None:
            return 0, GENESIS
        if head is None or last is None or (int(head[0]), str(head[1])) != (int(last[0]), str(last[1])):
            found = "is missing" if head is None else f"names event {head[0]}"
            raise ChainBroken(f"the audit chain's head does not match its last event (the head record {found}, the log "
                              f"ends at event {0 if last is None else last[0]}): nothing is appended; run `mlmon audit verify`")
        seq, hash_ = int(head[0]), str(head[1])
        if self.key is not None and (head[2] is not None or last[2] is not None) \
                and not hmac.compare_digest(str(head[2] or ""), head_mac(self.key, seq, hash_)):
            raise ChainBroken(f"the audit chain's head record (event {seq}) has no valid HMAC under this key: it was moved "
                              "or written without the key; nothing is appended; run `mlmon audit verify`")
        return seq, hash_

    # ------------------------------------------------------------------------------- reading
    def query(self, *, model: str | None = None, event_type: str | Sequence[str] | None = None,
              since: float | str | datetime.datetime | None = None, until: float | str | datetime.datetime | None = None,
              version: str | None = None, limit: int | None = None) -> list[AuditEvent]:
        """Events oldest first, filtered by model, version, type (one or several), and time
        (``since`` inclusive, ``until`` exclusive; see :func:`parse_time` for the forms)."""
        return list(self._select(model=model, event_type=event_type, since=since, until=until, version=version,
                                 limit=limit))

    def _select(self, **filters: Any) -> Iterator[AuditEvent]:
        where, params = _where(**filters)
        sql = f"SELECT {COLUMNS} FROM audit_events{where} ORDER BY seq"
        if filters.get("limit") is not None:
            sql += f" LIMIT {int(filters['limit'])}"
        with self.db.read() as tx:
            for row in tx.rows(sql, params):
                yield _event(row)

    def export_jsonl(self, out: IO[str], **filters: Any) -> int:
        """Write the events (filtered as :meth:`query`) to ``out`` as JSON Lines, one event per
        line with every field (a complete export verifies offline: ``mlmon audit verify --jsonl``);
        returns the number written."""
        written = 0
        for event in self._select(**{"limit": None, **filters}):
            out.write(json.dumps(event.to_json(), ensure_ascii=False, sort_keys=True) + "\n")
            written += 1
        return written

    # ---------------------------------------------------------------------------- verifying
    def verify(self, *, anchor: tuple[int, str] | None = None, allow_unsigned_before: int | None = None) -> VerifyResult:
        """Verify the whole chain and its head record in one snapshot (with this log's key, if
        any); the result names the first broken link. ``anchor``: ``(seq, hash)`` of a head
        recorded earlier outside the database (a verify's ``last_seq``/``last_hash``), which
        must still be in the log: the only defence against a rewrite by someone who can also
        recompute the hashes (see docs/governance.md). ``allow_unsigned_before``: with a key,
        the first event written with it when the log started without one (recorded outside
        the database when the key was set); without it every event must be signed."""
        with self.db.read() as tx:
            head = tx.one("SELECT seq, hash, mac FROM audit_head WHERE chain = ?", (CHAIN,))

            def locate(hash_: str) -> int | None:
                found = tx.one("SELECT seq FROM audit_events WHERE hash = ?", (hash_,))
                return None if found is None else int(found[0])

            events = (_event(row) for row in tx.rows(f"SELECT {COLUMNS} FROM audit_events ORDER BY seq"))
            return verify_chain(events, key=self.key, head=None if head is None else (int(head[0]), str(head[1])),
                                head_signature=None if head is None else head[2], locate=locate, anchor=anchor,
                                allow_unsigned_before=allow_unsigned_before)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def verify_jsonl(lines: Sequence[str] | IO[str], *, key: bytes | None = None, anchor: tuple[int, str] | None = None,
                 allow_unsigned_before: int | None = None) -> VerifyResult:
    """Verify a complete JSON Lines export (:meth:`AuditLog.export_jsonl` without filters;
    ``anchor`` and ``allow_unsigned_before`` as for :meth:`AuditLog.verify`). A line that is
    not an event raises ``GovernanceError`` naming its number."""
    events = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            events.append(AuditEvent.from_json(json.loads(line)))
        except (ValueError, KeyError, TypeError) as exc:
            raise GovernanceError(f"line {number} is not an audit event: {exc}") from None
    by_hash = {e.hash: e.seq for e in events}
    return verify_chain(events, key=key, check_head=False, locate=by_hash.get, anchor=anchor,
                        allow_unsigned_before=allow_unsigned_before)


def _where(*, model: str | None = None, event_type: str | Sequence[str] | None = None, since: Any = None,
           until: Any = None, version: str | None = None, limit: int | None = None) -> tuple[str, list[Any]]:
    clauses, params = [], []
    for column, value in (("model", model), ("version", version)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if event_type is not None:
        types = [event_type] if isinstance(event_type, str) else list(event_type)
        clauses.append(f"event_type IN ({', '.join('?' * len(types))})" if types else "1 = 0")
        params += types
    for op, value in ((">=", since), ("<", until)):
        if value is not None:
            clauses.append(f"time {op} ?")
            params.append(parse_time(value))
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _event(row: tuple[Any, ...]) -> AuditEvent:
    seq, time, event_type, actor, model, version, details, prev_hash, hash_, mac = row
    return AuditEvent(int(seq), time, event_type, actor, model, version, json.loads(details), prev_hash, hash_, mac)
