"""Connecting to PostgreSQL, shared by the prediction log (:mod:`~mlmon_middleware.store_postgres`)
and the registry's database (:mod:`~mlmon_middleware.governance.db`): connections that give up
on a silent peer, tables created only when missing, advisory-lock keys, and URLs kept out of
messages without their passwords.

>>> describe("postgresql://mlmon:s3cret@db:5432/log?sslmode=require")
'postgresql://mlmon@db:5432/log'
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import psycopg

Connection = psycopg.Connection[tuple[Any, ...]]


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for ``name`` (the same in every process).

    >>> lock_key("mlmon:lead:labels") == lock_key("mlmon:lead:labels") != lock_key("mlmon:lead:drift")
    True
    """
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


def describe(url: str) -> str:
    """The URL without its password (nor its query, which may carry one), for messages.

    >>> describe("postgresql://mlmon:s3cret@db:5432/log?sslmode=require")
    'postgresql://mlmon@db:5432/log'
    """
    scheme, _, rest = url.partition("://")
    userinfo, _, hosts = rest.split("?", 1)[0].rpartition("@")
    user = userinfo.partition(":")[0]
    return f"{scheme}://{user + '@' if user else ''}{hosts}"


def secrets_in(url: str) -> list[str]:
    """The password(s) a URL carries, as written and decoded: to be kept out of messages.

    >>> secrets_in("postgresql://u:p%40ss@h/db?password=two")
    ['p%40ss', 'p@ss', 'two']
    """
    try:
        parts = urlsplit(url)
        _, _, password = parts.netloc.rpartition("@")[0].partition(":")
        found = [password, unquote(password)] + [v for k, v in parse_qsl(parts.query) if k == "password"]
    except ValueError:
        found = []
    return [s for i, s in enumerate(found) if s and s not in found[:i]]


def redact(text: str, url: str) -> str:
    """``text`` with the URL's passwords starred out."""
    for secret in secrets_in(url):
        text = text.replace(secret, "***")
    return text


def connect(url: str, *, connect_timeout: int, statement_timeout: float) -> Connection:
    """An autocommit connection to ``url`` that gives up on a silent peer: ``connect_timeout``
    seconds to connect (libpq's smallest is 2), ``statement_timeout`` seconds per statement, and
    TCP keepalives both ways so that a server (or client) that vanished is noticed in ~25 s."""
    db: Connection = psycopg.connect(
        url, autocommit=True, connect_timeout=connect_timeout, fallback_application_name="mlmon",
        keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3, tcp_user_timeout=25_000)
    try:
        for name, value in (("statement_timeout", str(int(statement_timeout * 1000))), ("tcp_keepalives_idle", "10"),
                            ("tcp_keepalives_interval", "5"), ("tcp_keepalives_count", "3"),
                            ("tcp_user_timeout", "25000")):
            db.execute("SELECT set_config(%s, %s, false)", (name, value))
    except BaseException:
        db.close()
        raise
    return db


def create_missing(db: Connection, schema: Sequence[tuple[str, str]]) -> None:
    """Run each ``(name, statement)`` of ``schema`` whose table or index ``name`` is missing, in
    one transaction under the advisory lock ``mlmon:schema`` (replicas opening at once take
    turns). Only what is missing: a user allowed to use the tables, not to create them, opens them."""
    with db.transaction():
        db.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key("mlmon:schema"),))
        for name, statement in schema:
            row = db.execute("SELECT to_regclass(%s)", (name,)).fetchone()
            if row is None or row[0] is None:
                db.execute(statement)
