"""The serving gate: does the registry say that the model version this process serves may serve?

Each monitored model (``@monitor(model, version)``, ``Endpoint``, ``Monitor.model``) is judged
against the registry in the prediction log's database: approved when its version is
**deployed** there, carries an approval unless the model's policy (as it is now) requires none,
and, when the served artifact's SHA-256 is known (the model options ``artifact=`` or
``artifact_sha256=``), that hash is the registered one. Otherwise the verdict says why: ``not
registered``, ``not deployed (state …)``, ``deployed without an approval …`` (deployed while the
policy required none, which it now does), or ``artifact hash differs``. A model
the registry has no version of at all is not governed and not judged (a service with a
prediction log need not use the registry) — unless ``enforce_approval`` is on: then every model
must be registered and deployed to serve.

The verdicts are computed at start (before the first request is served) and then every check
interval by a background thread; the request path only reads them (:meth:`ServingGate.refusal`: one dict lookup, and none at all
unless ``enforce_approval`` is on and some model is refused). They show in health (an issue per
model not approved, and ``serving_gate``), in the gauge ``mlmon_model_approved`` (1 or 0) and,
with ``enforce_approval``, as a 503 answered instead of the endpoint (:class:`ModelNotApproved`).

Enforcing fails closed until known, then keeps the last verdict: with ``enforce_approval``, a
model without a verdict yet (the registry could not be read at start, or the model was added
since the last round) is refused (:class:`Refusals`); while the registry is unreachable the
last known verdict stays (a refused version stays refused, an approved one stays served), and
the failure is counted as a monitoring error (stage ``governance``). Without a prediction log
(no ``store_dir``/``store_url``) there is no registry: the gate is inactive and says so.

The first time the thread sees a version serve (a prediction answered), it appends a
``first_served`` audit event, once per model version in the whole database: the check for an
earlier one and the append run in one exclusive transaction, so workers and replicas sharing
the database write one.

>>> from mlmon_middleware.governance.facts import ModelFacts
>>> registered = ModelVersion("fraud", "2", "approved", "ab" * 32, None, {}, {}, ModelFacts(), "ds", "", None,
...                           None, None, None, None, None, "")
>>> judge("fraud", "2", registered, None).reason
'not deployed (state approved)'
>>> judge("fraud", "2", None, None).reason
'not registered'
>>> judge("fraud", "2", dataclasses.replace(registered, state="deployed"), "cd" * 32).reason
'artifact hash differs (serving cdcdcdcdcdcd…, registered abababababab…)'
>>> judge("fraud", "2", dataclasses.replace(registered, state="deployed"), "ab" * 32).approved
True
>>> judge("fraud", "2", dataclasses.replace(registered, state="deployed"), None, approval_required=True).reason
"deployed without an approval, which the model's policy now requires"
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from mlmon_middleware.errors import ErrorLog
from mlmon_middleware.governance.errors import UnknownVersion
from mlmon_middleware.governance.facts import ModelVersion, sha256_file
from mlmon_middleware.governance.registry import ModelRegistry
from mlmon_middleware.instruments import MODEL_NAME, MODEL_VERSION

NO_REGISTRY = "no registry (no store_dir or store_url: nothing to check against)"


class Served(Protocol):
    """What the gate reads of a monitored model (a :class:`~mlmon_middleware.model.ModelMonitor`)."""

    name: str
    version: str
    options: Any  # ModelOptions: ``artifact``, ``artifact_sha256``
    counters: Any  # Counters: ``counts().predictions["ok"]``


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Whether ``model`` ``version`` may serve; ``reason`` says why not (empty when approved).
    ``artifact_sha256``: the served artifact's hash, None when the model options give none
    (then only the state is checked)."""

    model: str
    version: str
    approved: bool
    reason: str
    artifact_sha256: str | None = None
    checked_at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "approved": self.approved, "reason": self.reason or None,
                "artifact_sha256": self.artifact_sha256, "checked_at": self.checked_at}


class ModelNotApproved(Exception):
    """Raised instead of serving a version that is not approved and deployed, when
    ``enforce_approval`` is on; the middleware answers it with 503 and :meth:`body`."""

    status_code = 503

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(f"model {verdict.model!r} version {verdict.version!r} is not approved for serving: "
                         f"{verdict.reason}")
        self.verdict = verdict

    def body(self) -> bytes:
        """The JSON answer: ``{"error": "model_not_approved", "model", "version", "reason"}``."""
        v = self.verdict
        return json.dumps({"error": "model_not_approved", "model": v.model, "version": v.version,
                           "reason": v.reason}).encode()


