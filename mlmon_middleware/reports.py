"""The shapes of what users read: reports, health, alert events and logged predictions.

Reports are plain JSON-ready dicts (the HTTP routes return them as they are), typed here as
``TypedDict``\\ s so that their keys are written down once, checked by mypy wherever they are built
or read, and documented in one place. ``total=False`` marks shapes whose keys depend on the
state (a warming-up drift report has no ``features``; a categorical feature has no ``ks``).
The module runs past 400 lines because it is only declarations, one per shape users read: kept
together, the whole of the API's output is in one file.

>>> report: LabelResults = {"results": [], "labelled": 0, "relabelled": 0, "unknown": 0}
>>> sorted(LabelResults.__annotations__)
['labelled', 'relabelled', 'results', 'unknown']
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

Severity = Literal["none", "info", "warning", "critical"]
LabelOutcome = Literal["labelled", "relabelled", "unknown"]
LABEL_OUTCOMES: tuple[LabelOutcome, ...] = ("labelled", "relabelled", "unknown")


# ----------------------------------------------------------------------------------------- drift
class FeatureDrift(TypedDict, total=False):
    """One feature (or prediction output) at one check: statistics, data quality, verdict."""

    kind: Literal["numeric", "categorical"]
    rows: int  # rows of the window with a value for the feature
    psi: float
    js: float
    ks: float
    wasserstein: float
    wasserstein_norm: float  # Wasserstein distance / the baseline's standard deviation
    chi2: float
    dof: int
    p_value: float | None  # KS (numeric) or chi² (categorical); None when judged by effect sizes
    p_adjusted: float  # after the policy's multiple-test correction across the check's features
    effect: float  # the practical effect size: Wasserstein/σ (numeric) or w of the shares (categorical)
    sample_rows: int  # size of the reference the KS test compares with
    grid_error: float  # how far the baseline's quantile grid may be from the whole reference's CDF
    missing_ratio: float
    out_of_range_ratio: float
    new_category_ratio: float
    bins: dict[str, list[float]]  # numeric: baseline bin edges, reference and current shares
    categories: dict[str, list[Any]]  # categorical: names, reference and current shares
    severity: Severity
    capture_errors_since_last_check: dict[str, int]


# Unix times of the oldest and newest row of the checked window ("from" is a keyword, hence this syntax).
WindowSpan = TypedDict("WindowSpan", {"from": float | None, "to": float | None})


class QualityCounts(TypedDict):
    capture_errors_since_last_check: dict[str, int]
    predictions_since_last_check: int


class LabelCoverageWindow(TypedDict):
    predictions: int
    labelled: int
    share: float


class LabelCoverage(TypedDict, total=False):
    coverage: dict[str, LabelCoverageWindow]  # by window: "1h", "24h", "7d"


class AttributionFeature(TypedDict):
    baseline: float
    current: float
    baseline_share: float
    current_share: float
    relative_shift: float
    baseline_rank: int
    current_rank: int


class AttributionReport(TypedDict, total=False):
    """Attribution drift: each feature's share of the mean |SHAP| against the baseline's."""

    status: Literal["ok", "waiting"]
    samples: int
    needs: int
    baseline: bool
    features: dict[str, AttributionFeature]
    drifted: list[str]


class ActiveAlert(TypedDict):
    alertname: str
    subject: str
    severity: Severity


class BaselineSummary(TypedDict):
    model: str | None
    rows: int
    created_at: str
    features: int
    schema_hash: str
    warmup: bool


class MergedWorkers(TypedDict):
    """The workers whose windows a check merged; ``stale``: of which answered with an older one."""

    merged: int
    stale: int


class FeatureForecast(TypedDict):
    """When a feature's drift may reach its warning level (``mlmon_middleware.drift.forecast``):
    seconds from the check (None: not trending upward; 0: there already), the earliest,
    the trend's slope per second with its interval, the fitted level and the residuals' lag-1
    autocorrelation."""

    slope: float
    low: float
    high: float
    level: float
    seconds: float | None
    earliest: float | None
    autocorrelation: float


class MultivariateDrift(TypedDict, total=False):
    """The window's rows as a whole against the baseline, by one method: ``pca`` (its
    reconstruction, ``mlmon_middleware.drift.multivariate``: the ratio of mean reconstruction
    errors and the components kept) or ``classifier`` (a domain classifier,
    ``mlmon_middleware.drift.classifier``: its held-out AUC). Both: the rows tested, the
    one-sided Mann–Whitney p-value, the verdict, and a ``note`` when the method could not run."""

    method: str
    rows: int
    p_value: float | None
    error_ratio: float | None
    components: int
    auc: float | None
    note: str
    severity: Severity


class EstimatedMetric(TypedDict):
    """One metric estimated without labels (``mlmon_middleware.estimated``): the estimate, its
    band, the reference's realized value, the relative change, and the verdict."""

    value: float | None
    low: float | None
    high: float | None
    reference: float | None
    relative_change: float | None
    standard_error: NotRequired[float]  # of a window drawn like this one
    z: NotRequired[float]  # the drop in standard errors (positive: worse)
    severity: Severity


