"""The pipeline's read of the common batch in a few passes (``batch_read.read_plain``) says
exactly what the record-by-record read says, and leaves every other batch to it."""

import random

import numpy as np
import pytest

from mlmon_middleware import Monitor, MonitorConfig
from mlmon_middleware.batch_read import READ_RECORDS, BatchRead, read_plain, read_records
from mlmon_middleware.ingest import ingest
from mlmon_middleware.model import Record
from mlmon_middleware.payload import PREDICTION_KEYS, plain_answers


class _Writer:
    """A log writer that keeps what it is given."""

    def __init__(self):
        self.rows = []

    def put(self, rows):
        self.rows += rows


@pytest.fixture
def monitor():
    mon = Monitor(MonitorConfig(tracing=False))
    mon.start()
    yield mon
    mon.shutdown()


def _records(mm, n, rng, key="prediction"):
    routes = ["/a", "/b"] if rng.random() < 0.5 else ["/a"]
    out = []
    for i in range(n):
        row = {"amount": rng.uniform(-1e6, 1e6), "age": rng.randrange(100), "country": rng.choice(["fr", "de", "ü" * 3])}
        answer = {key: rng.choice([rng.random(), rng.randrange(5), "yes", True]), "model": "m"}
        out.append(Record(mm, f"id{i}", rng.randrange(10**18), rng.randrange(10**9), row, answer,
                          rng.choice(routes), rng.choice([None, 200, 201])))
    return out


def _said(read):
    return (dict(read.counts), read.durations, read.feature_rows, read.output_rows, read.row_times,
            [tuple(r) for r in read.log_rows], dict(read.capture), read.messages, read.segments)


@pytest.mark.parametrize("seed", range(8))
def test_the_plain_read_says_what_the_record_by_record_read_says(monitor, seed):
    rng = random.Random(seed)
    mm = monitor.model(f"m{seed}", segments=["country"], log_features="all", redact=["age"])
    key = rng.choice(PREDICTION_KEYS)
    if key != "prediction" and rng.random() < 0.5:
        mm = monitor.model(f"k{seed}", prediction_key=key)
    records = _records(mm, rng.randrange(1, 300), rng, key)
    writer, plain, one_by_one = _Writer(), BatchRead(), BatchRead()
    assert read_plain(mm, records, writer, plain)
    read_records(mm, records, monitor.telemetry, writer, lambda: None, one_by_one)
    assert _said(plain) == _said(one_by_one)


def _fallbacks(mm):
    """Batches the one-pass read must leave to the record-by-record read, each for its reason."""
    ok = {"amount": 1.0, "age": 3}

    def batch(**change):
        base = dict(inputs=ok, outputs={"prediction": 0.5}, status=200, error=None)
        base.update(change)
        plain = Record(mm, "a", 1, 2, ok, {"prediction": 0.5}, "/p", 200)
        odd = Record(mm, "b", 1, 2, base["inputs"], base["outputs"], "/p", base["status"], base["error"])
        return [plain, odd]

    explained = batch()
    explained[1].explanation = object()  # only its presence matters here
    earlier = batch(outputs={"prediction": 0.5, "predictions": 0.7})
    earlier[0].outputs = {"predictions": 0.5}  # the first answers under "predictions", the second's first key is "prediction"
    return {
        "an error": batch(error="ValueError"),
        "an error status": batch(status=503),
        "one field (maybe a batch key)": batch(inputs={"instances": [[1.0, 2.0]]}),
        "a list row": batch(inputs=[1.0, 2.0]),
        "no prediction": batch(outputs={"something": 1}),
        "an earlier conventional key": earlier,
        "a vector answer": batch(outputs={"prediction": [0.1, 0.9]}),
        "a None prediction": batch(outputs={"prediction": None}),
        "a numpy scalar": batch(outputs={"prediction": np.float32(0.5)}),
        "an explanation": explained,
    }


def test_other_batches_are_read_record_by_record(monitor):
    mm = monitor.model("m")
    for reason, records in _fallbacks(mm).items():
        read = BatchRead()
        assert not read_plain(mm, records, None, read) and _said(read) == _said(BatchRead()), reason  # untouched


def test_plain_answers_take_each_answers_first_conventional_key():
    assert plain_answers([{"score": 0.1}, {"score": 0.2, "label": 1}]) == [{"prediction": 0.1}, {"prediction": 0.2}]
    assert plain_answers([{"score": 0.1}, {"score": 0.2, "prediction": 1}]) is None  # that one's is "prediction"
    assert plain_answers([{"label": "a"}], key="label") == [{"prediction": "a"}]
    assert plain_answers([{"label": "a"}, {"x": 1}], key="label") is None
    assert plain_answers([]) is None and plain_answers([0.5]) is None


