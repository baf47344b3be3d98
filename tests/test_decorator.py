import asyncio
import inspect

import numpy as np
import pandas as pd
import pytest
from opentelemetry.trace import StatusCode
from pydantic import BaseModel

from mlmon_middleware import monitor


class Tx(BaseModel):
    amount: float
    country: str


class Boom(Exception):
    status_code = 418


def test_sync_calls_are_counted_timed_and_rowed(harness):
    @monitor(model="fraud", version="1.2.0", registry=harness.monitor, route="/score")
    def score(tx: Tx) -> dict:
        return {"prediction": 0.25 if tx.amount < 100 else 0.9}

    results = [score(Tx(amount=a, country="fr")) for a in (10, 20, 500)]
    assert results == [{"prediction": 0.25}, {"prediction": 0.25}, {"prediction": 0.9}]
    assert harness.total("mlmon.predictions", outcome="ok", **{"http.route": "/score"}) == 3
    [(attrs, point)] = harness.points("mlmon.inference.duration")
    assert attrs == {"mlmon.model.name": "fraud", "mlmon.model.version": "1.2.0", "http.route": "/score",
                     "http.response.status_code": 200}
    assert point.count == 3 and 0 < point.sum < 1
    [(attrs, point)] = harness.points("mlmon.prediction.value")
    assert attrs["output"] == "prediction" and point.count == 3 and point.sum == pytest.approx(1.4)
    snap = harness.monitor.model("fraud").window_snapshot()
    assert snap["features"]["numeric"][:, 0].tolist() == [10, 20, 500]
    assert snap["features"]["categorical"][:, 0].tolist() == ["fr"] * 3
    assert snap["outputs"]["numeric"][:, 0].tolist() == [0.25, 0.25, 0.9]
    assert harness.total("mlmon.reservoir.size") == 3


def test_async_calls_and_batches(harness):
    @monitor(model="churn", registry=harness.monitor, class_names=["stay", "leave"])
    async def predict(frame: pd.DataFrame) -> np.ndarray:
        await asyncio.sleep(0)
        return np.column_stack([1 - frame["tenure"] / 100, frame["tenure"] / 100])

    frame = pd.DataFrame({"tenure": [10.0, 50.0], "plan": ["a", "b"]})
    out = asyncio.run(predict(frame))
    assert out.shape == (2, 2)
    assert harness.total("mlmon.predictions") == 1
    values = {attrs["output"]: p for attrs, p in harness.points("mlmon.prediction.value")}
    assert set(values) == {"stay", "leave"} and values["leave"].sum == pytest.approx(0.6)
    assert harness.monitor.model("churn").health()["rows_in_window"] == 2


def test_exceptions_propagate_unchanged_and_are_counted(harness):
    error = Boom("teapot")

    @monitor(model="m", registry=harness.monitor)
    def fails(row: dict) -> float:
        raise error

    @monitor(model="m", registry=harness.monitor)
    async def cancelled(row: dict) -> float:
        raise asyncio.CancelledError()

    with pytest.raises(Boom) as info:
        fails({"a": 1})
    assert info.value is error
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(cancelled({"a": 1}))
    assert harness.total("mlmon.predictions", outcome="error") == 2
    statuses = {(a["error.type"], a["http.response.status_code"]) for a, _ in harness.points("mlmon.inference.duration")}
    assert statuses == {("Boom", 418), ("CancelledError", 500)}
    assert harness.monitor.model("m").health()["rows_in_window"] == 0
    [span, _] = sorted(harness.finished_spans(), key=lambda s: s.attributes["error.type"])
    assert span.status.status_code == StatusCode.ERROR


def test_span_is_a_child_of_the_current_span_and_carries_the_prediction(harness_factory):
    h = harness_factory(trace_features=("amount",))

    @monitor(model="fraud", version="2", registry=h.monitor)
    def score(tx: Tx) -> float:
        return 0.75

    tracer = h.tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("POST /score") as parent:
        score(Tx(amount=12.5, country="fr"))
    spans = {s.name: s for s in h.finished_spans()}
    ours = spans["mlmon.inference fraud"]
    assert ours.parent.span_id == parent.get_span_context().span_id
    assert ours.context.trace_id == parent.get_span_context().trace_id
    attrs = dict(ours.attributes)
    assert attrs["mlmon.model.name"] == "fraud" and attrs["mlmon.model.version"] == "2"
    assert len(attrs["mlmon.prediction.id"]) == 32 and attrs["mlmon.prediction"] == 0.75
    assert attrs["mlmon.feature.amount"] == 12.5
    assert "mlmon.feature.country" not in attrs  # raw values only for allowed features
    assert ours.end_time - ours.start_time >= 0


def test_no_feature_values_in_spans_by_default(harness):
    @monitor(model="fraud", registry=harness.monitor)
    def score(tx: dict) -> float:
        return 0.1

    score({"amount": 1.0, "ssn": "123"})
    [span] = harness.finished_spans()
    assert not any(k.startswith("mlmon.feature.") for k in span.attributes)


def test_signature_and_metadata_are_preserved():
    from mlmon_middleware import Monitor, MonitorConfig

    mon = Monitor(MonitorConfig(tracing=False))

    async def predict(tx: Tx, limit: int = 3) -> dict:
        """Docs."""
        return {}

    wrapped = monitor(model="x", registry=mon)(predict)
    assert inspect.signature(wrapped) == inspect.signature(predict)
    assert wrapped.__doc__ == "Docs." and wrapped.__name__ == "predict"
    assert inspect.iscoroutinefunction(wrapped)
    assert not inspect.iscoroutinefunction(monitor(model="y", registry=mon)(lambda x: x))


def test_a_broken_monitor_never_changes_the_result(harness, monkeypatch):
    @monitor(model="m", registry=harness.monitor)
    def predict(row: dict) -> float:
        return 42.0

    monkeypatch.setattr(harness.monitor, "submit", lambda record: 1 / 0)
    assert predict({"a": 1}) == 42.0
    assert harness.monitor.errors.counts() == {"capture": 1}
    assert harness.total("mlmon.monitor.errors", stage="capture") == 1


def test_input_argument_selection(harness):
    @monitor(model="a", registry=harness.monitor, input="features")
    def explicit(request_id: str, features: list, options: dict) -> float:
        return 1.0

    @monitor(model="b", registry=harness.monitor)
    def scalars(age: float, income: float) -> float:
        return 0.5

    explicit("r1", [1.0, 2.0], {"debug": True})
    scalars(30, income=5e4)
    harness.monitor.flush()
    assert harness.monitor.model("a").schema.names == ("f0", "f1")
    assert harness.monitor.model("b").schema.names == ("age", "income")