class EstimatedPerformance(TypedDict, total=False):
    """A window's label-free performance estimate: ``method`` (``cbpe``), the ``task``, the rows
    with usable outputs, each metric, and a ``note`` when the outputs cannot be read."""

    method: str
    task: str
    rows: int
    metrics: dict[str, EstimatedMetric]
    note: str


class Cause(TypedDict):
    """One likely cause (``mlmon_middleware.causes``): its ``kind``, ``name`` (a feature, or ``feature=value``), ``score`` in
    [0, 1], the sentence that says it, and the numbers behind it."""

    kind: Literal["feature", "segment", "quality"]
    name: str
    score: float
    text: str
    evidence: dict[str, Any]


class DriftReport(TypedDict, total=False):
    """One check of one model (``ModelMonitor.drift_report()``, ``GET /mlmon/drift``)."""

    model: str
    version: str
    checked_at: float
    rows: int
    window: WindowSpan
    quality: QualityCounts
    labels: LabelCoverage
    status: Literal["ok", "warming_up"]
    warmup_rows: int
    baseline: BaselineSummary
    regime: str  # the evidence the policy used, in words
    features: dict[str, FeatureDrift]
    drifted: list[str]
    share: float
    dataset_drift: bool
    predictions: dict[str, FeatureDrift]
    prediction_drift: bool
    performance_status: str
    attributions: AttributionReport
    forecast: dict[str, FeatureForecast]  # per feature with enough disjoint checks
    multivariate: dict[str, MultivariateDrift]  # per method the baseline has a model for
    performance_estimated: EstimatedPerformance  # with a baseline that has an estimator
    causes: list[Cause]  # when the dataset drifted or performance dropped: the likely causes, best first
    alerts: list[ActiveAlert]
    duration_seconds: float
    workers: MergedWorkers  # with workers sharing: whose windows the check merged


# ----------------------------------------------------------------------------------- performance
Metrics = dict[str, float | None]  # metric name -> value; None where undefined (one class only)


class Degradation(TypedDict):
    reference: float
    current: float
    relative_change: float
    severity: Severity
    standard_error: float  # of the difference: the window's bootstrap error and the reference's
    z: float  # the drop in standard errors (positive: worse)


class GroupFairness(TypedDict):
    count: int
    positive_rate: float
    tpr: float | None
    fpr: float | None


class Fairness(TypedDict):
    attribute: str | None
    groups: dict[str, GroupFairness]
    demographic_parity_ratio: float
    tpr_gap: float | None
    fpr_gap: float | None
    rate_gap_p_value: float  # the lowest and highest positive rates differ by chance (Fisher, Bonferroni over pairs)
    four_fifths_violated: bool  # ratio below 0.8 and rate_gap_p_value below 0.005


class WindowPerformance(TypedDict, total=False):
    rows: int
    overall: Metrics | None
    segments: dict[str, dict[str, Metrics]]  # segment feature -> value -> metrics
    task: str
    standard_errors: dict[str, float]  # bootstrap standard error of each overall metric
    fairness: Fairness
    degradation: dict[str, Degradation]
    capped: bool  # a time window of more labelled predictions than it reads (the latest are read)


class ReferencePerformance(TypedDict):
    source: str | None  # "given", "baseline", "first full window", or None (not known yet)
    metrics: dict[str, float] | None


class PerformanceHistoryEntry(TypedDict):
    checked_at: float
    windows: dict[str, dict[str, Any]]  # window -> {"rows": n, "overall": metrics}


