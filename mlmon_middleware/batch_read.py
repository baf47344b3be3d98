"""Reading a batch of one model's records: what each said, gathered before any of it goes out.

:func:`~mlmon_middleware.ingest.ingest` reads its records here, :data:`READ_RECORDS` at a time,
into one :class:`BatchRead`: counts and durations per route and outcome, feature and prediction
rows in arrival order (runs of rows, and batches kept in columns), prediction-log rows (made by
:mod:`~mlmon_middleware.log_rows`), spans and the exemplars they give, and the capture errors
met. The common batch (one plain dict row per record, a plain answer, no explanation, no span
to make) is read by :func:`read_plain` in a few passes over the records: measured with
cachegrind, a third of the pipeline's work a record (22 features) went in the dozen Python
calls of reading records one by one, which :func:`read_records` still does for everything else.
A record that cannot be read is counted (``mlmon_capture_errors_total{reason}``) and skipped;
the batch goes on.

>>> from mlmon_middleware import Monitor, MonitorConfig
>>> from mlmon_middleware.model import Record
>>> mon = Monitor(MonitorConfig(tracing=False))
>>> mm = mon.model("toy")
>>> records = [Record(mm, f"id{i}", 0, 1000, {"x": float(i), "c": "a"}, {"prediction": i % 2}) for i in range(3)]
>>> read = BatchRead()
>>> read_plain(mm, records, None, read), read.feature_rows[2], read.output_rows[2], dict(read.counts)
(True, {'x': 2.0, 'c': 'a'}, {'prediction': 0}, {('', True): 3})
>>> mon.shutdown()
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from mlmon_middleware.columns import FEW_ROWS, Batch, Columns, Outputs
from mlmon_middleware.explain_request import PendingExplanation
from mlmon_middleware.histograms import Exemplar
from mlmon_middleware.instruments import (
    BATCH_SIZE,
    ERROR_TYPE,
    EXPLANATION_TOP,
    FEATURE,
    HTTP_ROUTE,
    PREDICTION,
    PREDICTION_ID,
    SPAN_NAME,
)
from mlmon_middleware.limits import bounded_name
from mlmon_middleware.log_rows import NS, bounded_value, count_cuts, log_rows
from mlmon_middleware.model import ModelMonitor, Record
from mlmon_middleware.payload import CaptureError, extract_batch, extract_predictions, plain_answers, resolve_payload
from mlmon_middleware.store import LogRow
from mlmon_middleware.store_writer import StoreWriter
from mlmon_middleware.telemetry import Telemetry

MAX_SPAN_OUTPUTS = 32  # outputs of a prediction set on its span (its first row's)
READ_RECORDS = 32  # records read at a time (the common batch's passes go over this many)
MIN_TABLE_ROWS = FEW_ROWS  # a batch in columns with fewer rows joins the rows of the other records


class BatchRead:
    """What the records of a batch said, gathered before any of it goes out."""

    def __init__(self) -> None:
        self.counts: collections.Counter[tuple[str, bool]] = collections.Counter()  # (route, ok) -> records
        self.capture: collections.Counter[str] = collections.Counter()  # capture-error reason -> count
        self.messages: dict[str, str] = {}  # last message per capture-error reason
        self.durations: dict[tuple[str, int | None, str | None], list[int]] = {}  # (route, status, error) -> ns
        self.feature_rows: list[Any] = []  # the current run of rows, with their predictions and times
        self.output_rows: list[dict[str, Any] | None] = []
        self.row_times: list[int] = []
        self.segments: list[tuple[Batch, Outputs, np.ndarray]] = []  # in arrival order: runs of rows, batches in columns
        self.traced: dict[tuple[str, int | None, str | None], Exemplar] = {}  # per duration group: its last traced record
        self.last_traced: tuple[Record, tuple[int, int], Mapping[str, Any]] | None = None  # for the prediction histogram
        self.log_rows: list[LogRow] = []
        self.explained: collections.Counter[str] = collections.Counter()

    def end_segment(self) -> None:
        """Close the current run of rows (before a batch kept in columns, and at the end)."""
        if self.feature_rows:
            self.segments.append((self.feature_rows, self.output_rows, np.array(self.row_times) * NS))
            self.feature_rows, self.output_rows, self.row_times = [], [], []


def read_plain(model: ModelMonitor, records: list[Record], writer: StoreWriter | None, read: BatchRead) -> bool:
    """Read the common batch into ``read`` in a few passes over it: every record a call that
    succeeded, with one plain dict row (two fields or more: no batch key), a plain answer
    (:func:`~mlmon_middleware.payload.plain_answers`) and no explanation. It makes no span: the
    caller uses it only when not tracing. False, and ``read`` untouched, when any record needs
    :func:`read_records`' record-by-record look."""
    rows = [rec.inputs for rec in records]
    if set(map(type, rows)) != {dict} or min(map(len, rows)) < 2:
        return False
    if any(rec.error_type is not None or rec.explanation is not None for rec in records):
        return False
    groups = {(rec.route, rec.status_code) for rec in records}
    if any(status is not None and status >= 400 for _, status in groups):
        return False
    outputs = plain_answers([rec.outputs for rec in records], model.options.prediction_key)
    if outputs is None:
        return False
    logged: list[LogRow] = []
    if writer is not None:
        cuts: list[str] = []
        try:
            for rec, row, output in zip(records, rows, outputs):
                logged += log_rows(model, rec, [row], [output], cuts)
        except Exception:  # the record by record read counts it (and the cuts), and keeps that record's rows out
            return False
        count_cuts(model, cuts)
    if len(groups) == 1:
        (route, status), = groups
        read.counts[(route, True)] += len(records)
        read.durations.setdefault((route, status, None), []).extend(rec.duration_ns for rec in records)
    else:
        for rec in records:
            read.counts[(rec.route, True)] += 1
            read.durations.setdefault((rec.route, rec.status_code, None), []).append(rec.duration_ns)
    read.feature_rows += rows
    read.output_rows += outputs
    read.row_times += [rec.wall_ns for rec in records]
    read.log_rows += logged
    return True


