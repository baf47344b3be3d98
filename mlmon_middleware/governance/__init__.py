"""Governance next to serving: a model registry with an approval gate, and a tamper-evident
audit log, in the prediction log's database (a SQLite file by default, PostgreSQL when
``MLMON_STORE_URL`` is set), so that every replica sees one registry and one history.

* :class:`ModelRegistry` (``registry.py``): register, submit, approve (four-eyes), reject,
  deploy, roll back, retire; ``deployed_version(model)``; typed refusals (``errors.py``).
* :class:`AuditLog` (``audit.py``): ``append``, ``query``, ``export_jsonl``, ``verify``; the hash
  chain itself and what is hashed are in ``chain.py``.
* :class:`ModelFacts`, :class:`ModelVersion`, :class:`ModelPolicy` (``facts.py``): what the
  registry holds; ``sha256_file`` hashes an artifact or a baseline.

docs/governance.md has the workflow, the CLI (``mlmon registry``, ``mlmon audit``) and what the
hash chain proves and does not.

>>> from mlmon_middleware.governance import ModelRegistry, AuditLog, ApprovalRequired, FourEyesViolation
"""

from mlmon_middleware.governance.audit import EVENT_TYPES, AuditLog, audit_key_from_env, parse_time, verify_jsonl
from mlmon_middleware.governance.chain import AuditEvent, BrokenLink, VerifyResult
from mlmon_middleware.governance.db import GovernanceDB, default_location
from mlmon_middleware.governance.errors import (
    ApprovalRequired,
    ChainBroken,
    FourEyesViolation,
    GovernanceError,
    InvalidTransition,
    MissingMetrics,
    UnknownVersion,
    VersionExists,
)
from mlmon_middleware.governance.facts import STATES, ModelFacts, ModelPolicy, ModelVersion, sha256_file
from mlmon_middleware.governance.registry import ModelRegistry

__all__ = [
    "EVENT_TYPES", "STATES", "ApprovalRequired", "AuditEvent", "AuditLog", "BrokenLink", "ChainBroken",
    "FourEyesViolation", "GovernanceDB", "GovernanceError", "InvalidTransition", "MissingMetrics", "ModelFacts",
    "ModelPolicy", "ModelRegistry", "ModelVersion", "UnknownVersion", "VerifyResult", "VersionExists",
    "audit_key_from_env", "default_location", "parse_time", "sha256_file", "verify_jsonl",
]
