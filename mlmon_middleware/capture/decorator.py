"""``@monitor``: one decorator that makes a model-serving function observable.

It wraps sync and async callables alike, keeps the function's signature (FastAPI and
others read it), and on each call captures references to the arguments and the result, the
duration and the outcome, then returns or re-raises exactly what the function did. All
parsing happens later in the background pipeline.

>>> from mlmon_middleware import Monitor, MonitorConfig, monitor
>>> mon = Monitor(MonitorConfig(tracing=False))
>>> @monitor(model="churn", version="2.0", registry=mon)
... def predict(row: dict) -> float:
...     return 0.25 if row["tenure"] > 12 else 0.75
>>> predict({"tenure": 24, "plan": "pro"})
0.25
>>> mon.flush()
>>> mon.model("churn").health()["predictions"]
{'ok': 1, 'error': 0}
>>> mon.shutdown()
"""

from __future__ import annotations

import functools
import inspect
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from mlmon_middleware.capture.context import current_request
from mlmon_middleware.drift.policy import DriftPolicy
from mlmon_middleware.explain import PendingExplanation
from mlmon_middleware.monitor import ModelMonitor, Monitor, new_prediction_id
from mlmon_middleware.record import CallArgs, Record, input_argument, resolve_payload
from mlmon_middleware.schema import FeatureSchema, extract_rows

F = TypeVar("F", bound=Callable[..., Any])


def monitor(model: str, version: str = "unknown", *, features: Any = None, baseline: Any = None,
            explain: Any = None, input: str | None = None, prediction_key: str | None = None,
            class_names: Sequence[str] | None = None, route: str | None = None,
            registry: Monitor | None = None, drift_policy: DriftPolicy | None = None, warmup_rows: int = 1000,
            on_alert: Callable[[dict[str, Any]], None] | None = None, segments: Sequence[str] = (),
            log_features: str | Sequence[str] | None = "all", redact: Sequence[str] = (),
            performance: dict[str, Any] | None = None) -> Callable[[F], F]:
    """Monitor every call of the decorated function as an inference of ``model``.

    Parameters:
        model, version: the model identity on every metric and span.
        features: feature names (kinds inferred), a ``{name: "numeric"|"categorical"}`` dict,
            or a FeatureSchema; default: read from the baseline or the first rows.
        baseline: a :class:`~mlmon_middleware.Baseline` or the path of its file.
        explain: an :class:`~mlmon_middleware.explain.Explain` (or a shap explainer, or a callable
            returning contributions): SHAP explanations in the response, on request or sampled;
            they need the middleware (``instrument_app``), which puts them into the JSON body.
        input: the parameter that holds the features (default: the first argument that looks
            like data: a dict, list, pydantic model, array or DataFrame).
        prediction_key: where a dict answer holds the prediction (default: ``prediction``,
            ``predictions``, ``probabilities``, ... whichever is present).
        class_names: names of the columns of a probability vector.
        route: ``http.route`` when no middleware supplies it.
        registry: the :class:`Monitor` to report to (default ``Monitor.get()``).
        drift_policy: a :class:`~mlmon_middleware.drift.policy.DriftPolicy` (thresholds, tests,
            alert sustain); default ``DriftPolicy()``.
        warmup_rows: without a baseline, build a warm-up baseline from this many first rows.
        on_alert: called with each alert event (firing, severity changed, resolved).
        segments: features whose values are kept with each logged prediction (per-segment metrics).
        log_features: which features the prediction log keeps: ``"all"``, a list, or None.
        redact: features logged as ``"[redacted]"``.
        performance: options of :class:`~mlmon_middleware.performance.PerformanceTracker`
            (``task``, ``positive``, ``threshold``, windows, ``max_segments``, ``protected``, ...).
    """
    def decorate(fn: F) -> F:
        mon = registry or Monitor.get()
        mm = mon.model(model, version, features=features, baseline=baseline, explain=explain, input=input,
                       prediction_key=prediction_key, class_names=class_names, drift_policy=drift_policy,
                       warmup_rows=warmup_rows, on_alert=on_alert, segments=segments, log_features=log_features,
                       redact=redact, performance=performance)
        pick = _InputPicker(tuple(inspect.signature(fn).parameters), input)
        route_name = route or ""
        perf_ns, wall_ns = time.perf_counter_ns, time.time_ns

        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                start, wall = perf_ns(), wall_ns()
                try:
                    result = await fn(*args, **kwargs)
                except BaseException as exc:
                    _capture(mon, mm, pick, route_name, args, kwargs, None, start, wall, exc)
                    raise
                _capture(mon, mm, pick, route_name, args, kwargs, result, start, wall, None)
                return result

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start, wall = perf_ns(), wall_ns()
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                _capture(mon, mm, pick, route_name, args, kwargs, None, start, wall, exc)
                raise
            _capture(mon, mm, pick, route_name, args, kwargs, result, start, wall, None)
            return result

        return wrapper  # type: ignore[return-value]

    return decorate


