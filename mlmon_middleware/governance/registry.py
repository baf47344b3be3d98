"""The model registry: versions, their facts, and the approval gate before deployment.

A version is registered (``draft``) with its artifact's SHA-256 and the metrics its model's
policy requires, submitted for review (``in_review``), approved by someone other than its
registrant (four-eyes, with a reason) or rejected, deployed (one version per model at a time;
deploying another puts the previous one back to ``approved``), rolled back (the deployed version
becomes ``rolled_back`` and the one deployed before it is deployed again) and retired. Deploying a
version that was not approved raises :class:`~mlmon_middleware.governance.errors.ApprovalRequired`
(a ``ValueError``). Every change commits in one transaction with its audit event
(``registered``, ``submitted``, ``approved``, ``rejected``, ``deployed``, ``rolled_back``,
``retired``, ``policy_changed``), so the registry and its history never disagree.

Actors are names the caller gives (``created_by``, ``approved_by``, ``actor``); when an ``actor``
may be left out it is the operating-system user running the process. They are claims recorded
as given, not authentication: who may call is for the caller (the CLI's user, the route's token).

>>> import os, tempfile
>>> registry = ModelRegistry(os.path.join(tempfile.mkdtemp(), "predictions.sqlite"),
...                          required_metrics=["accuracy", "recall"], audit_key=b"")
>>> v = registry.register_model("fraud", "1.0", b"model bytes", {"accuracy": 0.95, "recall": 0.88}, "ds@example.com")
>>> try:
...     registry.deploy_model("fraud", "1.0", actor="ops@example.com")
... except ValueError as exc:
...     print(type(exc).__name__)
ApprovalRequired
>>> _ = registry.submit_for_review("fraud", "1.0", actor="ds@example.com")
>>> registry.approve_model("fraud", "1.0", "lead@example.com", "metrics reviewed").state
'approved'
>>> registry.deploy_model("fraud", "1.0", actor="ops@example.com").state
'deployed'
>>> [e.event_type for e in registry.get_audit_log("fraud")]
['registered', 'submitted', 'approved', 'deployed']
>>> registry.close()
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Iterable, Mapping
from typing import Any

from mlmon_middleware.governance.audit import AuditEvent, AuditLog, check_text, now_iso
from mlmon_middleware.governance.db import GovernanceDB, Tx
from mlmon_middleware.governance.errors import (
    ApprovalRequired,
    FourEyesViolation,
    GovernanceError,
    InvalidTransition,
    MissingMetrics,
    UnknownVersion,
    VersionExists,
)
from mlmon_middleware.governance.facts import (
    ModelFacts,
    ModelPolicy,
    ModelVersion,
    artifact_hash,
    check_group_metrics,
    check_metrics,
    check_sha256,
    sha256_file,
)

COLUMNS = ("model, version, state, artifact_sha256, baseline_sha256, metrics, group_metrics, facts, registered_by, "
           "registered_at, submitted_by, submitted_at, approved_by, approved_at, approval_reason, deployed_at, changed_at")
MAX_REASON = 2000  # characters of a reason


class ModelRegistry:
    """The registry in the database at ``location``: an SQLite file, a folder holding
    ``predictions.sqlite`` (a monitor's ``store_dir``), a ``postgresql://`` URL (a monitor's
    ``store_location`` is either), by default the monitor's prediction log as the environment
    sets it (``MLMON_STORE_URL``, else ``$MLMON_STORE_DIR/predictions.sqlite``); or an open ``db``.

    ``required_metrics`` and ``approval_required`` are the policy of every model that has none
    of its own (:meth:`set_policy` stores one in the database, for every process).
    ``audit_key``: the audit log's HMAC key (see :class:`~mlmon_middleware.governance.audit.AuditLog`).
    The audit log is :attr:`audit`. Thread- and process-safe."""

    def __init__(self, location: str | None = None, *, required_metrics: Iterable[str] = (),
                 approval_required: bool = True, audit_key: bytes | str | None = None, db: GovernanceDB | None = None) -> None:
        self.db = db if db is not None else GovernanceDB(location)
        self.audit = AuditLog(db=self.db, key=audit_key)
        self.default_policy = ModelPolicy(_metric_names(required_metrics), bool(approval_required))

    # -------------------------------------------------------------------------------- policy
    def policy(self, name: str) -> ModelPolicy:
        """The policy in force for model ``name``: its own, else the registry's default."""
        with self.db.read() as tx:
            return self._policy(tx, name)

    def set_policy(self, name: str, actor: str, *, required_metrics: Iterable[str] | None = (),
                   approval_required: bool | None = True) -> ModelPolicy:
        """Store model ``name``'s policy (audited as ``policy_changed``); later registrations
        and approvals are checked against it. A setting given as None keeps its value (read in
        the same transaction: two people changing different settings at once both count)."""
        check_text(name, "model name")
        metrics = None if required_metrics is None else _metric_names(required_metrics)
        with self.db.write() as tx:
            before = self._policy(tx, name)
            policy = ModelPolicy(before.required_metrics if metrics is None else metrics,
                                 before.approval_required if approval_required is None else bool(approval_required))
            body = json.dumps({"required_metrics": list(policy.required_metrics),
                               "approval_required": policy.approval_required})
            tx.execute("INSERT INTO registry_policies (model, body) VALUES (?, ?) ON CONFLICT (model) DO UPDATE "
                       "SET body = excluded.body", (name, body))
            self.audit.append_in(tx, "policy_changed", actor, name, None, {
                "required_metrics": list(policy.required_metrics), "approval_required": policy.approval_required,
                "before": {"required_metrics": list(before.required_metrics),
                           "approval_required": before.approval_required}})
        return policy

    def _policy(self, tx: Tx, name: str) -> ModelPolicy:
        row = tx.one("SELECT body FROM registry_policies WHERE model = ?", (name,))
        if row is None:
            return self.default_policy
        body = json.loads(row[0])
        return ModelPolicy(tuple(body["required_metrics"]), bool(body["approval_required"]))

    # --------------------------------------------------------------------------- registering
    def register_model(self, name: str, version: str, model_artifact: object = None,
                       metrics: Mapping[str, float] | None = None, created_by: str | None = None, *,
                       artifact_sha256: str | None = None, group_metrics: Mapping[str, Mapping[str, float]] | None = None,
                       baseline: str | None = None, baseline_sha256: str | None = None,
                       facts: ModelFacts | Mapping[str, Any] | None = None) -> ModelVersion:
        """Register ``name`` ``version`` as a draft, by ``created_by``.

        The artifact is identified by its SHA-256: ``artifact_sha256``, or hashed from
        ``model_artifact`` (a file path, bytes, or an in-memory model: see
        :func:`~mlmon_middleware.governance.facts.artifact_hash`); both given must agree.
        ``metrics`` overall and ``group_metrics`` per group (``{"region=EU": {"recall": 0.8}}``)
        must include every metric the model's policy requires (else :class:`MissingMetrics`
        naming them). ``baseline`` (a file, hashed) or ``baseline_sha256``: the drift baseline
        the version was profiled against. ``facts``: what a model card says
        (:class:`~mlmon_middleware.governance.facts.ModelFacts`, or a mapping of its fields).
        Raises :class:`VersionExists` when the version is registered already."""
        name, version = _name(name, version)
        actor = check_text(created_by, "created_by (who registers the version)") or ""
        given = None if artifact_sha256 is None else check_sha256(artifact_sha256, "artifact_sha256")
        if model_artifact is None and given is None:
            raise GovernanceError("a registration needs the model artifact (a file path, bytes or the model object) or "
                                  "artifact_sha256")
        sha, hashed_as = (given, "given") if model_artifact is None else artifact_hash(model_artifact)
        if given is not None and sha != given:
            raise GovernanceError(f"artifact_sha256 {given} is not the artifact's SHA-256 ({sha})")
        if baseline is not None:
            baseline_sha256 = sha256_file(baseline)
        elif baseline_sha256 is not None:
            baseline_sha256 = check_sha256(baseline_sha256, "baseline_sha256")
        overall, groups = check_metrics(metrics), check_group_metrics(group_metrics)
        card = facts if isinstance(facts, ModelFacts) else ModelFacts.from_dict(facts or {})
        with self.db.write() as tx:
            policy = self._policy(tx, name)
            if policy.missing(overall):
                raise MissingMetrics(name, version, policy.missing(overall))
            if tx.one("SELECT state FROM registry_versions WHERE model = ? AND version = ?", (name, version)):
                raise VersionExists(f"model {name!r} version {version!r} is registered already (versions are immutable: "
                                    "register a new version)")
            now = now_iso()
            tx.execute(f"INSERT INTO registry_versions ({COLUMNS}) VALUES ({', '.join('?' * 17)})",
                       (name, version, "draft", sha, baseline_sha256, json.dumps(overall), json.dumps(groups),
                        json.dumps(card.to_dict()), actor, now, None, None, None, None, None, None, now))
            self.audit.append_in(tx, "registered", actor, name, version, {
                "artifact_sha256": sha, "artifact_hashed_as": hashed_as, "baseline_sha256": baseline_sha256,
                "metrics": overall, "group_metrics": groups, "facts": card.to_dict(),
                "required_metrics": list(policy.required_metrics)})
            return self._get(tx, name, version)

    # ----------------------------------------------------------------------------- workflow
    def submit_for_review(self, name: str, version: str, actor: str | None = None) -> ModelVersion:
        """``draft`` (or ``rejected``, ``rolled_back``) → ``in_review``."""
        with self.db.write() as tx:
            current = self._get(tx, name, version)
            _require(current, ("draft", "rejected", "rolled_back"), "submitted for review")
            who = _actor(actor)
            return self._move(tx, current, "in_review", "submitted", who, {}, submitted_by=who, submitted_at=now_iso())

    def approve_model(self, name: str, version: str, approved_by: str, reason: str = "", *,
                      comments: str = "") -> ModelVersion:
        """``in_review`` → ``approved``, by someone other than the registrant
        (:class:`FourEyesViolation`), while the version still has every metric the model's
        policy requires (:class:`MissingMetrics`). ``comments``: the reason, by the name the
        domain text's exercise gives it. A version deployed without an approval (while its
        model's policy required none) is approved in place: it stays deployed, and the
        ``approved`` event says ``in_place``."""
        who = check_text(approved_by, "approved_by (the reviewer)") or ""
        text = _reason(reason or comments, required=False)
        with self.db.write() as tx:
            current = self._get(tx, name, version)
            in_place = current.state == "deployed" and current.approved_by is None
            _require(current, ("in_review", "deployed") if in_place else ("in_review",), "approved",
                     hint=" (submit it for review first)" if current.state == "draft" else "")
            if _same_person(who, current.created_by):
                raise FourEyesViolation(f"{who!r} registered model {current.name!r} version {current.version!r} and may "
                                        "not approve it: approval needs a second person (four-eyes)")
            missing = self._policy(tx, current.name).missing(current.metrics)
            if missing:
                raise MissingMetrics(current.name, current.version, missing)
            return self._move(tx, current, current.state if in_place else "approved", "approved", who,
                              {"reason": text, **({"in_place": True} if in_place else {})}, approved_by=who,
                              approval_reason=text, approved_at=now_iso())

    def reject_model(self, name: str, version: str, rejected_by: str, reason: str) -> ModelVersion:
        """``in_review`` → ``rejected``, with a reason (required); it may be submitted again."""
        who = check_text(rejected_by, "rejected_by (the reviewer)") or ""
        text = _reason(reason, required=True)
        with self.db.write() as tx:
            current = self._get(tx, name, version)
            _require(current, ("in_review",), "rejected")
            return self._move(tx, current, "rejected", "rejected", who, {"reason": text})

    def deploy_model(self, name: str, version: str, actor: str | None = None) -> ModelVersion:
        """``approved`` → ``deployed`` (with a policy that does not require approval, a draft or
        a version in review too); the version deployed before goes back to ``approved`` (to
        ``draft`` if it never was: it needs a review before it may serve again under a policy
        that requires one). Raises :class:`ApprovalRequired` for a version not approved."""
        with self.db.write() as tx:
            current = self._get(tx, name, version)
            policy = self._policy(tx, current.name)
            allowed = ("approved",) if policy.approval_required else ("approved", "draft", "in_review")
            if current.state not in allowed and current.state in ("draft", "in_review", "rejected", "rolled_back"):
                raise ApprovalRequired(f"model {current.name!r} version {current.version!r} is {current.state}, not "
                                       "approved: it cannot be deployed until a reviewer other than its registrant "
                                       "approves it (submit it for review, then have it approved)")
            _require(current, allowed, "deployed")
            previous = self._deployed(tx, current.name)
            details: dict[str, Any] = {"replaces": None if previous is None else previous.version,
                                       "artifact_sha256": current.artifact_sha256}
            if current.state != "approved":
                details["approval"] = "not required by the model's policy"
            if previous is not None:
                self._update(tx, previous, "approved" if previous.approved_by is not None else "draft")
            return self._move(tx, current, "deployed", "deployed", _actor(actor), details, deployed_at=now_iso())

    def rollback_model(self, name: str, actor: str | None = None, reason: str = "") -> ModelVersion:
        """Deploy again the version deployed before the current one (the approved version most
        recently deployed; with a policy that requires no approval, a draft deployed before
        counts too); the current one becomes ``rolled_back``. Returns the version now
        deployed; :class:`InvalidTransition` when there is nothing to go back to."""
        text = _reason(reason, required=False)
        with self.db.write() as tx:
            current = self._deployed(tx, name)
            if current is None:
                raise InvalidTransition(f"model {name!r} has no deployed version to roll back")
            states = "'approved'" if self._policy(tx, name).approval_required else "'approved', 'draft'"
            row = tx.one(f"SELECT {COLUMNS} FROM registry_versions WHERE model = ? AND state IN ({states}) "
                         "AND deployed_at IS NOT NULL ORDER BY deployed_at DESC LIMIT 1", (name,))
            if row is None:
                raise InvalidTransition(f"model {name!r}: no earlier deployed version that is still approved to roll back to")
            target = _version(row)
            self._update(tx, current, "rolled_back")
            return self._move(tx, target, "deployed", "rolled_back", _actor(actor),
                              {"from_version": current.version, "reason": text, "artifact_sha256": target.artifact_sha256},
                              deployed_at=now_iso())

    def retire_model(self, name: str, version: str, actor: str | None = None, reason: str = "") -> ModelVersion:
        """Any state but ``retired`` → ``retired`` (a deployed version leaves the model with none)."""
        text = _reason(reason, required=False)
        with self.db.write() as tx:
            current = self._get(tx, name, version)
            if current.state == "retired":
                raise InvalidTransition(f"model {current.name!r} version {current.version!r} is retired already")
            return self._move(tx, current, "retired", "retired", _actor(actor), {"reason": text})

    # ------------------------------------------------------------------------------ reading
    def get_version(self, name: str, version: str) -> ModelVersion:
        """The version, or :class:`UnknownVersion`."""
        with self.db.read() as tx:
            return self._get(tx, name, version)

    def list_versions(self, name: str | None = None) -> list[ModelVersion]:
        """Every version (of model ``name``, or of all), in the order they were registered."""
        where, params = (" WHERE model = ?", (name,)) if name is not None else ("", ())
        with self.db.read() as tx:
            rows = tx.execute(f"SELECT {COLUMNS} FROM registry_versions{where} ORDER BY registered_at, model, version",
                              params)
        return [_version(r) for r in rows]

    def deployed_version(self, name: str) -> ModelVersion | None:
        """The version of model ``name`` the registry says is deployed, or None."""
        with self.db.read() as tx:
            return self._deployed(tx, name)

    def get_audit_log(self, name: str | None = None) -> list[AuditEvent]:
        """The audit events (of model ``name``, or all), oldest first."""
        return self.audit.query(model=name)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> ModelRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------ helpers
    def _get(self, tx: Tx, name: str, version: str) -> ModelVersion:
        name, version = _name(name, version)
        row = tx.one(f"SELECT {COLUMNS} FROM registry_versions WHERE model = ? AND version = ?", (name, version))
        if row is None:
            raise UnknownVersion(f"model {name!r} version {version!r} is not registered")
        return _version(row)

    def _deployed(self, tx: Tx, name: str) -> ModelVersion | None:
        row = tx.one(f"SELECT {COLUMNS} FROM registry_versions WHERE model = ? AND state = 'deployed'", (name,))
        return None if row is None else _version(row)

    def _update(self, tx: Tx, current: ModelVersion, state: str, **columns: str | None) -> None:
        sets = "".join(f", {column} = ?" for column in columns)
        tx.execute(f"UPDATE registry_versions SET state = ?, changed_at = ?{sets} WHERE model = ? AND version = ?",
                   (state, now_iso(), *columns.values(), current.name, current.version))

    def _move(self, tx: Tx, current: ModelVersion, state: str, event: str, actor: str, details: dict[str, Any],
              **columns: str | None) -> ModelVersion:
        """Set the version's state (and ``columns``) and append its audit event, in ``tx``."""
        self._update(tx, current, state, **columns)
        self.audit.append_in(tx, event, actor, current.name, current.version, {"from": current.state, "to": state, **details})
        return self._get(tx, current.name, current.version)