def read_records(model: ModelMonitor, records: list[Record], telemetry: Telemetry, writer: StoreWriter | None,
          pace: Callable[[], None], read: BatchRead) -> None:
    """Read the records into ``read`` one by one: payloads resolved, log rows and spans built."""
    capture, messages = read.capture, read.messages
    tracing = telemetry.tracer is not None
    for rec in records:
        ok = rec.ok
        read.counts[(rec.route, ok)] += 1
        key = (rec.route, rec.status_code, rec.error_type)
        group = read.durations.get(key)
        if group is None:
            group = read.durations[key] = []
        group.append(rec.duration_ns)
        try:  # one record nothing can be read from is counted and skipped; the batch goes on
            rows, outputs = _rows_of(model, rec, capture, messages) if ok else ([], [])
            cuts: list[str] = []
            logged = log_rows(model, rec, rows, outputs, cuts) if rows and writer is not None else []
            count_cuts(model, cuts)
        except Exception as exc:
            failed(capture, messages, "unreadable", exc)
            rows, outputs, logged = [], [], []
        if len(rows) >= MIN_TABLE_ROWS and (isinstance(rows, Columns) or isinstance(outputs, Columns)):
            read.end_segment()  # the rows before it go into the window before it
            read.segments.append((rows, outputs, np.full(len(rows), rec.wall_ns * NS)))  # it stays in columns
            read.log_rows += logged
        elif rows:
            rows = list(rows) if isinstance(rows, Columns) else rows  # a few rows cost less with the others
            read.feature_rows += rows
            read.output_rows += outputs
            read.row_times += [rec.wall_ns] * len(rows) if len(rows) > 1 else [rec.wall_ns]
            read.log_rows += logged
        try:
            if rec.explanation is not None:
                read.explained[rec.explanation.status] += 1
                _explained(model, rec.explanation, rec.wall_ns * NS, telemetry)
            if tracing:
                ids = _span(model, telemetry, rec, rows, outputs)
                if ids is not None:  # a sampled span: the exemplar of its series (one per batch)
                    read.traced[key] = Exemplar(rec.duration_ns * NS, rec.wall_ns + rec.duration_ns, *ids)
                    if outputs and outputs[0]:
                        read.last_traced = (rec, ids, outputs[0])
        except Exception as exc:
            failed(capture, messages, "unrecordable", exc)
        pace()


