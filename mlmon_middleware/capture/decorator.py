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
import time
from collections.abc import Callable
from typing import Any, TypeVar

from mlmon_middleware.capture.context import last_prediction, request_state
from mlmon_middleware.ids import new_prediction_id
from mlmon_middleware.model import ModelMonitor, Record
from mlmon_middleware.monitor import Monitor
from mlmon_middleware.payload import CallArgs, input_argument

F = TypeVar("F", bound=Callable[..., Any])


def monitor(model: str, version: str = "unknown", *, route: str | None = None, registry: Monitor | None = None,
            **options: Any) -> Callable[[F], F]:
    """Monitor every call of the decorated function as an inference of ``model``.

    Parameters:
        model, version: the model identity on every metric and span.
        route: ``http.route`` when no middleware supplies it.
        registry: the :class:`Monitor` to report to (default ``Monitor.get()``).
        **options: the model's options, the fields of :class:`~mlmon_middleware.ModelOptions`:
            ``features``, ``baseline``, ``explain``, ``input``, ``prediction_key``,
            ``class_names``, ``drift_policy``, ``warmup_rows``, ``on_alert``, ``segments``,
            ``log_features``, ``redact``, ``performance``, ``artifact``, ``artifact_sha256`` (a
            misspelt one is a ConfigError).
    """
    def decorate(fn: F) -> F:
        mon = registry or Monitor.get()
        mm = mon.model(model, version, **options)
        pick = _InputPicker(tuple(inspect.signature(fn).parameters), options.get("input"))
        route_name = route or ""
        perf_ns, wall_ns = time.perf_counter_ns, time.time_ns
        gate = mon.gate  # enforce_approval: a refused version raises ModelNotApproved (the middleware's 503)

        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                if gate.refused and (refusal := gate.refusal(model)) is not None:
                    raise refusal
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
            if gate.refused and (refusal := gate.refusal(model)) is not None:
                raise refusal
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

    def __call__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
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


def _capture(mon: Monitor, mm: ModelMonitor, pick: _InputPicker, route: str, args: tuple[Any, ...], kwargs: dict[str, Any],
             result: Any, start_ns: int, wall_ns: int, exc: BaseException | None) -> None:
    """Hand one call to the pipeline, or to the middleware when one is serving the request."""
    try:
        duration = time.perf_counter_ns() - start_ns
        pid = new_prediction_id()
        record = Record(mm, pid, wall_ns, duration, pick(args, kwargs), result, route, None,
                        None if exc is None else type(exc).__qualname__, mon.current_context() if mon.traced else None)
        state = request_state()
        if state is not None and not state.finished:
            state.records.append(record)  # the middleware adds route and status, then submits
            if exc is None:
                state.prediction_id = pid
                if mm.explain is not None:
                    state.explanation = record.explanation = mm.explain_request(state.scope, record.inputs)
            return
        if exc is not None:
            status = getattr(exc, "status_code", None)
            record.status_code = status if isinstance(status, int) else 500
        accepted = mm.submit(record)
        # for current_prediction_id() after the call: only the id of a prediction that will be logged
        last_prediction.set(pid if accepted and exc is None else None)
    except Exception as error:  # monitoring never changes what the caller gets
        last_prediction.set(None)  # never the id of an earlier call
        mon.errors.report("capture", error)
