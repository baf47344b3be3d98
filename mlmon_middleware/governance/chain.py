"""The audit log's hash chain: what an event is, exactly what is hashed, and how a chain is verified.

Each event is hashed over its **canonical JSON**: the object ``{"actor", "details", "event_type",
"model", "prev_hash", "time", "version"}`` written by Python's
``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)``
and encoded as UTF-8, where ``prev_hash`` is the previous event's ``hash`` (:data:`GENESIS`, 64
zeros, for the first event). ``hash`` is the SHA-256 of those bytes, in lower-case hex; ``mac``,
when the log is written with a key, is the HMAC-SHA256 of the same bytes under that key. The
event's position (``seq``) is not hashed: the order is the chain of ``prev_hash`` links itself.

Verification (:func:`verify_chain`) walks the events in ``seq`` order and stops at the first
broken link, naming it: an event whose content no longer matches its hash (*edited*), whose
HMAC does not match (*bad_mac*) or is missing (*unsigned*; see below), whose link
points at an event that is not in the log (*deleted*; *replaced* when no ``seq`` is missing, as
when an event is rewritten with a recomputed hash) or at another event of the log (*reordered*);
and, against the head record that every append updates, an end that was cut off (*truncated*)
or events added behind the log's back (*inserted*).

With a key, every event must carry a valid HMAC and so must the head record: stripping the MACs
turns nothing off. The one exception is a log's unsigned start, the events written before the key
was set, and only as the verifier states it (``allow_unsigned_before=SEQ``, from a record kept
outside the database like an anchor): events before ``SEQ`` must then be unsigned (a signed one
there is *boundary*: the stated start is not this log's), events from ``SEQ`` on signed. Which
events were unsigned cannot be taken from the database itself: whoever strips every MAC would
move that boundary too.

>>> first = make_event(1, "2024-05-01T12:00:00.000000+00:00", "registered", "ana", "fraud", "1", {}, GENESIS)
>>> second = make_event(2, "2024-05-01T12:01:00.000000+00:00", "submitted", "ana", "fraud", "1", {}, first.hash)
>>> verify_chain([first, second], head=(2, second.hash)).ok
True
>>> edited = first.replace(actor="mallory")
>>> print(verify_chain([edited, second], head=(2, second.hash)).broken)
event 1 (edited): its content no longer matches its hash
>>> print(verify_chain([first, second], head=(2, second.hash), key=b"k").broken)  # doctest: +ELLIPSIS
event 1 (unsigned): it has no HMAC: written without MLMON_AUDIT_KEY, or its HMAC removed (...)
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

GENESIS = "0" * 64  # the ``prev_hash`` of the first event
HASHED = ("actor", "details", "event_type", "model", "prev_hash", "time", "version")


@dataclasses.dataclass(frozen=True)
class AuditEvent:
    """One event of the audit log. ``time`` is ISO 8601 in UTC with microseconds; ``details`` a
    JSON object; ``hash``/``mac`` as the module docstring says."""

    seq: int
    time: str
    event_type: str
    actor: str
    model: str | None
    version: str | None
    details: Mapping[str, Any]
    prev_hash: str
    hash: str
    mac: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The event as one JSON Lines record (every field, so an export can be verified)."""
        return {"seq": self.seq, "time": self.time, "event_type": self.event_type, "actor": self.actor,
                "model": self.model, "version": self.version, "details": dict(self.details),
                "prev_hash": self.prev_hash, "hash": self.hash, "mac": self.mac}

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> AuditEvent:
        """An event from :meth:`to_json`'s record (a ``KeyError`` or ``TypeError`` when it is not one)."""
        return cls(int(record["seq"]), record["time"], record["event_type"], record["actor"], record["model"],
                   record["version"], record["details"], record["prev_hash"], record["hash"], record.get("mac"))

    def replace(self, **changes: Any) -> AuditEvent:
        """A copy with ``changes`` and the same ``hash``/``mac`` (what tampering looks like)."""
        return dataclasses.replace(self, **changes)


def canonical(event_type: str, actor: str, model: str | None, version: str | None, details: Mapping[str, Any],
              time: str, prev_hash: str) -> bytes:
    """The bytes an event's hash and HMAC are computed over (see the module docstring).

    >>> canonical("deployed", "bo", "fraud", "2", {"b": 1, "a": "é"}, "2024-05-01T00:00:00.000000+00:00", GENESIS)[:60]
    b'{"actor":"bo","details":{"a":"\\xc3\\xa9","b":1},"event_type":"deplo'
    """
    fields = {"actor": actor, "details": details, "event_type": event_type, "model": model, "prev_hash": prev_hash,
              "time": time, "version": version}
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def content_of(event: AuditEvent) -> bytes:
    return canonical(event.event_type, event.actor, event.model, event.version, event.details, event.time,
                     event.prev_hash)


