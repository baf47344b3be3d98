"""``mlmon registry …`` and ``mlmon audit …``: the registry and the audit log from a shell.

    mlmon registry register MODEL VERSION --actor WHO (--artifact FILE | --artifact-sha256 HEX)
                            [--metric NAME=VALUE ...] [--group-metric GROUP:NAME=VALUE ...]
                            [--baseline FILE] [--facts card.json|card.yml]
    mlmon registry submit|deploy|retire MODEL VERSION --actor WHO [--reason TEXT]
    mlmon registry approve|reject MODEL VERSION --actor WHO --reason TEXT
    mlmon registry rollback MODEL --actor WHO [--reason TEXT]
    mlmon registry policy MODEL [--require-metrics NAME ...] [--no-approval | --approval] [--actor WHO]
    mlmon registry show MODEL [VERSION]          (JSON)
    mlmon registry list [MODEL]
    mlmon audit verify [--jsonl FILE] [--anchor SEQ:HASH] [--allow-unsigned-before SEQ]
    mlmon audit query [--model M] [--version V] [--type T ...] [--since T] [--until T] [--limit N]
    mlmon audit export [--out FILE] [the same filters]       (JSON Lines)

Every command takes ``--store``: a folder holding ``predictions.sqlite`` (as ``MLMON_STORE_DIR``),
an SQLite file, or a ``postgresql://`` URL; by default the monitor's own prediction log
(``MLMON_STORE_URL``, else ``$MLMON_STORE_DIR/predictions.sqlite``, else ``./predictions.sqlite``).
``--actor`` is recorded as given: a claim, not an authentication. The audit key is
``MLMON_AUDIT_KEY``. ``audit verify`` exits 1 when the chain is broken (it prints where).

>>> parse_metric("auc=0.91", "--metric")
('auc', 0.91)
>>> parse_group_metric("region=EU:recall=0.8")
('region=EU', 'recall', 0.8)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from mlmon_middleware.governance.audit import AuditLog, audit_key_from_env, parse_time, verify_jsonl
from mlmon_middleware.governance.errors import GovernanceError
from mlmon_middleware.governance.facts import ModelFacts
from mlmon_middleware.governance.registry import ModelRegistry


def add_commands(commands: Any) -> None:
    """Add ``registry`` and ``audit`` to the ``mlmon`` parser's subcommands."""
    store = argparse.ArgumentParser(add_help=False)
    store.add_argument("--store", help="a folder holding predictions.sqlite, an SQLite file or a postgresql:// URL "
                                       "(default: MLMON_STORE_URL, else $MLMON_STORE_DIR/predictions.sqlite)")
    actor = argparse.ArgumentParser(add_help=False, parents=[store])
    actor.add_argument("--actor", required=True, help="who does it (recorded as given: a claim, not an authentication)")
    registry = commands.add_parser("registry", help="the model registry").add_subparsers(dest="action", required=True)
    register = registry.add_parser("register", parents=[actor], help="register a model version (a draft)")
    _model_version(register)
    artifact = register.add_mutually_exclusive_group(required=True)
    artifact.add_argument("--artifact", help="the model file (hashed with SHA-256)")
    artifact.add_argument("--artifact-sha256", help="the model file's SHA-256, when the file is elsewhere")
    register.add_argument("--metric", action="append", default=[], metavar="NAME=VALUE", help="an evaluation metric")
    register.add_argument("--group-metric", action="append", default=[], metavar="GROUP:NAME=VALUE",
                          help="a metric of one group, like region=EU:recall=0.8")
    register.add_argument("--baseline", help="the drift baseline file (hashed with SHA-256)")
    register.add_argument("--facts", help="a JSON or YAML file: the model card's facts (owner, intended_use, "
                                          "training_data, ...), and optionally metrics and group_metrics")
    for name, helptext in (("submit", "submit a draft for review"), ("deploy", "deploy an approved version"),
                           ("retire", "retire a version")):
        parser = registry.add_parser(name, parents=[actor], help=helptext)
        _model_version(parser)
        if name == "retire":
            parser.add_argument("--reason", default="")
    for name, helptext in (("approve", "approve a version in review (not by its registrant)"),
                           ("reject", "reject a version in review")):
        parser = registry.add_parser(name, parents=[actor], help=helptext)
        _model_version(parser)
        parser.add_argument("--reason", required=True)
    rollback = registry.add_parser("rollback", parents=[actor], help="deploy again the version deployed before")
    rollback.add_argument("model")
    rollback.add_argument("--reason", default="")
    policy = registry.add_parser("policy", parents=[store], help="show or set a model's policy")
    policy.add_argument("model")
    policy.add_argument("--require-metrics", nargs="*", metavar="NAME", help="the metrics a registration must report")
    approval = policy.add_mutually_exclusive_group()
    approval.add_argument("--no-approval", dest="approval", action="store_false", default=None,
                          help="deployments need no approval")
    approval.add_argument("--approval", dest="approval", action="store_true", default=None,
                          help="deployments need an approval (the default policy)")
    policy.add_argument("--actor", help="who sets the policy (required to change it)")
    show = registry.add_parser("show", parents=[store], help="a version, or a model's versions and policy, as JSON")
    show.add_argument("model")
    show.add_argument("version", nargs="?")
    listing = registry.add_parser("list", parents=[store], help="the registered versions")
    listing.add_argument("model", nargs="?")

    audit = commands.add_parser("audit", help="the audit log").add_subparsers(dest="action", required=True)
    verify = audit.add_parser("verify", parents=[store], help="verify the hash chain (exit 1 when broken)")
    verify.add_argument("--jsonl", help="verify a complete JSON Lines export instead of the database")
    verify.add_argument("--anchor", metavar="SEQ:HASH", help="a head recorded earlier: it must still be in the log")
    verify.add_argument("--allow-unsigned-before", metavar="SEQ", type=int,
                        help="with MLMON_AUDIT_KEY: the first event written with the key (events before it unsigned)")
    filters = argparse.ArgumentParser(add_help=False, parents=[store])
    filters.add_argument("--model")
    filters.add_argument("--version")
    filters.add_argument("--type", nargs="+", dest="event_type", metavar="TYPE")
    filters.add_argument("--since", help="ISO 8601 (2024-05-01, 2024-05-01T12:00Z) or a duration before now (7d, 12h)")
    filters.add_argument("--until", help="as --since (exclusive)")
    query = audit.add_parser("query", parents=[filters], help="list events, oldest first")
    query.add_argument("--limit", type=int)
    export = audit.add_parser("export", parents=[filters], help="write events as JSON Lines")
    export.add_argument("--out", help="the file to write (default: standard output)")