def judge(model: str, version: str, registered: ModelVersion | None, served_sha256: str | None,
          now: float = 0.0, *, approval_required: bool = False) -> Verdict:
    """The verdict on serving ``model`` ``version`` (artifact ``served_sha256`` when known)
    given what the registry holds for it (None: not registered) and whether the model's policy
    requires approval now (a version deployed while it did not has no approval to show)."""
    if registered is None:
        reason = "not registered"
    elif registered.state != "deployed":
        reason = f"not deployed (state {registered.state})"
    elif approval_required and registered.approved_by is None:
        reason = "deployed without an approval, which the model's policy now requires"
    elif served_sha256 is not None and served_sha256 != registered.artifact_sha256:
        reason = f"artifact hash differs (serving {served_sha256[:12]}…, registered {registered.artifact_sha256[:12]}…)"
    else:
        reason = ""
    return Verdict(model, version, not reason, reason, served_sha256, now)


class Refusals(dict[str, Verdict]):
    """With ``enforce_approval``, the models refused: those judged not approved, and every model
    not judged yet (the registry not read since it appeared, or unreadable since start): the gate
    fails closed. Always true, so the request path's test ``gate.refused and ...`` looks it up.

    >>> refusals = Refusals({}, judged={"fraud"})
    >>> refusals.get("fraud") is None, refusals.get("churn").reason
    (True, 'not judged yet: the registry has not been read since this model appeared')
    """

    def __init__(self, refused: dict[str, Verdict], judged: set[str]) -> None:
        super().__init__(refused)
        self.judged = judged

    def __bool__(self) -> bool:
        return True

    def get(self, model: str, default: Any = None) -> Any:
        found = super().get(model)
        if found is None and model not in self.judged:
            return Verdict(model, "unknown", False, "not judged yet: the registry has not been read since this model "
                           "appeared", None, time.time())
        return found if found is not None else default


