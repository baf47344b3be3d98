"""The model registry: the domain text's exercise end to end, the four-eyes approval gate,
per-model required metrics, deploy/rollback/retire, facts and hashes, and ``mlmon registry``.

The registry's tests run on both backends (the ``location`` fixture of
tests/governance_fixtures.py: an SQLite file, then a PostgreSQL database), as tests/test_store.py does.
"""

import contextlib
import hashlib
import io
import json
import os
import sqlite3
import subprocess
import sys
from unittest import mock

import governance_fixtures
import pytest

from mlmon_middleware.cli import main
from mlmon_middleware.governance import (
    ApprovalRequired,
    FourEyesViolation,
    GovernanceError,
    InvalidTransition,
    MissingMetrics,
    ModelFacts,
    ModelRegistry,
    UnknownVersion,
    VersionExists,
)
from mlmon_middleware.store import LogRow, open_store

location, postgres_database = governance_fixtures.location, governance_fixtures.postgres_database  # both backends

METRICS = {"accuracy": 0.95, "precision": 0.92, "recall": 0.88}


@pytest.fixture
def registry(location):
    opened = ModelRegistry(location, required_metrics=["accuracy", "precision", "recall"], audit_key=b"")
    yield opened
    opened.close()


def register(registry, version, who="ds@company.com", **kwargs):
    return registry.register_model("fraud_detector", version, kwargs.pop("artifact", version.encode()),
                                   kwargs.pop("metrics", METRICS), who, **kwargs)


def approved(registry, version):
    register(registry, version)
    registry.submit_for_review("fraud_detector", version, actor="ds@company.com")
    return registry.approve_model("fraud_detector", version, "ml_lead@company.com", "reviewed")


def test_the_exercise_flow_end_to_end(location):
    """The domain text's exercise, as written there (its model object, positional arguments, no
    actor for submit and deploy), then the audit log it leaves behind."""
    registry = ModelRegistry(location, required_metrics=["accuracy", "precision", "recall"], approval_required=True,
                             audit_key=b"")
    model = {"kind": "RandomForestClassifier", "weights": [0.1, 0.2, 0.7]}  # an in-memory model: hashed as its pickle
    version = registry.register_model(name="fraud_detector", version="v1.0.0", model_artifact=model,
                                      metrics={"accuracy": 0.95, "precision": 0.92, "recall": 0.88},
                                      created_by="data_scientist@company.com")
    assert (version.name, version.version, version.state, version.created_by) == (
        "fraud_detector", "v1.0.0", "draft", "data_scientist@company.com")
    with pytest.raises(ValueError, match="not approved") as refused:
        registry.deploy_model("fraud_detector", "v1.0.0")
    assert type(refused.value) is ApprovalRequired
    assert registry.deployed_version("fraud_detector") is None
    registry.submit_for_review("fraud_detector", "v1.0.0")
    assert registry.approve_model("fraud_detector", "v1.0.0", "ml_lead@company.com")
    assert registry.deploy_model("fraud_detector", "v1.0.0")
    deployed = registry.deployed_version("fraud_detector")
    assert (deployed.version, deployed.approved_by, deployed.state) == ("v1.0.0", "ml_lead@company.com", "deployed")
    events = registry.get_audit_log("fraud_detector")
    assert [(e.event_type, e.version) for e in events] == [
        ("registered", "v1.0.0"), ("submitted", "v1.0.0"), ("approved", "v1.0.0"), ("deployed", "v1.0.0")]
    assert events[0].actor == "data_scientist@company.com" and events[2].actor == "ml_lead@company.com"
    assert events[0].details["metrics"] == METRICS and events[0].details["artifact_hashed_as"] == "pickle"
    assert [e.details["to"] for e in events[1:]] == ["in_review", "approved", "deployed"]
    assert all(e.prev_hash == p.hash for p, e in zip(events, events[1:]))
    assert registry.audit.verify().ok
    registry.close()


def test_registration_without_the_required_metrics_is_refused_naming_them(registry):
    with pytest.raises(MissingMetrics, match="required metrics missing: precision, recall") as refused:
        register(registry, "1", metrics={"accuracy": 0.9})
    assert refused.value.missing == ["precision", "recall"]
    with pytest.raises(UnknownVersion):
        registry.get_version("fraud_detector", "1")
    assert registry.get_audit_log() == []  # a refusal changes nothing


