"""The governance tests' backends: the ``location`` fixture gives an SQLite file, then a
PostgreSQL database (one per test module, emptied before each test: creating a database per
test would cost more than the tests), and ``sql`` changes either behind the registry's back."""

import sqlite3

import psycopg
import pytest

TABLES = "audit_events, audit_head, registry_versions, registry_policies, predictions, label_batches, results"


@pytest.fixture(scope="module")
def postgres_database(postgres_server):
    return postgres_server.create_database()


@pytest.fixture(params=["sqlite", "postgres"])
def location(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "predictions.sqlite")
    url = request.getfixturevalue("postgres_database")
    sql(url, f"DROP TABLE IF EXISTS {TABLES}")
    return url


def sql(location, statement, params=()):
    """Run ``statement`` on the database directly; its rows, if it returns any."""
    if location.startswith("postgresql://"):
        with psycopg.connect(location, autocommit=True) as db:
            cursor = db.execute(statement.replace("?", "%s"), params)
            return cursor.fetchall() if cursor.description is not None else None
    db = sqlite3.connect(location)
    try:
        with db:
            return db.execute(statement, params).fetchall()
    finally:
        db.close()
