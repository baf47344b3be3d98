"""ModelOptions: how one model is monitored, declared once for every entry point.

``@monitor(...)``, :class:`~mlmon_middleware.Endpoint`, the BentoML adapter's ``@monitored`` and
:meth:`Monitor.model` all take these options as keyword arguments and pass them to
:meth:`ModelOptions.create`, which names the valid options when one is misspelt. Values are
checked and normalised here, at start-up, so a mistake fails at decoration time rather than
in the first request.

>>> ModelOptions.create(features=["age", "region"], warmup_rows=200).warmup_rows
200
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from mlmon_middleware.baseline import Baseline
from mlmon_middleware.config import ConfigError
from mlmon_middleware.drift.policy import DriftPolicy
from mlmon_middleware.explain import Explain
from mlmon_middleware.governance.errors import GovernanceError
from mlmon_middleware.governance.facts import check_sha256
from mlmon_middleware.performance import PerformanceOptions
from mlmon_middleware.reports import AlertEvent
from mlmon_middleware.schema import KINDS, FeatureSchema


@dataclasses.dataclass(frozen=True, eq=False)
class ModelOptions:
    """How one model is monitored: the options of ``@monitor``, ``Endpoint``, ``@monitored`` and
    ``Monitor.model`` (each passes its keyword arguments here; a misspelt one is a ConfigError).

    Parameters:
        features: feature names (kinds inferred), a ``{name: "numeric"|"categorical"}`` dict,
            or a FeatureSchema; default: read from the baseline or the first rows.
        baseline: a :class:`~mlmon_middleware.Baseline` or the path of its file.
        explain: an :class:`~mlmon_middleware.Explain` (or a shap explainer, or a callable
            returning contributions): SHAP explanations in the response, on request or sampled;
            they need the middleware (``instrument_app``), which puts them into the JSON body.
        input: the parameter (decorator) or JSON key (endpoint) that holds the features
            (default: the first argument that looks like data: a dict, list, pydantic model,
            array or DataFrame).
        prediction_key: where a dict answer holds the prediction (default: ``prediction``,
            ``predictions``, ``probabilities``, ... whichever is present).
        class_names: names of the columns of a probability vector.
        drift_policy: a :class:`~mlmon_middleware.DriftPolicy` (thresholds, tests, alert sustain).
        warmup_rows: without a baseline, build a warm-up baseline from this many first rows.
        on_alert: called with each alert event (firing, severity changed, resolved), for
            instance a :class:`~mlmon_middleware.WebhookNotifier`.
        segments: features whose values are kept with each logged prediction (per-segment metrics).
        log_features: which features the prediction log keeps: ``"all"``, a list, or None.
        redact: features logged as ``"[redacted]"``.
        performance: a :class:`~mlmon_middleware.PerformanceOptions`, or a dict of its fields.
        artifact: the file of the model being served; the serving gate hashes it once (SHA-256,
            in the background) and compares it with the registered version's (docs/governance.md).
        artifact_sha256: that hash given instead (64 hex digits), for an artifact not on this disk.

    >>> ModelOptions.create(segments=["region"], performance={"protected": "region"}).performance.protected
    'region'
    >>> ModelOptions.create(segment=["region"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mlmon_middleware.config.ConfigError: unknown model option 'segment'; valid options: artifact, artifact_sha256, baseline, ...
    """

    features: FeatureSchema | Mapping[str, str] | Sequence[str] | None = None
    baseline: Baseline | str | os.PathLike[str] | None = None
    explain: Any = None
    input: str | None = None
    prediction_key: str | None = None
    class_names: Sequence[str] | None = None
    drift_policy: DriftPolicy | None = None
    warmup_rows: int = 1000
    on_alert: Callable[[AlertEvent], None] | None = None
    segments: Sequence[str] = ()
    log_features: Literal["all"] | Sequence[str] | None = "all"
    redact: Sequence[str] = ()
    performance: PerformanceOptions | Mapping[str, Any] | None = None
    artifact: str | os.PathLike[str] | None = None
    artifact_sha256: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.warmup_rows, bool) or not isinstance(self.warmup_rows, int) or self.warmup_rows < 10:
            raise ConfigError(f"warmup_rows must be an integer >= 10, got {self.warmup_rows!r}")
        if isinstance(self.segments, str) or isinstance(self.redact, str):
            raise ConfigError("segments and redact take lists of feature names")
        if not (self.log_features in ("all", None) or
                (not isinstance(self.log_features, str) and isinstance(self.log_features, Sequence))):
            raise ConfigError(f"log_features must be 'all', None or a list of feature names, got {self.log_features!r}")
        if self.drift_policy is not None and not isinstance(self.drift_policy, DriftPolicy):
            raise ConfigError(f"drift_policy must be a DriftPolicy, got {self.drift_policy!r}")
        if self.on_alert is not None and not callable(self.on_alert):
            raise ConfigError(f"on_alert must be callable, got {self.on_alert!r}")
        if self.artifact is not None and self.artifact_sha256 is not None:
            raise ConfigError("give artifact (a file, hashed) or artifact_sha256, not both")
        if self.artifact is not None and (not isinstance(self.artifact, (str, os.PathLike))
                                          or not os.path.isfile(self.artifact)):
            raise ConfigError(f"artifact must be the path of the served model's file, got {self.artifact!r}")
        set_ = object.__setattr__  # normalise: frozen, so through object
        if self.artifact_sha256 is not None:
            try:
                set_(self, "artifact_sha256", check_sha256(self.artifact_sha256, "artifact_sha256"))
            except GovernanceError as exc:
                raise ConfigError(str(exc)) from None
        set_(self, "segments", tuple(self.segments))
        set_(self, "redact", tuple(self.redact))
        if self.log_features not in ("all", None):
            set_(self, "log_features", tuple(self.log_features or ()))
        if self.class_names:
            set_(self, "class_names", tuple(self.class_names))
        if self.explain is not None and not isinstance(self.explain, Explain):
            set_(self, "explain", Explain(self.explain))  # a ready shap explainer or a callable
        performance = PerformanceOptions.create(self.performance)
        if performance.protected is not None and performance.protected not in self.segments:
            raise ConfigError(f"protected={performance.protected!r} must be one of the model's segments {list(self.segments)}")
        set_(self, "performance", performance)

    @classmethod
    def create(cls, **options: Any) -> ModelOptions:
        """Options from keyword arguments, each checked by name."""
        valid = sorted(f.name for f in dataclasses.fields(cls))
        for key in options:
            if key not in valid:
                raise ConfigError(f"unknown model option {key!r}; valid options: {', '.join(valid)}")
        return cls(**options)

    @property
    def performance_options(self) -> PerformanceOptions:
        assert isinstance(self.performance, PerformanceOptions)  # normalised in __post_init__
        return self.performance



def declared_features(features: object) -> tuple[tuple[str, ...] | None, dict[str, str]]:
    """Names and known kinds from the ``features=`` option (kinds left out are inferred later)."""
    if features is None:
        return None, {}
    if isinstance(features, FeatureSchema):
        return features.names, features.to_dict()
    if isinstance(features, Mapping):
        bad = {n: k for n, k in features.items() if k not in KINDS}
        if bad:
            raise ConfigError(f"features: kinds must be in {KINDS}, got {bad}")
        return tuple(map(str, features)), {str(n): str(k) for n, k in features.items()}
    if isinstance(features, Sequence) and not isinstance(features, str) and features:
        return tuple(map(str, features)), {}
    raise ConfigError(f"features must be a non-empty list of names, a {{name: kind}} dict with kinds in "
                      f"{KINDS}, or a FeatureSchema; got {features!r}")
