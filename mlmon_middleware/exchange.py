"""The files through which the workers of one server share what each of them holds.

Three kinds of files, each written whole to a temporary name and renamed (a reader never sees
half a file), in the folder :func:`~mlmon_middleware.workers.shared_folder` chose:

* ``state-{worker}.json``: a worker's counters: its metric families (what its own Prometheus
  registry gives) and per model its prediction, capture-error and label counts. Written every
  ``share_interval`` while they change, at a scrape through that worker, and at shutdown.
  When a worker has exited, its counters are folded into ``exited.json`` (under an exclusive
  ``flock``; readers take it shared), so totals keep counting what exited workers did and never
  go down, while the folder holds one file per *running* worker.
* ``windows-{worker}.npz`` (+ ``.json``, written after it, naming the request it answers): a
  worker's windows of recent rows per model, written when someone asks (:meth:`Exchange.ask`),
  so a check sees the rows of every worker. numpy's own format without pickles: categorical
  values go as integer codes into their distinct values.
* ``result-{model}.json``: the leader's last check of a model (reports, alerts), which every
  other worker answers with.

>>> import tempfile
>>> from mlmon_middleware.workers import Worker
>>> ex = Exchange(tempfile.mkdtemp(), Worker.current())
>>> ex.publish_state({"models": {"m": {"predictions": {"ok": 3}}}})
>>> [s["models"]["m"]["predictions"] for s in ex.states().live.values()]
[{'ok': 3}]
>>> token = ex.ask("windows")
>>> window = {"time": np.array([1.0]), "numeric": np.array([[0.5]]), "categorical": np.array([["a"]], dtype=object)}
>>> ex.publish_windows(token, {"m": {"features": window, "outputs": {}, "schema": {"x": "numeric"}}})
>>> got = ex.windows(token, timeout=1.0)[Worker.current().key]["m"]
>>> got["features"]["numeric"].tolist(), got["features"]["categorical"].tolist(), got["schema"]
([[0.5]], [['a']], {'x': 'numeric'})
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import glob
import hashlib
import os
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import orjson

from mlmon_middleware.merge import EXITED, fold_counters
from mlmon_middleware.workers import Worker

_JSON = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
LOCK_TIMEOUT = 5.0  # seconds a reader or a fold waits for the states lock
STOPPED = 2**63 - 1  # the answer of a stopped worker: no request waits for it
MAX_FOLDED = 10_000  # exited workers remembered as folded (their files are gone long before)


@dataclasses.dataclass
class SharedStates:
    """The states of the running workers (by worker key) and the folded counts of exited ones."""

    live: dict[str, dict[str, Any]]
    exited: dict[str, Any]


def model_key(name: str) -> str:
    """A model name as a file name (names are any text)."""
    return hashlib.blake2b(name.encode(), digest_size=8).hexdigest()


class Exchange:
    """The shared folder of one server's workers, as seen by worker ``me``; see the module docstring."""

    def __init__(self, folder: str, me: Worker) -> None:
        self.folder = folder
        self.me = me
        self._lock_path = os.path.join(folder, "states.lock")
        self._last_read: dict[str, dict[str, Any]] = {}  # per worker, its last state read whole

    # ----------------------------------------------------------------------------------- files
    def _path(self, name: str) -> str:
        return os.path.join(self.folder, name)

    def _write(self, name: str, data: bytes) -> None:
        """Write ``name`` whole: to a temporary file of this thread's own, then renamed."""
        tmp = self._path(f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, self._path(name))

    def _read_json(self, name: str) -> Any:
        try:
            with open(self._path(name), "rb") as f:
                return orjson.loads(f.read())
        except (OSError, orjson.JSONDecodeError):
            return None

    @contextlib.contextmanager
    def _locked(self, exclusive: bool) -> Iterator[None]:
        """The folder's states lock, shared or exclusive; raises TimeoutError after
        :data:`LOCK_TIMEOUT` seconds (a holder stopped by a debugger must not hang a scrape)."""
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + LOCK_TIMEOUT
            while True:
                try:
                    fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{self._lock_path} stayed locked for {LOCK_TIMEOUT:g} s") from None
                    time.sleep(0.005)
            yield
        finally:
            os.close(fd)

    # ---------------------------------------------------------------------------------- states
    def publish_state(self, state: Mapping[str, Any], token: int = 0) -> None:
        """Write this worker's counters (replacing its previous state), answering request
        ``token`` (:meth:`ask` ``("states")``) if any: the token also goes into a file of its
        own, written after the state, which a waiting reader polls (not the whole state)."""
        self._write(f"state-{self.me.key}.json", orjson.dumps({**state, "time": time.time(), "token": token},
                                                             option=_JSON))
        self.answer(token)

    def answer(self, token: int) -> None:
        """Say that this worker's state answers every request up to ``token`` (:data:`STOPPED`:
        every request from now on: a stopping worker has no fresher counts to give)."""
        self._write(f"answered-{self.me.key}", str(token).encode())

    def _read_int(self, name: str) -> int:
        """The integer a small file of the folder holds (0 when it is missing or unreadable)."""
        try:
            with open(self._path(name), "rb") as f:
                return int(f.read() or 0)
        except (OSError, ValueError):
            return 0

    def states(self, token: int = 0, timeout: float = 0.0) -> SharedStates:
        """Every running worker's last state, and the exited workers' folded counts. Exited
        workers' states are folded first, so the sum over both never goes down; a state that
        cannot be read just now counts as the last one read. With a ``token``, waits up to
        ``timeout`` seconds for every running worker's state to answer it (one that does not
        in time counts with its last state)."""
        deadline = time.monotonic() + timeout
        while token and time.monotonic() < deadline:
            keys = [k for k in self._state_keys() if k != self.me.key and Worker.from_key(k).alive()]
            if all(self._read_int(f"answered-{k}") >= token for k in keys):
                break
            time.sleep(0.01)
        keys = self._state_keys()
        if any(not Worker.from_key(k).alive() for k in keys):
            self._fold_exited()
            keys = self._state_keys()
        with self._locked(exclusive=False):
            live = {}
            for key in keys:
                state = self._read_json(f"state-{key}.json") or self._last_read.get(key)
                if state is not None:
                    live[key] = self._last_read[key] = state
            exited = self._read_json(f"{EXITED}.json") or {}
        for gone in set(self._last_read) - set(keys):
            self._last_read.pop(gone, None)
        return SharedStates(live, exited)

    def _state_keys(self) -> list[str]:
        return [os.path.basename(p)[len("state-"):-len(".json")] for p in glob.glob(self._path("state-*.json"))]

    def _fold_exited(self) -> None:
        """Add exited workers' counters to ``exited.json`` and remove their files (one worker
        at a time holds the exclusive lock; the others' readers wait for it)."""
        with self._locked(exclusive=True):
            exited = self._read_json(f"{EXITED}.json") or {}
            folded: list[str] = list(exited.get("folded", ()))  # oldest first
            gone = [k for k in self._state_keys() if not Worker.from_key(k).alive()]
            if not gone:
                return
            for key in gone:
                state = self._read_json(f"state-{key}.json")
                if state is not None and key not in folded:  # folded once, even if a crash left its file
                    folded = [*folded, key][-MAX_FOLDED:]
                    exited = {**fold_counters(exited, state), "folded": folded}
            self._write(f"{EXITED}.json", orjson.dumps(exited, option=_JSON))
            for key in gone:
                for name in (f"state-{key}.json", f"answered-{key}", f"windows-{key}.npz", f"windows-{key}.json"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self._path(name))

    # ----------------------------------------------------------------------------------- asks
    def ask(self, what: str) -> int:
        """Ask every worker for fresh ``what`` (``"windows"`` or ``"states"``); returns the token
        their answers will carry (larger than any before: the wall clock may step back, the token
        does not)."""
        with self._locked(exclusive=True):
            token = max(self.asked(what) + 1, time.time_ns())
            self._write(f"{what}-wanted", str(token).encode())
        return token

    def asked(self, what: str) -> int:
        """The token of the latest request for ``what`` (0 when none)."""
        return self._read_int(f"{what}-wanted")

    # --------------------------------------------------------------------------------- windows
    def publish_windows(self, token: int, models: Mapping[str, Mapping[str, Any]]) -> None:
        """Write this worker's windows: per model ``features`` and ``outputs`` (window snapshots),
        ``schema`` / ``output_schema`` (name -> kind) and optional ``attributions`` (times and a
        matrix), answering request ``token``."""
        arrays: dict[str, np.ndarray] = {}
        manifest: dict[str, Any] = {}
        for i, (name, parts) in enumerate(models.items()):
            entry: dict[str, Any] = {k: v for k, v in parts.items() if k not in ("features", "outputs", "attributions")}
            for part in ("features", "outputs", "attributions"):
                snapshot = parts.get(part) or {}
                entry[part] = sorted(snapshot)
                for column, values in snapshot.items():
                    _encode(arrays, f"{i}.{part}.{column}", values)
            manifest[name] = {"index": i, **entry}
        with open(self._path(f".windows-{self.me.key}.npz.tmp"), "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy's stub types the keyword arrays as a flag
        os.replace(self._path(f".windows-{self.me.key}.npz.tmp"), self._path(f"windows-{self.me.key}.npz"))
        self._write(f"windows-{self.me.key}.json", orjson.dumps({"token": token, "models": manifest}, option=_JSON))

    def withdraw_windows(self) -> None:
        """Remove this worker's windows (at its shutdown: recent inputs do not outlive the worker)."""
        for name in (f"windows-{self.me.key}.json", f"windows-{self.me.key}.npz"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(name))

    def windows(self, token: int, timeout: float, workers: set[str] | None = None) -> dict[str, dict[str, Any]]:
        """Per worker, per model, what it published (see :meth:`publish_windows`), waiting up to
        ``timeout`` seconds for the running ``workers`` (default: all) to answer ``token``. A
        worker that does not answer in time contributes its previous answer, if any."""
        deadline = time.monotonic() + timeout
        while True:
            expected = workers if workers is not None else set(self._state_keys())
            manifests = {k: m for k in expected if (m := self._read_json(f"windows-{k}.json")) is not None}
            if all(m.get("token", 0) >= token for m in manifests.values()) and len(manifests) == len(expected):
                break
            if time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        out: dict[str, dict[str, Any]] = {}
        for key, manifest in manifests.items():
            with contextlib.suppress(OSError, ValueError, KeyError):
                out[key] = _decode(self._path(f"windows-{key}.npz"), manifest)
                for model in out[key].values():
                    model["fresh"] = manifest.get("token", 0) >= token
        return out

    # --------------------------------------------------------------------------------- results
    def publish_result(self, model: str, body: Mapping[str, Any]) -> None:
        """Write the leader's last check of ``model`` for the other workers."""
        self._write(f"result-{model_key(model)}.json", orjson.dumps(body, option=_JSON))

    def result_changed(self, model: str) -> int:
        """A number that changes when ``model``'s result is rewritten (0 while there is none)."""
        try:
            return os.stat(self._path(f"result-{model_key(model)}.json")).st_mtime_ns
        except OSError:
            return 0

    def result(self, model: str) -> dict[str, Any] | None:
        found = self._read_json(f"result-{model_key(model)}.json")
        return found if isinstance(found, dict) else None

    def publish_baseline(self, model: str, baseline: bytes) -> None:
        """Write the leader's warm-up baseline of ``model`` (its JSON), once per baseline: the
        results that follow name it rather than carry it."""
        self._write(f"baseline-{model_key(model)}.json", baseline)

    def baseline(self, model: str) -> dict[str, Any] | None:
        found = self._read_json(f"baseline-{model_key(model)}.json")
        return found if isinstance(found, dict) else None


def _encode(arrays: dict[str, np.ndarray], key: str, values: np.ndarray) -> None:
    """Store ``values``; an object (categorical) matrix as integer codes into its distinct values
    (text), code -1 for missing (None): one long value costs its own length, not every cell's."""
    if values.dtype != object:
        arrays[key] = values
        return
    flat = values.ravel()
    missing = np.fromiter((v is None for v in flat), bool, flat.size)
    distinct, codes = np.unique(flat[~missing].astype(str), return_inverse=True)
    all_codes = np.full(flat.size, -1, dtype=np.int64)
    all_codes[~missing] = codes
    arrays[key + ".codes"] = all_codes.reshape(values.shape)
    arrays[key + ".values"] = distinct


def _decode(path: str, manifest: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with np.load(path, allow_pickle=False) as data:
        for name, entry in manifest.get("models", {}).items():
            i = entry["index"]
            model = {k: v for k, v in entry.items() if k not in ("index", "features", "outputs", "attributions")}
            for part in ("features", "outputs", "attributions"):
                snapshot: dict[str, np.ndarray] = {}
                for column in entry.get(part, ()):
                    key = f"{i}.{part}.{column}"
                    if key in data:
                        snapshot[column] = data[key]
                    else:
                        codes, distinct = data[key + ".codes"], data[key + ".values"].astype(object)
                        values = np.empty(codes.shape, dtype=object)
                        present = codes >= 0
                        values[present] = distinct[codes[present]]
                        snapshot[column] = values
                model[part] = snapshot
            out[name] = model
    return out