def _version(row: tuple[Any, ...]) -> ModelVersion:
    (name, version, state, artifact, baseline, metrics, groups, facts, registered_by, registered_at, submitted_by,
     submitted_at, approved_by, approved_at, reason, deployed_at, changed_at) = row
    return ModelVersion(name, version, state, artifact, baseline, json.loads(metrics), json.loads(groups),
                        ModelFacts.from_dict(json.loads(facts)), registered_by, registered_at, submitted_by, submitted_at,
                        approved_by, approved_at, reason, deployed_at, changed_at)


def _name(name: str, version: str) -> tuple[str, str]:
    return check_text(name, "model name") or "", check_text(version, "version") or ""


def _metric_names(names: Iterable[str]) -> tuple[str, ...]:
    listed = [names] if isinstance(names, str) else list(names)
    for metric in listed:
        check_text(metric, "a required metric's name")
    return tuple(sorted(set(listed)))


def _require(current: ModelVersion, states: tuple[str, ...], done: str, hint: str = "") -> None:
    if current.state not in states:
        raise InvalidTransition(f"model {current.name!r} version {current.version!r} is {current.state}: only a version "
                                f"that is {' or '.join(states)} can be {done}{hint}")


def _actor(actor: str | None) -> str:
    """The actor given, else the operating-system user running this process."""
    if actor is None:
        try:
            actor = getpass.getuser()
        except (KeyError, OSError):  # no user name for this uid (a bare container)
            actor = "unknown"
    return check_text(actor, "actor") or ""


def _same_person(a: str, b: str) -> bool:
    return a.strip().casefold() == b.strip().casefold()


def _reason(reason: object, *, required: bool) -> str:
    if reason is None:
        reason = ""
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        raise GovernanceError(f"a reason must be text of at most {MAX_REASON} characters")
    if required and not reason.strip():
        raise GovernanceError("a reason is required")
    return reason
