"""mlmon-middleware: one decorator to make a model-serving endpoint observable.

>>> from mlmon_middleware import monitor, Monitor, MonitorConfig, MLMonitorMiddleware, Baseline, Explain
>>> from mlmon_middleware import DriftPolicy, ModelOptions, PerformanceOptions, StoreError, WebhookNotifier

See README.md for the quick start and docs/ for the guide, the architecture and the metric reference.
"""

from mlmon_middleware._version import __version__
from mlmon_middleware.baseline import Baseline, BaselineError
from mlmon_middleware.capture.asgi import MLMonitorMiddleware
from mlmon_middleware.capture.context import current_prediction_id
from mlmon_middleware.capture.decorator import monitor
from mlmon_middleware.capture.endpoint import Endpoint
from mlmon_middleware.config import ConfigError, MonitorConfig
from mlmon_middleware.drift.policy import DriftPolicy, Thresholds
from mlmon_middleware.explain import Explain
from mlmon_middleware.model import ModelMonitor
from mlmon_middleware.monitor import Monitor
from mlmon_middleware.notify import WebhookNotifier
from mlmon_middleware.options import ModelOptions
from mlmon_middleware.performance import PerformanceOptions
from mlmon_middleware.store import StoreError

__all__ = [
    "Baseline", "BaselineError", "ConfigError", "DriftPolicy", "Endpoint", "Explain", "MLMonitorMiddleware", "ModelMonitor",
    "ModelOptions", "Monitor", "MonitorConfig", "PerformanceOptions", "StoreError", "Thresholds", "WebhookNotifier",
    "__version__", "current_prediction_id", "monitor",
]