class PerformanceReport(TypedDict, total=False):
    """Performance once labels arrive (``ModelMonitor.performance_report()``)."""

    checked_at: float
    status: str
    windows: dict[str, WindowPerformance]
    reference: ReferencePerformance
    concept_drift: dict[str, Any]
    history: list[PerformanceHistoryEntry]


# ---------------------------------------------------------------------------------------- alerts
class AlertEvent(TypedDict, total=False):
    """A change of an alert's state, as ``on_alert`` callbacks and webhooks receive it; ``model``
    and ``version`` are added by the model's alert state."""

    alertname: str
    subject: str
    state: Literal["firing", "severity_changed", "resolved"]
    severity: Severity
    time: float
    id: str  # the firing episode's, the same on its firing, severity_changed and resolved events
    cause: str  # dataset drift and performance drops: "most likely: …" (the check's first causes)
    model: str
    version: str


class Acknowledgement(TypedDict):
    """Who acknowledged an alert (``POST /mlmon/alerts/{id}/ack``), when, with what note."""

    id: str
    alertname: str
    subject: str
    severity: Severity
    actor: str
    note: str
    time: float


class FiringAlert(TypedDict):
    alertname: str
    subject: str
    severity: Severity
    since: float
    id: str
    acknowledged: Acknowledgement | None


class AlertSummary(TypedDict):
    active: list[FiringAlert]
    recent: list[AlertEvent]  # newest first
    acknowledged: dict[str, Acknowledgement]  # by alert id


# ---------------------------------------------------------------------------------------- health
class Coverage(TypedDict):
    monitored: int
    received: int
    ratio: float
    unmonitored_fields: dict[str, int]  # field -> rows that carried it


class LastCheck(TypedDict):
    """The last check at a glance (None where that check did not get so far: warming up)."""

    checked_at: float | None
    status: str | None
    rows: int | None
    drifted: list[str] | None
    share: float | None


class ModelHealth(TypedDict):
    model: str
    version: str
    predictions: dict[str, int]  # "ok", "error"
    capture_errors: dict[str, int]
    last_capture_errors: NotRequired[dict[str, str]]  # private view only (messages may quote inputs)
    features: dict[str, str] | None
    outputs: dict[str, str] | None
    rows_in_window: int
    window_capacity: int
    baseline: BaselineSummary | None
    coverage: Coverage | None
    labels: dict[str, int]
    alerts_firing: int
    last_check: LastCheck | None


class WorkersHealth(TypedDict):
    """The workers of this server sharing their rows and counts (health's ``workers``)."""

    running: int  # workers running now
    leading: bool  # whether the worker answering leads (runs the checks)
    leader_pid: NotRequired[int | None]  # private view only
    folder: NotRequired[str]  # private view only: where they share


class MonitorHealth(TypedDict):
    status: Literal["ok", "degraded"]
    issues: list[str]
    pid: NotRequired[int]  # private view only: process details
    instance_id: str | None
    queue: int
    #: seconds: the pipeline thread's longest stretch of work between two pace points (its longest
    #: GIL hold with switch_interval=0; under a short switch interval an upper bound)
    pipeline_longest_hold: float
    log_queue: int | None
    metrics_port: int | None  # this process's own metrics port (prometheus_port), when serving one
    prediction_log: NotRequired[str | None]  # private view only
    token_required: bool
    prediction_log_enabled: bool
    models: dict[str, ModelHealth]
    monitor_errors: dict[str, int]
    limit_hits: dict[str, int]
    workers: WorkersHealth | None  # None: this process counts alone
    serving_gate: dict[str, Any]  # the registry's verdicts (governance.gate.ServingGate.health)
    last_errors: NotRequired[list[dict[str, Any]]]  # private view only


# --------------------------------------------------------------------------------- ground truth
class LabelResult(TypedDict):
    prediction_id: str
    status: LabelOutcome
    delay_seconds: float | None


class LabelResults(TypedDict):
    results: list[LabelResult]
    labelled: int
    relabelled: int
    unknown: int


class LoggedPrediction(TypedDict):
    """One row of the prediction log, JSON columns decoded."""

    prediction_id: str
    model: str
    version: str
    timestamp: float
    prediction: Any
    segments: dict[str, Any]
    features: dict[str, Any] | None
    actual: Any
    label_timestamp: float | None
    explanation: dict[str, Any] | None