def sign(key: bytes, message: bytes) -> str:
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def make_event(seq: int, time: str, event_type: str, actor: str, model: str | None, version: str | None,
               details: Mapping[str, Any], prev_hash: str, key: bytes | None = None) -> AuditEvent:
    """The event with its hash (and HMAC under ``key``) computed."""
    content = canonical(event_type, actor, model, version, details, time, prev_hash)
    return AuditEvent(seq, time, event_type, actor, model, version, details, prev_hash,
                      hashlib.sha256(content).hexdigest(), None if key is None else sign(key, content))


def head_mac(key: bytes, seq: int, hash_: str) -> str:
    """The head record's HMAC: over ``"<seq>:<hash>"`` (a head cannot be moved back without the key)."""
    return sign(key, f"{seq}:{hash_}".encode())


@dataclasses.dataclass(frozen=True)
class BrokenLink:
    """Where a chain first breaks: the event's ``seq`` (for the end of the log: the head's), the
    kind (``edited``, ``bad_mac``, ``unsigned``, ``boundary``, ``deleted``, ``replaced``,
    ``reordered``, ``truncated``, ``inserted``, ``anchor``) and what was found."""

    seq: int
    kind: str
    message: str

    def __str__(self) -> str:
        return f"event {self.seq} ({self.kind}): {self.message}"


@dataclasses.dataclass(frozen=True)
class VerifyResult:
    """What :func:`verify_chain` found: ``ok`` when nothing is broken; ``events`` checked; the
    last event's ``seq`` and ``hash`` (record them elsewhere to detect a later rewrite: see
    ``anchor``); with a key, ``signed`` events and ``unsigned`` ones before the first signed
    (allowed by ``allow_unsigned_before``: their content is chained, not authenticated)."""

    ok: bool
    events: int
    last_seq: int
    last_hash: str
    broken: BrokenLink | None = None
    signed: int = 0
    unsigned: int = 0

    def __str__(self) -> str:
        if self.broken is not None:
            return f"BROKEN at {self.broken} ({self.events} events read before it)"
        text = f"ok: {self.events} events, head {self.last_seq}:{self.last_hash}"
        if self.signed or self.unsigned:
            text += f"; {self.signed} signed" + (f", {self.unsigned} before the first signed one unsigned" if self.unsigned else "")
        return text


def verify_chain(events: Iterable[AuditEvent], *, key: bytes | None = None, head: tuple[int, str] | None = None,
                 head_signature: str | None = None, locate: Callable[[str], int | None] | None = None,
                 check_head: bool = True, anchor: tuple[int, str] | None = None,
                 allow_unsigned_before: int | None = None) -> VerifyResult:
    """Verify ``events`` (in ``seq`` order) as one chain from :data:`GENESIS`.

    ``head`` is the head record ``(seq, hash)`` the log keeps (None: no record) and
    ``head_signature`` its HMAC; with ``check_head`` (the default) the chain must end exactly
    there (a JSON Lines export has no head: pass ``check_head=False``). ``key`` checks every
    event's HMAC and the head's; ``allow_unsigned_before``: the ``seq`` of the first event
    written with the key, when the log started without one (see the module docstring).
    ``locate(hash)`` gives the ``seq`` of the event with that hash anywhere in the log, or None:
    it tells a deleted event from a reordered one (without it, every stray link is reported as
    deleted or replaced). ``anchor`` ``(seq, hash)``: a head recorded earlier,
    outside the database; the event at ``seq`` must still have that hash.
    """
    previous: AuditEvent | None = None
    count = signed = unsigned = 0
    anchored = anchor is None
    first_signed = 1 if allow_unsigned_before is None else allow_unsigned_before
    for event in events:
        broken = _check(event, previous, key, first_signed, locate)
        if broken is not None:
            return _result(count, previous, broken)
        if event.mac is not None:
            signed += 1
        elif key is not None:
            unsigned += 1
        if anchor is not None and event.seq == anchor[0]:
            if event.hash != anchor[1]:
                return _result(count, previous, BrokenLink(event.seq, "anchor", f"its hash is {event.hash}, the anchor "
                                                           f"recorded {anchor[1]}: the log was rewritten since"))
            anchored = True
        count += 1
        previous = event
    broken = _check_end(previous, key, head, head_signature) if check_head else None
    if broken is None and not anchored:
        assert anchor is not None
        broken = BrokenLink(anchor[0], "anchor", "the anchor's event is not in the log: it was truncated or rewritten since")
    return _result(count, previous, broken, signed, unsigned)


