"""mlmon-middleware: one decorator to make a model-serving endpoint observable.

>>> from mlmon_middleware import monitor, Monitor, MonitorConfig, MLMonitorMiddleware, Baseline, Explain

See README.md for the quick start and docs/ for the guide and the metric reference.
"""

from mlmon_middleware._version import __version__
from mlmon_middleware.baseline import Baseline, BaselineError
from mlmon_middleware.capture.asgi import Endpoint, MLMonitorMiddleware
from mlmon_middleware.capture.context import current_prediction_id
from mlmon_middleware.capture.decorator import monitor
from mlmon_middleware.config import ConfigError, MonitorConfig
from mlmon_middleware.explain import Explain
from mlmon_middleware.monitor import ModelMonitor, Monitor

__all__ = [
    "Baseline", "BaselineError", "ConfigError", "Endpoint", "Explain", "MLMonitorMiddleware", "ModelMonitor", "Monitor",
    "MonitorConfig", "__version__", "current_prediction_id", "monitor",
]