class ServingGate:
    """The verdicts of this process's models (see the module docstring). ``location``: the
    registry's database (a monitor's ``store_location``; None: inactive); ``models`` lists the
    monitored models; ``interval``: seconds between refreshes in the background."""

    def __init__(self, location: str | None, *, enforce: bool, interval: float, errors: ErrorLog,
                 models: Callable[[], Iterable[Served]]) -> None:
        self.location = location
        self.enforce = enforce
        self.interval = interval
        self.errors = errors
        self.models = models
        self.verdicts: dict[str, Verdict] = {}  # model name -> its last verdict (replaced whole)
        self.ungoverned: tuple[str, ...] = ()  # models the registry has no version of (not judged)
        #: model name -> its verdict when refused (only with ``enforce``): the request path's one lookup
        self.refused: dict[str, Verdict] = Refusals({}, set()) if enforce and location is not None else {}
        self._hashes: dict[str, str | Exception] = {}  # artifact path -> its SHA-256, hashed once
        self._announced: set[tuple[str, str]] = set()  # first_served written (or found) for these
        self._registry: ModelRegistry | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def active(self) -> bool:
        return self.location is not None

    def refusal(self, model: str) -> ModelNotApproved | None:
        """The refusal to raise for ``model`` instead of serving it (a new one each time: a raised
        exception keeps its traceback), or None (O(1))."""
        verdict = self.refused.get(model) if self.refused else None
        return None if verdict is None else ModelNotApproved(verdict)

    # ---------------------------------------------------------------------------- background
    def start(self) -> None:
        """Judge now, before the first request is served (start-up, like opening the prediction
        log), then every ``interval`` seconds in a daemon thread."""
        if not self.active or self._thread is not None:
            return
        self.refresh()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mlmon-serving-gate", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.refresh()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self._thread = None
        if self._registry is not None:
            self._registry.close()
            self._registry = None

    def after_fork(self) -> None:
        """In a forked child: no thread, and the parent's connection is not ours to use."""
        self._thread, self._registry, self._stop = None, None, threading.Event()

    def refresh(self) -> None:
        """Judge every model now, and write ``first_served`` for versions seen serving. A
        registry that cannot be read keeps the last verdicts (counted: stage ``governance``)."""
        if not self.active:
            return
        try:
            if self._registry is None:
                self._registry = ModelRegistry(self.location)
            served = list(self.models())
            judged = {model.name: self._judge(self._registry, model) for model in served}
        except Exception as exc:
            self.errors.report("governance", exc, "the registry could not be read: the last verdicts stay")
            return
        self.verdicts = {name: v for name, v in judged.items() if v is not None}
        self.ungoverned = tuple(name for name, v in judged.items() if v is None)
        refused = {name: v for name, v in self.verdicts.items() if not v.approved}
        self.refused = Refusals(refused, set(judged)) if self.enforce else {}
        for model in served:
            try:
                self._announce(self._registry, model, judged[model.name])
            except Exception as exc:
                self.errors.report("governance", exc, "first_served could not be written: tried again later")

    def _judge(self, registry: ModelRegistry, model: Served) -> Verdict | None:
        """The model's verdict; None for a model the registry has no version of, unless enforcing."""
        try:
            registered: ModelVersion | None = registry.get_version(model.name, model.version)
        except UnknownVersion:
            if not self.enforce and not registry.list_versions(model.name):
                return None
            registered = None
        now = time.time()
        served = getattr(model.options, "artifact_sha256", None)
        path = getattr(model.options, "artifact", None)
        if served is None and path is not None:
            known = self._hashes.get(str(path))
            if known is None:
                try:
                    known = sha256_file(path)
                except (OSError, ValueError) as exc:
                    known = exc
                self._hashes[str(path)] = known
            if isinstance(known, Exception):
                return Verdict(model.name, model.version, False, f"the artifact {os.fspath(path)} cannot be hashed: "
                               f"{known}", None, now)
            served = known
        return judge(model.name, model.version, registered, served, now,
                     approval_required=registry.policy(model.name).approval_required)

    def _announce(self, registry: ModelRegistry, model: Served, verdict: Verdict | None) -> None:
        """Append ``first_served`` for the model's version, unless one exists in the database."""
        key = (model.name, model.version)
        if key in self._announced or not model.counters.counts().predictions.get("ok"):
            return
        audit = registry.audit
        with audit.db.write() as tx:  # exclusive: one check-and-append across processes
            if tx.one("SELECT 1 FROM audit_events WHERE event_type = 'first_served' AND model = ? AND version = ?",
                      key) is None:
                audit.append_in(tx, "first_served", "mlmon", model.name, model.version, {
                    "approved": None if verdict is None else verdict.approved,
                    "reason": "not in the registry" if verdict is None else verdict.reason or None,
                    "artifact_sha256": None if verdict is None else verdict.artifact_sha256,
                    "host": socket.gethostname(), "pid": os.getpid()})
        self._announced.add(key)

    # ------------------------------------------------------------------------------- reading
    def unapproved(self, model: str, version: str) -> str:
        """Why ``model`` ``version`` is not approved for serving ("" when it is, or is not
        judged): what a scheduled check turns into the ``ModelNotApproved`` alert."""
        verdict = self.verdicts.get(model)
        return verdict.reason if verdict is not None and verdict.version == version and not verdict.approved else ""

    def issues(self) -> list[str]:
        """One line per model version not approved for serving (health's ``issues``)."""
        action = "requests are refused with 503" if self.enforce else "served anyway (enforce_approval is off)"
        return [f"{v.model} version {v.version}: not approved for serving: {v.reason}; {action}"
                for v in self.verdicts.values() if not v.approved]

    def health(self) -> dict[str, Any]:
        """Health's ``serving_gate``: active or why not, enforcing or not, each model's verdict."""
        return {"active": self.active, "enforce": self.enforce, "reason": None if self.active else NO_REGISTRY,
                "models": {name: v.to_json() for name, v in self.verdicts.items()},
                "not_in_registry": list(self.ungoverned)}

    def observations(self) -> list[tuple[float, dict[str, Any]]]:
        """``mlmon.model.approved``: 1 or 0 per model judged (none while inactive)."""
        return [(1 if v.approved else 0, {MODEL_NAME: v.model, MODEL_VERSION: v.version})
                for v in self.verdicts.values()]