def failed(capture: collections.Counter[str], messages: dict[str, str], reason: str, exc: BaseException) -> None:
    """Count a record the pipeline could not handle (``mlmon_capture_errors_total{reason}``)."""
    capture[reason] += 1
    messages[reason] = (str(exc) if isinstance(exc, CaptureError) else f"{type(exc).__name__}: {exc}")[:200]


def _rows_of(model: ModelMonitor, rec: Record, capture: collections.Counter[str],
             messages: dict[str, str]) -> tuple[Batch, Outputs]:
    """The feature rows and prediction rows of one record (capture problems counted)."""
    options = model.options
    try:
        rows = extract_batch(resolve_payload(rec.inputs, options.input))
    except CaptureError as exc:
        failed(capture, messages, exc.reason, exc)
        return [], []
    outputs: Outputs
    try:
        found = extract_predictions(resolve_payload(rec.outputs), len(rows), options.prediction_key, options.class_names)
        outputs = found if isinstance(found, Columns) else list(found)
    except CaptureError as exc:
        failed(capture, messages, exc.reason, exc)
        outputs = [None] * len(rows)
    return rows, outputs


def _explained(model: ModelMonitor, pending: PendingExplanation, when: float, telemetry: Telemetry) -> None:
    """Time an explanation and keep its |contributions| for attribution drift."""
    result = pending.result
    if result is None:
        return
    telemetry.explanation_duration.observe(np.array([pending.seconds]), {**model.attrs, "explainer": result["method"]})
    model.attributions.append((when, np.abs(np.asarray(result["contributions"], dtype=float))))


def _span(model: ModelMonitor, telemetry: Telemetry, rec: Record, rows: Batch,
          outputs: Outputs) -> tuple[int, int] | None:
    attrs: dict[str, Any] = {**model.attrs, PREDICTION_ID: rec.prediction_id, BATCH_SIZE: len(rows)}
    if rec.route:
        attrs[HTTP_ROUTE] = rec.route
    first = outputs[0] if outputs else None
    if first:  # the app's answer may echo what a client sent: so many names, each and its text bounded
        for name, value in itertools.islice(first.items(), MAX_SPAN_OUTPUTS):
            value = bounded_value(value)
            if isinstance(value, (int, float, str, bool)):
                attrs[f"{PREDICTION}.{bounded_name(str(name))}" if len(first) > 1 else PREDICTION] = value
    allowed = model.registry.config.trace_features
    if allowed and rows and isinstance(rows[0], Mapping):
        for name in allowed:
            value = bounded_value(rows[0].get(name))
            if isinstance(value, (int, float, str, bool)):
                attrs[f"{FEATURE}.{name}"] = value
    if rec.error_type:
        attrs[ERROR_TYPE] = rec.error_type
    result = rec.explanation.result if rec.explanation is not None else None
    for i, item in enumerate((result or {}).get("top", ())):
        attrs[f"{EXPLANATION_TOP}.{i}.feature"] = item["feature"]
        attrs[f"{EXPLANATION_TOP}.{i}.contribution"] = item["contribution"]
    return telemetry.span(f"{SPAN_NAME} {model.name}", rec.context, attrs, rec.wall_ns,
                          rec.wall_ns + rec.duration_ns, rec.error_type)