def test_a_mixed_batch_lands_as_the_same_rows_in_order(monitor):
    """End to end through ingest: the plain batch and the same batch with one odd record in
    the middle give the same window rows, in arrival order (the odd one's rows included)."""
    rng = random.Random(5)
    mm = monitor.model("mixed")
    records = _records(mm, 50, rng)
    odd = Record(mm, "odd", 10**18, 5, [{"amount": 2.0, "age": 1, "country": "fr"}] * 3, {"prediction": [1, 0, 1]}, "/a", 200)
    ingest(mm, records[:25] + [odd] + records[25:], monitor.telemetry, None)
    amounts = mm.window.snapshot()["numeric"][:, mm.schema.numeric_names.index("amount")]
    expected = [r.inputs["amount"] for r in records[:25]] + [2.0] * 3 + [r.inputs["amount"] for r in records[25:]]
    np.testing.assert_allclose(amounts, np.array(expected, dtype=amounts.dtype), rtol=1e-6)
    assert mm.health()["predictions"] == {"ok": 51, "error": 0}


def _fail_log_rows_of(prediction_id, monkeypatch):
    """Make the prediction-log rows of the record ``prediction_id`` fail to be made."""
    import mlmon_middleware.batch_read as batch_read

    real = batch_read.log_rows

    def failing(model, rec, rows, outputs, cuts):
        if rec.prediction_id == prediction_id:
            raise ValueError("cannot")
        return real(model, rec, rows, outputs, cuts)

    monkeypatch.setattr(batch_read, "log_rows", failing)


def test_a_log_row_that_cannot_be_made_sends_the_batch_record_by_record(monitor, monkeypatch):
    """There the record is counted (``unreadable``) and its rows kept out of the window."""
    _fail_log_rows_of("id3", monkeypatch)
    mm = monitor.model("log")
    records = _records(mm, 10, random.Random(1))
    read, writer = BatchRead(), _Writer()
    assert not read_plain(mm, records, writer, read) and _said(read) == _said(BatchRead())
    read_records(mm, records, monitor.telemetry, writer, lambda: None, read)
    assert read.capture == {"unreadable": 1} and len(read.feature_rows) == len(read.log_rows) == 9


def test_a_row_logged_cut_is_counted_once_when_the_batch_is_read_again_record_by_record(monitor, monkeypatch):
    _fail_log_rows_of("id3", monkeypatch)
    mm = monitor.model("cut", log_features="all")
    records = _records(mm, 6, random.Random(2))
    for rec in records:
        rec.inputs["note"] = "x" * 70_000  # over the 64 KiB a logged row keeps
    read, writer = BatchRead(), _Writer()
    assert not read_plain(mm, records, writer, read)  # id3's log row fails: the batch goes record by record
    read_records(mm, records, monitor.telemetry, writer, lambda: None, read)
    assert len(read.log_rows) == 5 and all(len(row.features) < 70_000 for row in read.log_rows)
    assert monitor.limits.counts()["logged_row"] == 5  # each kept row once; none for the failed record


def test_ingest_reads_a_plain_batch_in_passes_and_a_traced_one_record_by_record(monitor, monkeypatch):
    """The fast read is taken when it can be (a speed matter: the results are the same)."""
    import mlmon_middleware.ingest as ingest_module

    real, calls = ingest_module.read_records, []

    def counted(model, records, *args):
        calls.append(len(records))
        return real(model, records, *args)

    monkeypatch.setattr(ingest_module, "read_records", counted)
    mm = monitor.model("fast")
    ingest(mm, _records(mm, 70, random.Random(2)), monitor.telemetry, None)
    assert calls == [] and mm.health()["predictions"] == {"ok": 70, "error": 0}

    traced = Monitor(MonitorConfig(tracing=True))
    try:
        mt = traced.model("traced")
        ingest(mt, _records(mt, 70, random.Random(2)), traced.telemetry, None)
        assert calls == [READ_RECORDS, READ_RECORDS, 70 - 2 * READ_RECORDS]  # a span per record: one by one
    finally:
        traced.shutdown()


@pytest.mark.parametrize("row_cells", [4, 2048])
def test_kinds_come_from_the_whole_batch_however_small_the_pieces_it_is_encoded_in(monitor, row_cells):
    """A field missing from a batch's first rows takes the kind of its first value in the batch,
    and so does a prediction missing from them, whether the rows are encoded 2 at a time (a pipeline
    that pauses, on wide rows) or all at once."""
    mm = monitor.model(f"late-{row_cells}")
    records = [Record(mm, f"id{i}", i, 5, {"amount": float(i), "plan": None if i < 6 else "pro"},
                      {"prediction": None if i < 6 else "yes"}, "/a", 200) for i in range(10)]
    ingest(mm, records, monitor.telemetry, None, row_cells=row_cells)
    assert dict(zip(mm.schema.names, mm.schema.kinds)) == {"amount": "numeric", "plan": "categorical"}
    assert mm.output_schema.kinds == ("categorical",)
    assert mm.window.snapshot()["categorical"][:, 0].tolist() == [None] * 6 + ["pro"] * 4