def test_the_approver_must_not_be_the_registrant(registry):
    register(registry, "1", who="Ana@Company.com")
    registry.submit_for_review("fraud_detector", "1", actor="ana@company.com")
    with pytest.raises(FourEyesViolation, match="four-eyes"):
        registry.approve_model("fraud_detector", "1", " ana@company.COM ", "looks fine to me")
    assert registry.get_version("fraud_detector", "1").state == "in_review"
    assert [e.event_type for e in registry.get_audit_log()] == ["registered", "submitted"]
    version = registry.approve_model("fraud_detector", "1", "bo@company.com", "metrics checked against last quarter")
    assert (version.state, version.approved_by, version.approval_reason) == (
        "approved", "bo@company.com", "metrics checked against last quarter")
    assert registry.get_audit_log()[-1].details["reason"] == "metrics checked against last quarter"


def test_every_step_needs_the_right_state(registry):
    register(registry, "1")
    with pytest.raises(InvalidTransition, match="submit it for review first"):
        registry.approve_model("fraud_detector", "1", "bo", "ok")
    with pytest.raises(InvalidTransition):
        registry.reject_model("fraud_detector", "1", "bo", "no")
    registry.submit_for_review("fraud_detector", "1", actor="ds")
    with pytest.raises(InvalidTransition):
        registry.submit_for_review("fraud_detector", "1", actor="ds")
    with pytest.raises(GovernanceError, match="reason is required"):
        registry.reject_model("fraud_detector", "1", "bo", " ")
    assert registry.reject_model("fraud_detector", "1", "bo", "no calibration plot").state == "rejected"
    with pytest.raises(ApprovalRequired):
        registry.deploy_model("fraud_detector", "1", actor="ops")
    registry.submit_for_review("fraud_detector", "1", actor="ds")  # a rejected version may be reviewed again
    registry.approve_model("fraud_detector", "1", "bo", "plot added to the review")
    registry.deploy_model("fraud_detector", "1", actor="ops")
    with pytest.raises(InvalidTransition, match="is deployed"):
        registry.deploy_model("fraud_detector", "1", actor="ops")
    with pytest.raises(UnknownVersion, match="'9' is not registered"):
        registry.deploy_model("fraud_detector", "9", actor="ops")
    with pytest.raises(VersionExists):
        register(registry, "1")
    assert [e.event_type for e in registry.get_audit_log()] == [
        "registered", "submitted", "rejected", "submitted", "approved", "deployed"]


def test_deploying_replaces_and_rollback_goes_back_one_deployment_at_a_time(registry):
    for version in ("1", "2", "3"):
        approved(registry, version)
        registry.deploy_model("fraud_detector", version, actor="ops")
    assert [(v.version, v.state) for v in registry.list_versions("fraud_detector")] == [
        ("1", "approved"), ("2", "approved"), ("3", "deployed")]
    assert registry.rollback_model("fraud_detector", actor="ops", reason="latency doubled").version == "2"
    assert registry.get_version("fraud_detector", "3").state == "rolled_back"
    assert registry.rollback_model("fraud_detector", actor="ops").version == "1"
    with pytest.raises(InvalidTransition, match="no earlier deployed version"):
        registry.rollback_model("fraud_detector", actor="ops")
    assert registry.deployed_version("fraud_detector").version == "1"
    rollback = registry.audit.query(event_type="rolled_back")[0]
    assert (rollback.version, rollback.details["from_version"], rollback.details["reason"]) == ("2", "3", "latency doubled")
    assert registry.audit.query(event_type="deployed")[1].details["replaces"] == "1"
    with pytest.raises(ApprovalRequired):  # a rolled-back version needs a new review
        registry.deploy_model("fraud_detector", "3", actor="ops")
    assert registry.retire_model("fraud_detector", "1", actor="ops", reason="replaced").state == "retired"
    assert registry.deployed_version("fraud_detector") is None
    with pytest.raises(InvalidTransition, match="retired already"):
        registry.retire_model("fraud_detector", "1", actor="ops")
    with pytest.raises(InvalidTransition, match="no deployed version"):
        registry.rollback_model("fraud_detector", actor="ops")
    assert registry.audit.verify().ok