def _model_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model")
    parser.add_argument("version")


def run(args: argparse.Namespace) -> int:
    """Run a ``registry`` or ``audit`` command; its exit status. A database that fails is a
    :class:`StoreError` (the CLI's one-line error; :class:`GovernanceDB` raises it for both
    backends)."""
    return (_registry if args.command == "registry" else _audit)(args)


def _registry(args: argparse.Namespace) -> int:
    with ModelRegistry(args.store) as registry:
        action: str = args.action
        if action == "register":
            version = _register(registry, args)
        elif action in ("submit", "deploy", "retire", "approve", "reject"):
            steps: dict[str, Callable[[], Any]] = {
                "submit": lambda: registry.submit_for_review(args.model, args.version, actor=args.actor),
                "deploy": lambda: registry.deploy_model(args.model, args.version, actor=args.actor),
                "retire": lambda: registry.retire_model(args.model, args.version, actor=args.actor, reason=args.reason),
                "approve": lambda: registry.approve_model(args.model, args.version, args.actor, args.reason),
                "reject": lambda: registry.reject_model(args.model, args.version, args.actor, args.reason)}
            version = steps[action]()
        elif action == "rollback":
            version = registry.rollback_model(args.model, actor=args.actor, reason=args.reason)
        elif action == "policy":
            return _policy(registry, args)
        elif action == "show":
            shown: Any = (registry.get_version(args.model, args.version).to_json() if args.version else
                          {"policy": _policy_json(registry, args.model),
                           "versions": [v.to_json() for v in registry.list_versions(args.model)]})
            print(json.dumps(shown, indent=2, ensure_ascii=False))
            return 0
        else:
            _table(["model", "version", "state", "created_by", "approved_by", "deployed_at"],
                   [[v.name, v.version, v.state, v.created_by, v.approved_by or "", v.deployed_at or ""]
                    for v in registry.list_versions(args.model)])
            return 0
        print(f"{version.name} {version.version}: {version.state}")
    return 0


def _register(registry: ModelRegistry, args: argparse.Namespace) -> Any:
    facts: dict[str, Any] = _read_facts(args.facts) if args.facts else {}
    metrics = facts.pop("metrics", None) or {}
    groups = facts.pop("group_metrics", None) or {}
    if not isinstance(metrics, dict) or not isinstance(groups, dict):
        raise GovernanceError(f"--facts {args.facts!r}: metrics and group_metrics must be mappings")
    metrics.update(parse_metric(text, "--metric") for text in args.metric)
    for text in args.group_metric:
        group, name, value = parse_group_metric(text)
        groups.setdefault(group, {})[name] = value
    return registry.register_model(args.model, args.version, args.artifact, metrics, args.actor,
                                   artifact_sha256=args.artifact_sha256, group_metrics=groups, baseline=args.baseline,
                                   facts=ModelFacts.from_dict(facts))


