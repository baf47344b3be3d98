"""Worker processes of one server: who they are, where they meet, which one leads.

A model served by ``uvicorn --workers N``, gunicorn or BentoML runs in N processes. Each one
captures its own share of the traffic; to judge drift on all of it, count every request in every
scrape and notify once per alert, the workers of one server share a folder (:mod:`~mlmon_middleware.exchange`)
and elect one leader, which runs the checks.

:func:`shared_folder` finds that folder: the one configured (``MLMON_MULTIPROC_DIR``), or, for a
process that a process manager started (a ``multiprocessing`` child such as uvicorn's workers, a
gunicorn worker, or a BentoML worker, which the adapter reports with its service's name), a
folder under the temporary directory named after the manager's process (its pid and start time,
so a recycled pid starts afresh) and the service (its name, or the command line: two services
under one manager do not mix). A process on its
own shares nothing and pays nothing.

:class:`Worker` names a process (pid and start time: a pid the kernel gives again is another
worker) and tells whether it still runs; :class:`LeaderLock` is the election: an exclusive
``flock`` that the kernel releases when its holder exits, however it exits.

>>> me = Worker.current()
>>> me.alive(), Worker(me.pid, "not its start time").alive()
(True, False)
>>> import tempfile
>>> folder = tempfile.mkdtemp()
>>> first, second = LeaderLock(folder), LeaderLock(folder)
>>> first.try_acquire(), second.try_acquire(), first.try_acquire()
(True, False, True)
>>> first.release(); second.try_acquire()
True
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import multiprocessing
import os
import shutil
import stat
import sys
import tempfile

from mlmon_middleware.config import MonitorConfig

OFF = "off"


@dataclasses.dataclass(frozen=True)
class Worker:
    """A process: its pid and its start time (from ``/proc``; empty where there is none)."""

    pid: int
    start: str

    @classmethod
    def current(cls) -> Worker:
        return cls(os.getpid(), process_start(os.getpid()) or "")

    @property
    def key(self) -> str:
        """The worker's name in file names."""
        return f"{self.pid}-{self.start}" if self.start else str(self.pid)

    @classmethod
    def from_key(cls, key: str) -> Worker:
        pid, _, start = key.partition("-")
        return cls(int(pid), start)

    def alive(self) -> bool:
        """Whether this process still runs (the same process, not a later one with its pid)."""
        if self.start:
            return process_start(self.pid) == self.start
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: count fields after its last ')'
    return stat[stat.rfind(b")") + 2:].split()[19].decode()


def managed() -> bool:
    """Whether this process is a worker that a process manager started: a ``multiprocessing``
    child (uvicorn's workers) or a gunicorn worker."""
    # gunicorn's master may be PID 1 (a container's command): its workers still share
    return multiprocessing.parent_process() is not None or "gunicorn.arbiter" in sys.modules


def shared_folder(config: MonitorConfig, group: str | None = None) -> str | None:
    """The folder this process shares with the other workers of its server, or None (alone).

    ``group`` names the server among the manager's workers when the caller knows it (the
    BentoML adapter: the service's name; its workers' command lines differ by worker id); by
    default a detected worker's command line does. Created private to the user (0700); folders
    that managers no longer running left behind in the temporary directory are removed."""
    chosen = config.multiprocess_dir
    if chosen == OFF:
        return None
    if chosen is None:
        if group is None:
            if not managed():
                return None
            group = "\0".join(sys.argv)
        parent = os.getppid()
        tag = hashlib.blake2b(group.encode(), digest_size=6).hexdigest()
        root = os.path.join(tempfile.gettempdir(), f"mlmon-{os.getuid()}")
        os.makedirs(root, mode=0o700, exist_ok=True)
        _check_private(root)
        _remove_abandoned(root)
        chosen = os.path.join(root, f"{Worker(parent, process_start(parent) or '').key}_{tag}")
    os.makedirs(chosen, mode=0o700, exist_ok=True)
    _check_private(chosen)
    return chosen


def _check_private(folder: str) -> None:
    """Refuse a folder another user could read or plant files in (in a shared temporary
    directory, anyone may create a name before us): it must be ours, a real folder, and closed
    to group and others. Raises OSError (the worker then counts alone)."""
    st = os.lstat(folder)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise PermissionError(f"{folder} is not a private folder of this user (owner {st.st_uid}, "
                              f"mode {stat.filemode(st.st_mode)}): the workers will not share through it")


def _remove_abandoned(root: str) -> None:
    """Remove the folders of process managers that no longer run (best effort)."""
    try:
        names = os.listdir(root)
    except OSError:
        return
    for name in names:
        manager = name.partition("_")[0]
        try:
            if not Worker.from_key(manager).alive():
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        except ValueError:
            continue


class LeaderLock:
    """The leader election of the workers sharing ``folder``: whoever holds an exclusive
    ``flock`` on ``folder/leader.lock`` leads. The kernel releases it when the holder's process
    ends (even by ``kill -9``), so another worker takes over at its next try."""

    def __init__(self, folder: str) -> None:
        self.path = os.path.join(folder, "leader.lock")
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        """Lead if nobody does; whether this process leads (cheap: call it every tick)."""
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        try:
            os.ftruncate(fd, 0)
            os.write(fd, Worker.current().key.encode())
        except OSError:
            os.close(fd)  # releases the lock: never held without being known
            raise
        self._fd = fd
        return True

    def leader_key(self) -> str | None:
        """The :attr:`Worker.key` of the current leader, as it wrote it (None before any)."""
        try:
            with open(self.path) as f:
                return f.read().strip() or None
        except OSError:
            return None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None

    def forget(self) -> None:
        """In a forked child: the parent's lock is the parent's (the descriptor is shared, so
        closing it here would not release it, but holding it would make the child think it leads)."""
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None