def test_a_models_policy_is_stored_for_every_process_and_checked_again_at_approval(location, registry):
    register(registry, "1")
    registry.submit_for_review("fraud_detector", "1", actor="ds")
    policy = registry.set_policy("fraud_detector", "risk-officer", required_metrics=["accuracy", "auc"])
    assert policy.required_metrics == ("accuracy", "auc")
    with pytest.raises(MissingMetrics, match="auc"):  # registered before the policy asked for it
        registry.approve_model("fraud_detector", "1", "bo", "ok")
    other = ModelRegistry(location, audit_key=b"")  # another process: no defaults of its own
    try:
        assert other.policy("fraud_detector") == policy
        assert other.policy("another_model").required_metrics == ()
        with pytest.raises(MissingMetrics, match="auc"):
            other.register_model("fraud_detector", "2", b"m2", {"accuracy": 0.9}, "ds")
        other.register_model("fraud_detector", "2", b"m2", {"accuracy": 0.9, "auc": 0.8}, "ds")
    finally:
        other.close()
    changed = registry.audit.query(event_type="policy_changed")[0]
    assert changed.actor == "risk-officer" and changed.details["before"]["required_metrics"] == sorted(METRICS)


def test_a_policy_without_approval_deploys_a_draft_and_says_so(registry):
    registry.set_policy("fraud_detector", "owner", required_metrics=[], approval_required=False)
    register(registry, "1", metrics={})
    assert registry.deploy_model("fraud_detector", "1", actor="ops").state == "deployed"
    assert registry.audit.query(event_type="deployed")[0].details["approval"] == "not required by the model's policy"


def test_versions_deployed_without_approval_need_one_once_the_policy_requires_it(registry):
    """Deployed while the policy required no approval: replaced, such a version goes back to
    draft (not approved); once the policy requires approval it is neither deployed nor rolled
    back to without a review, and the deployed one is approved in place."""
    registry.set_policy("fraud_detector", "owner", required_metrics=[], approval_required=False)
    for version in ("1", "2"):
        register(registry, version, metrics={})
        registry.deploy_model("fraud_detector", version, actor="ops")
    assert registry.get_version("fraud_detector", "1").state == "draft"  # replaced, and never approved
    assert registry.rollback_model("fraud_detector", "ops").version == "1"  # allowed while no approval is required
    register(registry, "3", metrics={})
    registry.deploy_model("fraud_detector", "3", actor="ops")  # 1 back to draft, 2 rolled back
    registry.set_policy("fraud_detector", "risk-officer", approval_required=None)  # None keeps a setting
    assert registry.policy("fraud_detector").approval_required is False
    registry.set_policy("fraud_detector", "risk-officer", required_metrics=None, approval_required=True)
    with pytest.raises(InvalidTransition, match="no earlier deployed version that is still approved"):
        registry.rollback_model("fraud_detector", "ops")
    with pytest.raises(ApprovalRequired):
        registry.deploy_model("fraud_detector", "1", actor="ops")
    with pytest.raises(FourEyesViolation):
        registry.approve_model("fraud_detector", "3", "ds@company.com", "mine")
    approved = registry.approve_model("fraud_detector", "3", "lead@company.com", "reviewed after the policy changed")
    assert (approved.state, approved.approved_by) == ("deployed", "lead@company.com")
    assert registry.audit.query(event_type="approved")[-1].details == {
        "reason": "reviewed after the policy changed", "in_place": True, "from": "deployed", "to": "deployed"}
    with pytest.raises(InvalidTransition):  # approved in place once; an approved deployed version is not again
        registry.approve_model("fraud_detector", "3", "lead@company.com", "again")