class _InputPicker:
    """Which argument of a decorated function holds the features: the one named by ``input=``,
    else the first that looked like data on the first call, remembered. The record then keeps
    only that value, not the call's argument dict: fewer objects held per record is less work
    for the garbage collector while records wait for the pipeline (measured under uvicorn: the
    largest cost of deferring work to the pipeline)."""

    __slots__ = ("names", "name", "position")

    def __init__(self, names: tuple[str, ...], name: str | None) -> None:
        self.names = names
        self.name = name
        self.position = names.index(name) if name in names else None

    def __call__(self, args: tuple, kwargs: dict) -> Any:
        name = self.name
        if name is None:
            name = input_argument(self.names, args, kwargs)
            if name is None:  # nothing data-like (scalar parameters): the pipeline decides
                return CallArgs(args, kwargs, self.names)
            self.position = self.names.index(name) if name in self.names else None
            self.name = name
        if name in kwargs:
            value = kwargs[name]
        else:
            position = self.position
            value = args[position] if position is not None and position < len(args) else None
        if value is None:
            return CallArgs(args, kwargs, self.names)
        if hasattr(value, "__pydantic_fields__"):
            # A pydantic model's field values, already a plain dict: the model itself (and its
            # fields-set) would be two more objects for the garbage collector to track.
            return value.__dict__
        return value


def _asked(scope: Any) -> bool | None:
    """What the request said about explaining: the ``X-MLMon-Explain`` header or ``?explain=``."""
    if not scope:
        return None
    for key, value in scope.get("headers") or ():
        if key == b"x-mlmon-explain":
            return value.strip().lower() in (b"1", b"true", b"yes")
    query = scope.get("query_string") or b""
    if b"explain=" in query:
        for part in query.split(b"&"):
            if part.startswith(b"explain="):
                return part[8:].lower() in (b"1", b"true", b"yes")
    return None


def request_explanation(mm: ModelMonitor, scope: Any, inputs: Any) -> PendingExplanation | None:
    """Start explaining this call when it is wanted; None when not. The row is encoded here (on
    the request path, only for explained calls) because the worker needs it now."""
    spec = mm.explain
    if not (spec.wanted(_asked(scope)) or spec.sampled(random.random())):
        return None
    service = mm.explainer
    try:
        rows = extract_rows(resolve_payload(inputs, mm.input_arg))
        schema = mm.schema or FeatureSchema.infer(rows[:1], names=mm._declared_names)
        if schema.categorical_names and spec.method == "auto":
            return PendingExplanation(service, None, None, "error")  # pass a callable for mixed features
        row = schema.encode(rows[:1]).numeric[0]
    except Exception:
        return PendingExplanation(service, None, None, "error")
    if service is None:
        return PendingExplanation(None, row, None, "busy")
    future = service.submit(row)
    if isinstance(future, str):
        return PendingExplanation(service, row, None, future)
    return PendingExplanation(service, row, future)


def _capture(mon: Monitor, mm: ModelMonitor, pick: _InputPicker, route: str, args: tuple, kwargs: dict,
             result: Any, start_ns: int, wall_ns: int, exc: BaseException | None) -> None:
    """Hand one call to the pipeline, or to the middleware when one is serving the request."""
    try:
        duration = time.perf_counter_ns() - start_ns
        pid = new_prediction_id()
        record = Record(mm, pid, wall_ns, duration, pick(args, kwargs), result, route,
                        None, None if exc is None else type(exc).__qualname__, mon.current_context())
        state = current_request.get()
        if state is not None and not state.finished:
            state.records.append(record)  # the middleware adds route and status, then submits
            if exc is None:
                state.prediction_id = pid
                if mm.explain is not None:
                    state.explanation = record.explanation = request_explanation(mm, state.scope, record.inputs)
            return
        if exc is not None:
            status = getattr(exc, "status_code", None)
            record.status_code = status if isinstance(status, int) else 500
        mm.submit(record)
    except Exception as error:  # monitoring never changes what the caller gets
        mon.errors.report("capture", error)
