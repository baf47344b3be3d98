import asyncio
import contextvars
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


def test_a_plain_call_hands_back_its_prediction_id_for_labels(harness_factory, tmp_path):
    """Batch jobs and workers (no middleware): current_prediction_id() after the call is the id the
    log holds, so a label can be joined without a lookup."""
    contextvars.Context().run(_plain_calls_hand_back_ids, harness_factory(store_dir=str(tmp_path)))


def _plain_calls_hand_back_ids(h) -> None:  # in a fresh context: no id left by other tests
    from mlmon_middleware import current_prediction_id

    h.monitor.start()

    @monitor(model="churn", registry=h.monitor)
    def score(row: dict) -> float:
        return 0.8 if row["tenure"] < 12 else 0.1

    @monitor(model="churn", registry=h.monitor)
    def score_batch(rows: list) -> list:
        return [0.3 for _ in rows]

    @monitor(model="churn", registry=h.monitor)
    def broken(row: dict) -> float:
        raise Boom("no model")

    assert current_prediction_id() is None  # nothing called yet in this context
    score({"tenure": 3})
    first = current_prediction_id()
    score({"tenure": 30})
    second = current_prediction_id()
    assert first and second and first != second and len(second) == 32
    with pytest.raises(Boom):
        broken({"tenure": 1})
    assert current_prediction_id() is None  # the last call gave no prediction to label
    score_batch([{"tenure": 1}, {"tenure": 2}])
    batch = current_prediction_id()
    mm = h.monitor.model("churn")
    h.monitor.flush()
    mm.registry.store_writer.flush()
    assert mm.lookup(first)["prediction"] == {"prediction": 0.8}
    assert mm.lookup(second)["prediction"] == {"prediction": 0.1}
    assert [mm.lookup(f"{batch}:{i}") is not None for i in range(2)] == [True, True]
    assert mm.record_outcome(second, actual=0)["status"] == "labelled"


def test_prediction_ids_of_plain_calls_stay_in_their_thread_or_task(harness):
    contextvars.Context().run(_ids_stay_in_their_thread_or_task, harness)


def _ids_stay_in_their_thread_or_task(harness) -> None:  # in a fresh context: no id left by other tests
    import threading

    from mlmon_middleware import current_prediction_id

    @monitor(model="m", registry=harness.monitor)
    def score(row: dict) -> float:
        return 1.0

    @monitor(model="m", registry=harness.monitor)
    async def ascore(row: dict) -> float:
        await asyncio.sleep(0)
        return 1.0

    seen: dict[str, tuple] = {}

    def worker(name: str) -> None:
        score({"x": 1.0})
        mine = current_prediction_id()
        barrier.wait()  # both threads have called before either reads again
        seen[name] = (mine, current_prediction_id())

    barrier = threading.Barrier(2)
    threads = [threading.Thread(target=worker, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen["a"][0] == seen["a"][1] and seen["b"][0] == seen["b"][1] and seen["a"][0] != seen["b"][0]
    assert current_prediction_id() is None  # the main thread called nothing

    async def task() -> tuple:
        await ascore({"x": 1.0})
        return current_prediction_id()

    async def both() -> list:
        return await asyncio.gather(task(), task())

    a, b = asyncio.run(both())
    assert a and b and a != b



def test_no_prediction_id_for_a_call_that_was_not_recorded(harness, monkeypatch):
    """A record that was dropped (here: its model beyond max_models), or a capture that failed,
    leaves no id: never an earlier call's, never one the log will not hold."""
    contextvars.Context().run(_ids_only_for_recorded_calls, harness, monkeypatch)


def _ids_only_for_recorded_calls(h, monkeypatch) -> None:
    from mlmon_middleware import current_prediction_id
    from mlmon_middleware.capture import decorator

    @monitor(model="m", registry=h.monitor)
    def score(row: dict) -> float:
        return 1.0

    mm = h.monitor.model("m")
    score({"x": 1.0})
    assert current_prediction_id() is not None
    monkeypatch.setattr(mm, "admitted", False)
    score({"x": 2.0})  # dropped and counted
    assert current_prediction_id() is None and h.monitor.limits.counts()
    monkeypatch.setattr(mm, "admitted", True)
    score({"x": 3.0})
    assert current_prediction_id() is not None
    monkeypatch.setattr(decorator, "new_prediction_id", lambda: 1 / 0)  # capture itself fails
    assert score({"x": 4.0}) == 1.0 and current_prediction_id() is None
