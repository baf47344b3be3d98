"""The registry's and audit log's errors: one class per reason, all ``ValueError``s (a caller
that catches ``ValueError``, as the domain text's exercise does, catches every refusal).

>>> issubclass(ApprovalRequired, InvalidTransition) and issubclass(InvalidTransition, ValueError)
True
>>> str(MissingMetrics("fraud", "1", ["recall", "precision"]))
"model 'fraud' version '1': required metrics missing: precision, recall (the model's policy requires them)"
"""

from __future__ import annotations

from collections.abc import Iterable


class GovernanceError(ValueError):
    """A registry or audit-log call refused; the message says what and why."""


class ChainBroken(GovernanceError):
    """The audit log refuses to append: its head record is missing, does not name the log's last
    event, or (with a key) its HMAC does not match. Appending would hide the break (a cut-off
    end, a moved head), so nothing is written or repaired until someone looks."""


class UnknownVersion(GovernanceError):
    """No such model version in the registry."""


class VersionExists(GovernanceError):
    """The model version is registered already: versions are immutable, register a new one."""


class InvalidTransition(GovernanceError):
    """The version's state does not allow this step (e.g. approving a draft not yet submitted)."""


class ApprovalRequired(InvalidTransition):
    """Deploying a version that was not approved (the model's policy requires approval)."""


class FourEyesViolation(GovernanceError):
    """The approver is the one who registered the version: approval needs a second person."""


class MissingMetrics(GovernanceError):
    """A registration (or approval) without every metric the model's policy requires; the
    missing names are in ``missing``."""

    def __init__(self, model: str, version: str, missing: Iterable[str]) -> None:
        self.missing = sorted(missing)
        super().__init__(f"model {model!r} version {version!r}: required metrics missing: {', '.join(self.missing)} "
                         "(the model's policy requires them)")