def test_the_artifact_and_baseline_are_identified_by_their_sha256_and_facts_are_kept(registry, tmp_path):
    artifact, baseline = tmp_path / "model.pkl", tmp_path / "baseline.json"
    artifact.write_bytes(b"\x80\x05 model")
    baseline.write_text('{"features": []}')
    facts = {"owner": "risk-team", "intended_use": ["score card payments"], "out_of_scope_uses": "credit decisions",
             "training_data": "card payments, EU", "training_data_start": "2024-01-01", "training_data_end": "2024-06-30",
             "training_data_size": 1_200_000, "limitations": ["new merchants"], "biases": ["under-represents age 18-21"],
             "mitigations": ["reweighting"]}
    groups = {"age=18-21": {"recall": 0.81}, "age=22+": {"recall": 0.9}}
    version = register(registry, "1", artifact=str(artifact), baseline=str(baseline), group_metrics=groups, facts=facts)
    assert version.artifact_sha256 == hashlib.sha256(b"\x80\x05 model").hexdigest()
    assert version.baseline_sha256 == hashlib.sha256(b'{"features": []}').hexdigest()
    assert version.group_metrics == groups and version.facts == ModelFacts.from_dict(facts)
    assert version.facts.out_of_scope_uses == ("credit decisions",)
    assert registry.get_audit_log()[0].details["facts"]["biases"] == ["under-represents age 18-21"]
    assert json.loads(json.dumps(version.to_json()))["facts"]["training_data_size"] == 1_200_000
    by_hash = register(registry, "2", artifact=None, artifact_sha256=version.artifact_sha256.upper())
    assert by_hash.artifact_sha256 == version.artifact_sha256
    with pytest.raises(GovernanceError, match="is not the artifact's SHA-256"):
        register(registry, "3", artifact=str(artifact), artifact_sha256="0" * 64)
    with pytest.raises(GovernanceError, match="cannot hash"):
        register(registry, "3", artifact=str(tmp_path / "missing.pkl"))


@pytest.mark.parametrize("change, message", [
    ({"metrics": {**METRICS, "recall": float("nan")}}, "finite number"),
    ({"artifact": None}, "needs the model artifact"),
    ({"artifact": None, "artifact_sha256": "abc"}, "SHA-256 in hex"),
    ({"facts": {"owner": "x", "colour": "red"}}, "unknown model facts"),
    ({"facts": {"training_data_start": "2024-07-01", "training_data_end": "2024-01-01"}}, "is after"),
    ({"facts": {"training_data_start": "last spring"}}, "date like"),
    ({"group_metrics": {"eu": {"recall": "high"}}}, "finite number"),
    ({"artifact": lambda: None}, "does not pickle"),
])
def test_a_malformed_registration_says_what_is_wrong(registry, change, message):
    with pytest.raises(GovernanceError, match=message):
        register(registry, "1", **change)


def test_names_and_actors_are_checked(registry):
    with pytest.raises(GovernanceError, match="created_by"):
        registry.register_model("fraud_detector", "1", b"m", METRICS, "")
    with pytest.raises(GovernanceError, match="model name"):
        registry.register_model("x" * 500, "1", b"m", METRICS, "ds")
    with pytest.raises(GovernanceError, match="control characters"):
        registry.register_model("fraud_detector", "1\n2", b"m", METRICS, "ds")


def test_the_registry_lives_in_the_prediction_logs_database(location):
    """The prediction log and the registry share one database, each with its own tables."""
    store = open_store(location)
    registry = ModelRegistry(location, audit_key=b"")
    try:
        store.write([LogRow("p1", "fraud_detector", "1", 100.0, "{}", "{}", None)])
        registry.register_model("fraud_detector", "1", b"m", {}, "ds")
        assert store.lookup("fraud_detector", "p1") is not None
        assert registry.get_version("fraud_detector", "1").state == "draft"
    finally:
        registry.close()
        store.close()
    if not location.startswith("postgresql://"):
        with sqlite3.connect(location) as db:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"predictions", "registry_versions", "audit_events", "audit_head"} <= tables
        with ModelRegistry(os.path.dirname(location)) as by_folder:  # a monitor's store_dir names the same file
            assert by_folder.get_version("fraud_detector", "1").state == "draft"


# ------------------------------------------------------------------------------ mlmon registry
def mlmon(*args, env=None):
    """``mlmon args`` in this process (fast): its exit status, standard output and error."""
    out, err = io.StringIO(), io.StringIO()
    with mock.patch.dict(os.environ, {"MLMON_AUDIT_KEY": "", **(env or {})}), \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(list(args))
        except SystemExit as exc:  # argparse's usage errors
            status = exc.code
    return subprocess.CompletedProcess(args, status, out.getvalue(), err.getvalue())