def _policy(registry: ModelRegistry, args: argparse.Namespace) -> int:
    if args.require_metrics is not None or args.approval is not None:
        if not args.actor:
            raise GovernanceError("changing a policy needs --actor (who changes it)")
        registry.set_policy(args.model, args.actor, required_metrics=args.require_metrics,  # None: kept as it is
                            approval_required=args.approval)
    print(json.dumps(_policy_json(registry, args.model)))
    return 0


def _policy_json(registry: ModelRegistry, model: str) -> dict[str, Any]:
    policy = registry.policy(model)
    return {"required_metrics": list(policy.required_metrics), "approval_required": policy.approval_required}


def _audit(args: argparse.Namespace) -> int:
    if args.action == "verify" and args.jsonl:
        try:
            with open(args.jsonl, encoding="utf-8") as handle:
                result = verify_jsonl(handle, key=audit_key_from_env(), anchor=_anchor(args.anchor),
                                      allow_unsigned_before=args.allow_unsigned_before)
        except OSError as exc:
            raise GovernanceError(f"--jsonl {args.jsonl!r} cannot be read: {exc.strerror or exc}") from None
        print(result)
        return 0 if result.ok else 1
    with AuditLog(args.store) as log:
        if args.action == "verify":
            result = log.verify(anchor=_anchor(args.anchor), allow_unsigned_before=args.allow_unsigned_before)
            print(result)
            return 0 if result.ok else 1
        filters = {"model": args.model, "version": args.version, "event_type": args.event_type,
                   "since": _time(args.since, "--since"), "until": _time(args.until, "--until")}
        if args.action == "query":
            _table(["seq", "time", "event_type", "actor", "model", "version", "details"],
                   [[str(e.seq), e.time, e.event_type, e.actor, e.model or "", e.version or "",
                     json.dumps(dict(e.details), ensure_ascii=False, sort_keys=True)]
                    for e in log.query(limit=args.limit, **filters)])
            return 0
        if args.out is None:
            log.export_jsonl(sys.stdout, **filters)
            return 0
        try:
            with open(args.out, "w", encoding="utf-8") as out:
                written = log.export_jsonl(out, **filters)
        except OSError as exc:
            raise GovernanceError(f"--out {args.out!r} cannot be written: {exc.strerror or exc}") from None
        print(f"{args.out}: {written} events", file=sys.stderr)
        return 0


def parse_metric(text: str, option: str) -> tuple[str, float]:
    name, sep, value = text.rpartition("=")
    try:
        number = float(value)
    except ValueError:
        number = None
    if not sep or not name or number is None:
        raise GovernanceError(f"{option} {text!r}: expected NAME=NUMBER")
    return name, number


def parse_group_metric(text: str) -> tuple[str, str, float]:
    left, value = parse_metric(text, "--group-metric")
    group, sep, name = left.rpartition(":")
    if not sep or not group or not name:
        raise GovernanceError(f"--group-metric {text!r}: expected GROUP:NAME=NUMBER, like region=EU:recall=0.8")
    return group, name, value


def _anchor(text: str | None) -> tuple[int, str] | None:
    if text is None:
        return None
    seq, sep, hash_ = text.partition(":")
    if not sep or not seq.isdigit() or len(hash_) != 64:
        raise GovernanceError(f"--anchor {text!r}: expected SEQ:HASH as verify prints it (like 42:9f86d0…, 64 hex digits)")
    return int(seq), hash_.lower()


def _time(text: str | None, option: str) -> str | None:
    if text is None:
        return None
    try:
        return parse_time(text)
    except ValueError as exc:
        raise GovernanceError(f"{option}: {exc}") from None


def _read_facts(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise GovernanceError(f"--facts {path!r} cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        data = json.loads(text)
    except ValueError:
        try:
            import yaml
        except ImportError:
            raise GovernanceError(f"--facts {path!r} is not JSON, and reading YAML needs PyYAML: "
                                  "pip install 'mlmon-middleware[cli]'") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise GovernanceError(f"--facts {path!r} is neither JSON nor YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise GovernanceError(f"--facts {path!r} must hold a mapping of fact: value")
    return data


def _table(header: list[str], rows: list[list[str]]) -> None:
    """Print rows as aligned columns (tab-free, so that ``grep`` and ``column`` both work)."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