def _check(event: AuditEvent, previous: AuditEvent | None, key: bytes | None, first_signed: int,
           locate: Callable[[str], int | None] | None) -> BrokenLink | None:
    content = content_of(event)
    if hashlib.sha256(content).hexdigest() != event.hash:
        return BrokenLink(event.seq, "edited", "its content no longer matches its hash")
    if key is not None:
        if event.mac is None and event.seq >= first_signed:
            return BrokenLink(event.seq, "unsigned", "it has no HMAC: written without MLMON_AUDIT_KEY, or its HMAC "
                                                     "removed (events written before the key was set pass only before "
                                                     "the first signed seq stated as allow_unsigned_before)")
        if event.mac is not None and event.seq < first_signed:
            return BrokenLink(event.seq, "boundary", f"it is signed, but events before {first_signed} were stated "
                                                     "unsigned: the log's start is not the one stated (or its end was "
                                                     "cut into that start and appended to)")
        if event.mac is not None and not hmac.compare_digest(event.mac, sign(key, content)):
            return BrokenLink(event.seq, "bad_mac", "its HMAC does not match: changed by someone without the key "
                                                    "(or written with another key)")
    expected = GENESIS if previous is None else previous.hash
    if event.prev_hash == expected:
        return None
    after = "the start of the log" if previous is None else f"event {previous.seq}"
    elsewhere = None if locate is None or event.prev_hash == GENESIS else locate(event.prev_hash)
    if elsewhere is not None or (event.prev_hash == GENESIS and previous is not None):
        return BrokenLink(event.seq, "reordered", f"it follows {after} but was written after "
                                                  f"{'the start of the log' if elsewhere is None else f'event {elsewhere}'}")
    missing = event.seq - (0 if previous is None else previous.seq) - 1
    if missing > 0 or previous is None:
        what = f"{missing} event(s) before it are" if missing > 0 else "the event(s) before it are"
        return BrokenLink(event.seq, "deleted", f"{what} missing: it links to an event that is not in the log")
    return BrokenLink(event.seq, "replaced", f"it links to an event that is not in the log, and {after} before it is not "
                                             "that one: the event before it was rewritten (or deleted and renumbered)")


def _check_end(last: AuditEvent | None, key: bytes | None, head: tuple[int, str] | None,
               head_signature: str | None) -> BrokenLink | None:
    """The end of the chain against the head record (its HMAC checked under ``key``: always,
    whatever the events carry, so stripping their MACs cannot turn the check off)."""
    if head is None:
        return None if last is None else BrokenLink(last.seq, "truncated", "the log's head record is missing")
    seq, hash_ = head
    if key is not None and not hmac.compare_digest(head_signature or "", head_mac(key, seq, hash_)):
        return BrokenLink(seq, "bad_mac", "the head record's HMAC does not match: it was moved without the key")
    if last is None or last.seq < seq:
        gone = seq if last is None else seq - last.seq
        return BrokenLink(seq, "truncated", f"the log ends at event {0 if last is None else last.seq} but its head "
                                            f"records event {seq}: {gone} event(s) at the end were deleted")
    if last.seq > seq:
        return BrokenLink(seq + 1, "inserted", f"events {seq + 1} to {last.seq} were added after the head record "
                                               f"(event {seq}), not by the audit log's append")
    if last.hash != hash_:
        return BrokenLink(seq, "replaced", "the last event is not the one the head record names (rewritten)")
    return None


def _result(count: int, last: AuditEvent | None, broken: BrokenLink | None, signed: int = 0,
            unsigned: int = 0) -> VerifyResult:
    return VerifyResult(broken is None, count, 0 if last is None else last.seq, GENESIS if last is None else last.hash,
                        broken, signed, unsigned)


def canonical_details(details: Mapping[str, Any] | None) -> dict[str, Any]:
    """``details`` as the JSON object it will read back as (tuples become lists, keys strings):
    what is hashed must be what is stored. Raises ``ValueError`` for what JSON cannot hold.

    >>> canonical_details({"groups": ("a", "b"), 1: 0.5})
    {'groups': ['a', 'b'], '1': 0.5}
    """
    if details is None:
        return {}
    if not isinstance(details, Mapping):
        raise ValueError(f"details must be a JSON object (a mapping), got {type(details).__name__}")
    try:
        return dict(json.loads(json.dumps(details, allow_nan=False)))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"details must be JSON (no NaN or infinity): {exc}") from None
