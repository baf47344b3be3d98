"""What the registry holds about a model version: its facts (what a model card shows), its
workflow state, and the per-model policy; plus the hashing and validation they need.

A version's facts are fixed at registration: the artifact's and the baseline's SHA-256, the
evaluation metrics overall and per group, and :class:`ModelFacts` (owner, intended and
out-of-scope uses, training data and its date range, evaluation data, limitations, biases,
mitigations). Its state moves along :data:`STATES`; who moved it and when is on the
:class:`ModelVersion` and, in full, in the audit log.

>>> facts = ModelFacts.from_dict({"owner": "risk-team", "intended_use": "score card payments",
...                               "training_data_start": "2024-01-01", "training_data_end": "2024-06-30"})
>>> facts.intended_use, facts.training_data_end
(('score card payments',), '2024-06-30')
>>> ModelFacts.from_dict({"owner": "x", "color": "red"})
Traceback (most recent call last):
...
mlmon_middleware.governance.errors.GovernanceError: unknown model facts: ['color'] (known: biases, description, \
evaluation_data, intended_use, limitations, mitigations, out_of_scope_uses, owner, training_data, training_data_end, \
training_data_size, training_data_start)
>>> sha256_bytes(b"model")[:16]
'9372c470eeadd5ec'
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import math
import os
import pickle
import re
from collections.abc import Mapping
from typing import Any

from mlmon_middleware.governance.errors import GovernanceError

#: a version's states; ``rejected`` and ``rolled_back`` may be submitted for review again
STATES = ("draft", "in_review", "rejected", "approved", "deployed", "rolled_back", "retired")
HEX64 = re.compile(r"[0-9a-f]{64}\Z")
MAX_ITEMS = 100  # metrics, groups, list entries
MAX_FACT_CHARS = 10_000  # characters of one text fact


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The SHA-256 (hex) of a file's bytes, read in 1 MiB chunks; ``GovernanceError`` naming
    the file when it cannot be read."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        raise GovernanceError(f"cannot hash {os.fspath(path)!r}: {exc.strerror or exc}") from None
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def artifact_hash(artifact: object) -> tuple[str, str]:
    """(SHA-256, how it was taken) of a model artifact: a file path (its bytes), ``bytes``, or
    an in-memory model (its pickle, protocol 5: the same object pickled by the same library
    versions gives the same hash; prefer the file you deploy)."""
    if isinstance(artifact, (str, os.PathLike)):
        return sha256_file(artifact), "file"
    if isinstance(artifact, (bytes, bytearray, memoryview)):
        return sha256_bytes(bytes(artifact)), "bytes"
    try:
        return sha256_bytes(pickle.dumps(artifact, protocol=5)), "pickle"
    except Exception as exc:  # pickle raises many kinds for objects it cannot write
        raise GovernanceError(f"cannot hash the model artifact ({type(artifact).__name__} does not pickle: {exc}): pass "
                              "its file's path, its bytes, or artifact_sha256") from None


def check_sha256(value: object, what: str) -> str:
    text = value.lower() if isinstance(value, str) else ""
    if not HEX64.match(text):
        raise GovernanceError(f"{what} must be a SHA-256 in hex (64 characters 0-9a-f), got {value!r}")
    return text


def check_metrics(metrics: object, what: str = "metrics") -> dict[str, float]:
    """``{name: finite number}``, at most :data:`MAX_ITEMS` of them."""
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping) or len(metrics) > MAX_ITEMS:
        raise GovernanceError(f"{what} must be a mapping of at most {MAX_ITEMS} metric names to numbers")
    out = {}
    for name, value in metrics.items():
        if not isinstance(name, str) or not name or len(name) > 200:
            raise GovernanceError(f"{what}: metric names must be non-empty strings, got {name!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise GovernanceError(f"{what}: {name!r} must be a finite number, got {value!r}")
        out[name] = float(value)
    return out


def check_group_metrics(groups: object) -> dict[str, dict[str, float]]:
    """``{group: {metric: number}}`` (a group like ``"region=EU"``)."""
    if groups is None:
        return {}
    if not isinstance(groups, Mapping) or len(groups) > MAX_ITEMS:
        raise GovernanceError(f"group_metrics must be a mapping of at most {MAX_ITEMS} groups to their metrics")
    out = {}
    for group, metrics in groups.items():
        if not isinstance(group, str) or not group or len(group) > 200:
            raise GovernanceError(f"group_metrics: group names must be non-empty strings, got {group!r}")
        out[group] = check_metrics(metrics, f"group_metrics[{group!r}]")
    return out


@dataclasses.dataclass(frozen=True)
class ModelFacts:
    """What a model card says about a version beyond its metrics (all optional; a card shows
    what is missing as not stated). Dates are ISO 8601 (``YYYY-MM-DD``)."""

    owner: str = ""
    description: str = ""
    intended_use: tuple[str, ...] = ()
    out_of_scope_uses: tuple[str, ...] = ()
    training_data: str = ""  # what it is and where it came from
    training_data_start: str | None = None
    training_data_end: str | None = None
    training_data_size: int | None = None  # rows
    evaluation_data: str = ""
    limitations: tuple[str, ...] = ()
    biases: tuple[str, ...] = ()
    mitigations: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelFacts:
        """Facts from a mapping (a JSON or YAML file's); a list field also takes one string.
        Raises ``GovernanceError`` naming an unknown or malformed field."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise GovernanceError(f"unknown model facts: {unknown} (known: {', '.join(sorted(known))})")
        values: dict[str, Any] = {}
        for name, value in data.items():
            if value is None:
                continue
            default = known[name].default
            if isinstance(default, tuple):
                items = (value,) if isinstance(value, str) else value
                if not isinstance(items, (list, tuple)) or len(items) > MAX_ITEMS:
                    raise GovernanceError(f"{name} must be a string or a list of at most {MAX_ITEMS} strings")
                values[name] = tuple(_text(item, name) for item in items)
            elif name == "training_data_size":
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise GovernanceError(f"training_data_size must be a whole number of rows, got {value!r}")
                values[name] = value
            elif name in ("training_data_start", "training_data_end"):
                values[name] = _date(value, name)
            else:
                values[name] = _text(value, name)
        facts = cls(**values)
        if facts.training_data_start and facts.training_data_end and facts.training_data_start > facts.training_data_end:
            raise GovernanceError(f"training_data_start {facts.training_data_start} is after training_data_end "
                                  f"{facts.training_data_end}")
        return facts

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def _text(value: object, name: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_FACT_CHARS:
        raise GovernanceError(f"{name} must be text of at most {MAX_FACT_CHARS} characters, got {str(value)[:80]!r}")
    return value


def _date(value: object, name: str) -> str:
    if isinstance(value, datetime.date):  # YAML reads 2024-01-01 as a date
        return value.isoformat()[:10]
    try:
        return datetime.date.fromisoformat(str(value)).isoformat()
    except ValueError:
        raise GovernanceError(f"{name} must be a date like 2024-01-31, got {value!r}") from None


@dataclasses.dataclass(frozen=True)
class ModelPolicy:
    """A model's governance policy: the metrics every registration must report, and whether a
    deployment needs an approval (four-eyes) first."""

    required_metrics: tuple[str, ...] = ()
    approval_required: bool = True

    def missing(self, metrics: Mapping[str, float]) -> list[str]:
        return sorted(set(self.required_metrics) - set(metrics))


@dataclasses.dataclass(frozen=True)
class ModelVersion:
    """One registered model version. Times are ISO 8601 in UTC; ``approved_*`` are None until
    an approval, ``deployed_at`` is the last time it was deployed (None if never)."""

    name: str
    version: str
    state: str
    artifact_sha256: str
    baseline_sha256: str | None
    metrics: Mapping[str, float]
    group_metrics: Mapping[str, Mapping[str, float]]
    facts: ModelFacts
    created_by: str
    created_at: str
    submitted_by: str | None = None
    submitted_at: str | None = None
    approved_by: str | None = None
    approved_at: str | None = None
    approval_reason: str | None = None
    deployed_at: str | None = None
    changed_at: str | None = None

    @property
    def deployed(self) -> bool:
        return self.state == "deployed"

    @property
    def status(self) -> str:
        """The state, by the name the domain text's exercise gives it (its ``pending_review`` is
        our ``in_review``, its ``deprecated`` our ``retired``)."""
        return self.state

    def to_json(self) -> dict[str, Any]:
        """Every field, JSON-ready (the CLI's ``show`` and the routes answer this)."""
        out = dataclasses.asdict(self)
        out["facts"] = self.facts.to_dict()
        return out
