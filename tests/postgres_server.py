"""A throwaway PostgreSQL server for the tests and the store benchmark: Debian's PostgreSQL
(``initdb`` and ``pg_ctl`` from /usr/lib/postgresql/*/bin or PATH) on 127.0.0.1, a free port, a
temporary data directory and socket directory, trust authentication; stopped and removed at the end.

PostgreSQL refuses to run as root, and the tests and CI run as root: then ``initdb`` and ``pg_ctl``
run as the ``postgres`` user that Debian's package creates (``runuser``), owning the directories.

    with PostgresServer() as server:
        url = server.create_database("t1")  # postgresql://postgres@127.0.0.1:PORT/t1

``stop()`` and ``start()`` again keep the data and the port: a test can take the database away
and bring it back.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from typing import Any

import psycopg

from http_helpers import free_port

USER = "postgres"  # the superuser initdb creates, and the OS user the server runs as under root


def find_binary(name: str) -> str:
    """``name`` from the newest /usr/lib/postgresql/*/bin, else from PATH."""
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    found = versions[-1] if versions else shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found in /usr/lib/postgresql/*/bin or PATH: `make tools` installs Debian's postgresql")
    return found


class PostgresServer:
    """One PostgreSQL server; ``settings`` are extra ``-c name=value`` server settings (the tests
    turn fsync off; the benchmark keeps the defaults)."""

    def __init__(self, settings: dict[str, str] | None = None) -> None:
        self.settings = {"listen_addresses": "127.0.0.1", **(settings or {})}
        self.port = free_port()
        self.base = tempfile.mkdtemp(prefix="mlmon-pg-")
        self.sockets = tempfile.mkdtemp(prefix="mlmon-pgsock-")
        self.data = os.path.join(self.base, "data")
        self.log = os.path.join(self.base, "server.log")
        self._as_postgres = os.geteuid() == 0
        self._running = False
        self._databases = 0
        try:
            if self._as_postgres:
                shutil.chown(self.base, USER, USER)
                shutil.chown(self.sockets, USER, USER)
            self._run(find_binary("initdb"), "-D", self.data, "--auth=trust", f"--username={USER}", "--no-sync",
                      "--encoding=UTF8", "--no-locale")
        except BaseException:
            self._remove()
            raise

    @property
    def url(self) -> str:
        """The URL of the ``postgres`` database (where databases are created)."""
        return f"postgresql://{USER}@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = " ".join(f"-c {name}={value}" for name, value in
                           {**self.settings, "port": str(self.port), "unix_socket_directories": self.sockets}.items())
        self._run(find_binary("pg_ctl"), "-D", self.data, "-l", self.log, "-w", "-t", "60", "-o", options, "start")
        self._running = True

    def stop(self) -> None:
        """Stop the server (fast: open sessions are ended); the data stays for ``start()``."""
        if self._running:
            self._run(find_binary("pg_ctl"), "-D", self.data, "-m", "fast", "-w", "-t", "60", "stop")
            self._running = False

    def create_database(self, name: str | None = None) -> str:
        """A new empty database (named ``name``, or ``t<n>``); its URL."""
        self._databases += 1
        name = name or f"t{self._databases}"
        with psycopg.connect(self.url, autocommit=True) as db:
            db.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        """Stop the server and remove its directories."""
        try:
            self.stop()
        finally:
            self._remove()

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _run(self, *command: str) -> None:
        if self._as_postgres:
            command = ("runuser", "-u", USER, "--", *command)
        done = subprocess.run(command, cwd=self.base, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log = open(self.log).read()[-2000:] if os.path.exists(self.log) else ""
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}"
                               f"{chr(10) + log if log else ''}")

    def _remove(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)
        shutil.rmtree(self.sockets, ignore_errors=True)