def test_the_exercise_flow_through_the_cli(tmp_path):
    model = tmp_path / "model.pkl"
    model.write_bytes(b"weights")
    facts = tmp_path / "card.json"
    facts.write_text(json.dumps({"owner": "risk", "intended_use": ["fraud scoring"],
                                 "metrics": {"precision": 0.92, "recall": 0.88}}))
    env = {"MLMON_STORE_DIR": str(tmp_path / "store")}
    done = mlmon("registry", "policy", "fraud", "--require-metrics", "accuracy", "precision", "recall",
                 "--actor", "risk-officer", env=env)
    assert done.returncode == 0, done.stderr
    done = mlmon("registry", "register", "fraud", "v1", "--artifact", str(model), "--metric", "accuracy=0.95",
                 "--facts", str(facts), "--actor", "ds@company.com", env=env)
    assert done.returncode == 0, done.stderr
    assert "fraud v1: draft" in done.stdout
    done = subprocess.run([sys.executable, "-m", "mlmon_middleware.cli", "registry", "deploy", "fraud", "v1", "--actor",
                           "ops"], capture_output=True, text=True, env={**os.environ, **env}, timeout=60)  # the real command
    assert done.returncode == 2 and done.stderr.startswith("mlmon: error: ") and "not approved" in done.stderr
    assert done.stderr.count("\n") == 1
    assert mlmon("registry", "submit", "fraud", "v1", "--actor", "ds@company.com", env=env).returncode == 0
    done = mlmon("registry", "approve", "fraud", "v1", "--actor", "ds@company.com", "--reason", "mine", env=env)
    assert done.returncode == 2 and "four-eyes" in done.stderr
    assert mlmon("registry", "approve", "fraud", "v1", "--actor", "lead", "--reason", "ok", env=env).returncode == 0
    assert mlmon("registry", "deploy", "fraud", "v1", "--actor", "ops", env=env).returncode == 0
    shown = json.loads(mlmon("registry", "show", "fraud", "v1", env=env).stdout)
    assert (shown["state"], shown["approved_by"], shown["metrics"]["recall"]) == ("deployed", "lead", 0.88)
    assert shown["artifact_sha256"] == hashlib.sha256(b"weights").hexdigest()
    listed = mlmon("registry", "list", env=env).stdout
    assert "fraud" in listed and "deployed" in listed
    with ModelRegistry(str(tmp_path / "store" / "predictions.sqlite"), audit_key=b"") as registry:
        assert [e.event_type for e in registry.get_audit_log("fraud")] == [
            "policy_changed", "registered", "submitted", "approved", "deployed"]


def test_cli_policy_changes_only_the_settings_given(tmp_path):
    env = {"MLMON_STORE_DIR": str(tmp_path)}
    done = mlmon("registry", "policy", "fraud", "--require-metrics", "auc", "recall", "--actor", "risk", env=env)
    assert json.loads(done.stdout) == {"required_metrics": ["auc", "recall"], "approval_required": True}
    done = mlmon("registry", "policy", "fraud", "--no-approval", "--actor", "risk", env=env)  # the metrics stay
    assert json.loads(done.stdout) == {"required_metrics": ["auc", "recall"], "approval_required": False}
    done = mlmon("registry", "policy", "fraud", "--require-metrics", "--actor", "risk", env=env)  # none; approval stays off
    assert json.loads(done.stdout) == {"required_metrics": [], "approval_required": False}
    done = mlmon("registry", "policy", "fraud", "--approval", "--actor", "risk", env=env)
    assert json.loads(done.stdout) == {"required_metrics": [], "approval_required": True}
    assert mlmon("registry", "policy", "fraud", "--approval", "--no-approval", "--actor", "risk", env=env).returncode == 2


def test_cli_state_changes_need_an_actor_and_bad_input_is_one_line(tmp_path):
    env = {"MLMON_STORE_DIR": str(tmp_path)}
    done = mlmon("registry", "submit", "fraud", "v1", env=env)
    assert done.returncode == 2 and "--actor" in done.stderr
    done = mlmon("registry", "submit", "fraud", "v1", "--actor", "ds", env=env)
    assert done.returncode == 2 and done.stderr == "mlmon: error: model 'fraud' version 'v1' is not registered\n"
    done = mlmon("registry", "register", "fraud", "v1", "--artifact-sha256", "0" * 64, "--metric", "auc=high",
                 "--actor", "ds", env=env)
    assert done.returncode == 2 and "--metric" in done.stderr and done.stderr.count("\n") == 1


EXERCISE = '''
registry = ModelRegistry(
    required_metrics=['accuracy', 'precision', 'recall'],
    approval_required=True
)
version = registry.register_model(
    name="fraud_detector",
    version="v1.0.0",
    model_artifact=model,
    metrics={'accuracy': 0.95, 'precision': 0.92, 'recall': 0.88},
    created_by="data_scientist@company.com"
)
try:
    registry.deploy_model("fraud_detector", "v1.0.0")
except ValueError as e:
    print(f"Expected error: {e}")
registry.submit_for_review("fraud_detector", "v1.0.0")
registry.approve_model("fraud_detector", "v1.0.0", "ml_lead@company.com", comments="reviewed")
registry.deploy_model("fraud_detector", "v1.0.0")
for event in registry.get_audit_log("fraud_detector"):
    print(event)
'''


def test_the_exercise_as_written_with_no_location(tmp_path, monkeypatch, capsys):
    """The domain text's exercise verbatim (its ``comments=`` included): no location, so the
    registry is ``./predictions.sqlite``, which persists (a second run finds the version)."""
    monkeypatch.chdir(tmp_path)
    for name in ("MLMON_STORE_DIR", "MLMON_STORE_URL", "MLMON_AUDIT_KEY"):
        monkeypatch.delenv(name, raising=False)
    namespace = {"ModelRegistry": ModelRegistry, "model": {"weights": [0.1, 0.9]}}
    exec(EXERCISE, namespace)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("Expected error: ") and "not approved" in printed[0]
    assert len(printed) == 5  # the error, then registered, submitted, approved, deployed
    registry = namespace["registry"]
    deployed = registry.deployed_version("fraud_detector")
    assert deployed.status == "deployed" and deployed.approval_reason == "reviewed"
    assert (tmp_path / "predictions.sqlite").exists() and registry.audit.verify().ok
    registry.close()
    with pytest.raises(VersionExists):  # versions are immutable: a second run in the same folder is refused
        exec(EXERCISE, {"ModelRegistry": ModelRegistry, "model": {"weights": [0.1, 0.9]}})


def test_a_failing_database_is_a_store_error_on_both_backends(location):
    """What the routes answer 503 for: the database failing (here: a table gone), never a raw
    sqlite3 or psycopg error."""
    import psycopg

    from mlmon_middleware.store import StoreError

    registry = ModelRegistry(location)
    try:
        registry.list_versions()
        governance_fixtures.sql(location, "DROP TABLE registry_versions")
        with pytest.raises(StoreError) as failed:
            registry.list_versions()
        assert type(failed.value) is StoreError
        assert isinstance(failed.value.__cause__, psycopg.Error if location.startswith("postgresql://") else sqlite3.Error)
    finally:
        registry.close()


class FailingCommit:
    """An SQLite connection whose COMMIT fails once, as on a full disk."""

    def __init__(self, db):
        self.db, self.failed = db, False

    def __getattr__(self, name):
        return getattr(self.db, name)

    def execute(self, sql, *args):
        if sql == "COMMIT" and not self.failed:
            self.failed = True
            raise sqlite3.OperationalError("database or disk is full")
        return self.db.execute(sql, *args)


def test_a_failed_commit_rolls_back_and_leaves_no_transaction_open(tmp_path):
    from mlmon_middleware.store import StoreError

    registry = ModelRegistry(str(tmp_path / "predictions.sqlite"))
    try:
        registry.db._db = FailingCommit(registry.db._connection())
        with pytest.raises(StoreError, match="disk is full"):
            registry.register_model("fraud", "1", {"weights": [1]}, metrics=METRICS, created_by="ana")
        assert not registry.db._db.in_transaction
        with pytest.raises(UnknownVersion):  # neither the version nor its audit event was kept
            registry.get_version("fraud", "1")
        assert registry.audit.query() == []
        registry.register_model("fraud", "1", {"weights": [1]}, metrics=METRICS, created_by="ana")  # the next one works
        assert [e.event_type for e in registry.audit.query()] == ["registered"]
        assert registry.audit.verify().ok
    finally:
        registry.close()
