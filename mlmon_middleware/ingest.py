"""Ingestion: a batch of one model's records turned into counts, timings, rows, log rows and spans.

The :class:`~mlmon_middleware.pipeline.Pipeline` thread calls :func:`ingest` with the records
it drained, grouped by model. Data flows one way: each record is read (its payload resolved
into feature and prediction rows, its log rows and span built; the common batch, plain dict
rows answered with plain dicts and no span to make, in a few passes over the whole batch
rather than record by record: a third of the pipeline's work a record), then the batch's counts and
timings go to telemetry once, its log rows to the log writer, and its rows into the model's
windows and fleet bins in arrival order: encoded :data:`UNPAUSED_ROW_CELLS` values at a time
(rows; :data:`ROW_CELLS` when ``pace`` pauses) or :data:`TABLE_CELLS` (batches in columns),
written :data:`STORE_CELLS` at a time. ``pace`` is called between
these small pieces of work (see :mod:`~mlmon_middleware.pacing`), so the serving thread never
waits long for the GIL however large the batch. A record that cannot be read, encoded, logged
or spanned is counted (``mlmon_capture_errors_total{reason}``) and skipped; the batch goes on.

>>> from mlmon_middleware import Monitor, MonitorConfig
>>> from mlmon_middleware.model import Record
>>> mon = Monitor(MonitorConfig(tracing=False)); mon.start()
>>> mm = mon.model("toy")
>>> records = [Record(mm, f"id{i}", 0, 1000, {"x": float(i)}, {"prediction": i % 2}) for i in range(3)]
>>> ingest(mm, records, mon.telemetry, None)
False
>>> mm.window.snapshot()["numeric"][:, 0].tolist(), mm.health()["predictions"]
([0.0, 1.0, 2.0], {'ok': 3, 'error': 0})
>>> mon.shutdown()
"""

from __future__ import annotations

import collections
import json
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import orjson

from mlmon_middleware.columns import FEW_ROWS, Batch, Columns
from mlmon_middleware.explain_request import PendingExplanation, shown
from mlmon_middleware.histograms import Exemplar
from mlmon_middleware.instruments import (
    BATCH_SIZE,
    ERROR_TYPE,
    EXPLANATION_TOP,
    FEATURE,
    HTTP_ROUTE,
    HTTP_STATUS,
    PREDICTION,
    PREDICTION_ID,
    SPAN_NAME,
)
from mlmon_middleware.limits import MAX_NAME_CHARS, OVERSIZED, bounded_category
from mlmon_middleware.model import ModelMonitor, Record
from mlmon_middleware.pacing import no_pace
from mlmon_middleware.payload import CaptureError, extract_batch, extract_predictions, plain_answers, resolve_payload
from mlmon_middleware.reservoir import SlidingWindow
from mlmon_middleware.schema import Encoded, FeatureSchema
from mlmon_middleware.store import LogRow
from mlmon_middleware.store_writer import StoreWriter
from mlmon_middleware.telemetry import Telemetry

_NS = 1e-9
#: a record's predictions: one dict per row (None where unreadable), or columns for an array answer
Outputs = list[dict[str, Any] | None] | Columns
#: feature values encoded into the windows at a time (tens of µs of work between two pace points):
#: of rows (dicts or lists, value by value), and of batches in columns (a few numpy calls per column)
ROW_CELLS = 512
#: of rows when the pace points do not pause (a short switch interval hands the GIL over within
#: any stretch): each encoding has a fixed cost, and four times fewer of them is a seventh less
#: of the pipeline's work a record (22 features)
UNPAUSED_ROW_CELLS = 2048
TABLE_CELLS = 16_384
MIN_TABLE_ROWS = FEW_ROWS  # a batch in columns with fewer rows joins the rows of the other records
STORE_CELLS = 16_384  # encoded values written into the windows at a time
READ_RECORDS = 32  # records read at a time (the common batch's passes go over this many)


def ingest(model: ModelMonitor, records: list[Record], telemetry: Telemetry, writer: StoreWriter | None,
           pace: Callable[[], None] = no_pace, row_cells: int = UNPAUSED_ROW_CELLS) -> bool:
    """Turn a batch of one model's records into counts, timings, rows, log rows and spans,
    calling ``pace`` between small pieces of the work (see the module docstring), rows encoded
    ``row_cells`` values at a time (:data:`ROW_CELLS` when ``pace`` pauses). True when the
    batch held input over a capture bound (:data:`~mlmon_middleware.limits.OVERSIZED`)."""
    read = _Read()
    plain = telemetry.tracer is None  # a span per record is made record by record
    for start in range(0, len(records), READ_RECORDS):
        chunk = records[start:start + READ_RECORDS]
        if not (plain and _read_plain(model, chunk, writer, read)):
            _read(model, chunk, telemetry, writer, pace, read)
        pace()
    capture, counts = read.capture, read.counts
    attrs = model.attrs
    for (route, status, error_type), values in read.durations.items():
        labels: dict[str, Any] = {**attrs, HTTP_ROUTE: route, HTTP_STATUS: status or (500 if error_type else 200)}
        if error_type:
            labels[ERROR_TYPE] = error_type
        telemetry.inference_duration.observe(np.array(values) * _NS, labels, read.traced.get((route, status, error_type)))
        pace()
    for (route, ok), n in counts.items():
        telemetry.predictions.add(n, {**attrs, HTTP_ROUTE: route, "outcome": "ok" if ok else "error"})
        pace()
    for outcome, n in read.explained.items():
        telemetry.explanations.add(n, {**attrs, "status": outcome})
    if read.log_rows and writer is not None:
        writer.put(read.log_rows)
    read.end_segment()
    pending = _Pending(model)
    for rows, outputs, times in read.segments:
        width = len(model.schema.names) if model.schema is not None else _width(rows)
        cells = TABLE_CELLS if isinstance(rows, Columns) else row_cells
        step = max(1, cells // max(1, width))
        for start in range(0, len(rows), step):
            end = start + step
            _windows(model, rows[start:end], outputs[start:end], times[start:end], capture, read.messages, pending, pace)
            pace()
            pending.write_if_full(pace)
    pending.write()
    for name, parts in pending.predicted.items():  # the prediction histogram: once per output and batch
        telemetry.prediction_value.observe(np.concatenate(parts), {**attrs, "output": name},
                                           _prediction_exemplar(read.last_traced, name))
    for reason, n in capture.items():
        telemetry.capture_errors.add(n, {**attrs, "reason": reason})
    outcomes: collections.Counter[str] = collections.Counter()
    for (_, ok), n in counts.items():
        outcomes["ok" if ok else "error"] += n
    model.counters.add_batch(outcomes, capture, read.messages)
    return not OVERSIZED.isdisjoint(capture)


class _Read:
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
            self.segments.append((self.feature_rows, self.output_rows, np.array(self.row_times) * _NS))
            self.feature_rows, self.output_rows, self.row_times = [], [], []


def _read_plain(model: ModelMonitor, records: list[Record], writer: StoreWriter | None, read: _Read) -> bool:
    """Read the common batch into ``read`` in a few passes over it: every record a call that
    succeeded, with one plain dict row (two fields or more: no batch key), a plain answer
    (:func:`~mlmon_middleware.payload.plain_answers`) and no explanation. False, and ``read``
    untouched, when any record needs :func:`_read`'s record-by-record look."""
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
        try:
            for rec, row, output in zip(records, rows, outputs):
                logged += _log_rows(model, rec, [row], [output])
        except Exception:  # the record by record read counts it, and keeps that record's rows out
            return False
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


def _read(model: ModelMonitor, records: list[Record], telemetry: Telemetry, writer: StoreWriter | None,
          pace: Callable[[], None], read: _Read) -> None:
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
            logged = _log_rows(model, rec, rows, outputs) if rows and writer is not None else []
        except Exception as exc:
            _failed(capture, messages, "unreadable", exc)
            rows, outputs, logged = [], [], []
        if len(rows) >= MIN_TABLE_ROWS and (isinstance(rows, Columns) or isinstance(outputs, Columns)):
            read.end_segment()  # the rows before it go into the window before it
            read.segments.append((rows, outputs, np.full(len(rows), rec.wall_ns * _NS)))  # it stays in columns
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
                _explained(model, rec.explanation, rec.wall_ns * _NS, telemetry)
            if tracing:
                ids = _span(model, telemetry, rec, rows, outputs)
                if ids is not None:  # a sampled span: the exemplar of its series (one per batch)
                    read.traced[key] = Exemplar(rec.duration_ns * _NS, rec.wall_ns + rec.duration_ns, *ids)
                    if outputs and outputs[0]:
                        read.last_traced = (rec, ids, outputs[0])
        except Exception as exc:
            _failed(capture, messages, "unrecordable", exc)
        pace()


def _failed(capture: collections.Counter[str], messages: dict[str, str], reason: str, exc: BaseException) -> None:
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
        _failed(capture, messages, exc.reason, exc)
        return [], []
    outputs: Outputs
    try:
        found = extract_predictions(resolve_payload(rec.outputs), len(rows), options.prediction_key, options.class_names)
        outputs = found if isinstance(found, Columns) else list(found)
    except CaptureError as exc:
        _failed(capture, messages, exc.reason, exc)
        outputs = [None] * len(rows)
    return rows, outputs


def _windows(model: ModelMonitor, rows: Batch, outputs: Outputs, times: np.ndarray,
             capture: collections.Counter[str], messages: dict[str, str], pending: _Pending,
             pace: Callable[[], None] = no_pace) -> None:
    """Encode rows for the model's feature and prediction windows (schemas inferred on first use).
    When the batch cannot be encoded at once, its rows go in one by one and the ones that cannot
    are counted (``unencodable``): one bad row never costs the others their place."""
    try:
        _encode(model, rows, outputs, times, capture, pending)
    except Exception:
        for i in range(len(rows)):
            try:
                _encode(model, rows[i:i + 1], outputs[i:i + 1], times[i:i + 1], capture, pending)
            except Exception as exc:
                _failed(capture, messages, "unencodable", exc)
            pace()


def _width(rows: Batch) -> int:
    """Values per row of a batch whose schema is not known yet."""
    if isinstance(rows, Columns):
        return rows.width
    first: Any = rows[0] if rows else None
    return len(first) if first is not None and hasattr(first, "__len__") else 1


def _encode(model: ModelMonitor, rows: Batch, outputs: Outputs, times: np.ndarray,
            capture: collections.Counter[str], pending: _Pending) -> None:
    """Encode rows and their predictions into ``pending``: all or nothing (a failure adds nothing)."""
    config = model.registry.config
    size = config.reservoir_size
    schema = model.schema or FeatureSchema.infer(rows, names=model.declared_names, kinds=model.declared_kinds,
                                                 max_features=config.max_features)
    if model.schema is None and model.declared_names is None and isinstance(rows[0], Mapping):
        # the bounds an inferred schema applied to a client's field names, counted once
        too_long = sum(len(str(k)) > MAX_NAME_CHARS for k in rows[0])
        too_wide = len(rows[0]) - too_long - len(schema.names)
        for reason, n in (("name_too_long", too_long), ("too_wide", too_wide)):
            if n > 0:
                capture[reason] += n
    encoded = schema.encode(rows)
    answered: Any  # the rows with a prediction: every one of an array answer
    answers: Batch
    if isinstance(outputs, Columns):
        answered, answers = slice(None), outputs
    else:
        answered = [i for i, o in enumerate(outputs) if o is not None]
        answers = [outputs[i] for i in answered]
    output_schema = model.output_schema
    out = None
    if len(answers):
        output_schema = output_schema or FeatureSchema.infer(answers)
        out = output_schema.encode(answers)
    if model.schema is None:
        model.schema = schema
    if model.window is None:
        model.window = SlidingWindow(size, numeric=(len(schema.numeric_names), model.window_dtype()),
                                     categorical=(len(schema.categorical_names), object))
    capture.update(encoded.errors)
    model.counters.add_encoding(encoded.feature_errors, encoded.unexpected_fields)
    pending.features.append((times, encoded))
    pending.cells += encoded.numeric.size + encoded.categorical.size
    if out is None or output_schema is None:
        return
    if model.output_schema is None or model.output_window is None:
        model.output_schema = output_schema
        model.output_window = SlidingWindow(size, numeric=(len(output_schema.numeric_names), model.window_dtype(True)),
                                            categorical=(len(output_schema.categorical_names), object))
    for reason, n in out.errors.items():
        capture[f"prediction_{reason}"] += n
    pending.outputs.append((times[answered], out))


class _Pending:
    """Encoded rows on their way into a model's windows: written :data:`STORE_CELLS` values at
    a time, so that every encoded slice does not pay for a write of its own."""

    def __init__(self, model: ModelMonitor) -> None:
        self.model = model
        self.features: list[tuple[np.ndarray, Encoded]] = []
        self.outputs: list[tuple[np.ndarray, Encoded]] = []
        self.cells = 0
        self.predicted: dict[str, list[np.ndarray]] = {}  # per numeric output, the values written

    def write_if_full(self, pace: Callable[[], None]) -> None:
        if self.cells >= STORE_CELLS:
            self.write()
            pace()

    def write(self) -> None:
        model = self.model
        for window, outputs in ((model.window, False), (model.output_window, True)):
            # a baseline set while the window was being created may need more than float32
            if window is not None and window.dtype("numeric") == np.float32 and model.window_dtype(outputs) != np.float32:
                window.widen("numeric")
        if self.features and model.window is not None:
            times, numeric, categorical = _joined(self.features)
            model.window.extend(times, numeric=numeric, categorical=categorical)
            if model.bins is not None:  # the fleet bin counters: rows per baseline bin (or category), per feature
                model.bins.add(numeric, categorical)
        if self.outputs and model.output_window is not None and model.output_schema is not None:
            times, numeric, categorical = _joined(self.outputs)
            model.output_window.extend(times, numeric=numeric, categorical=categorical)
            for j, name in enumerate(model.output_schema.numeric_names):
                self.predicted.setdefault(name, []).append(numeric[:, j])
        self.features, self.outputs, self.cells = [], [], 0


def _joined(parts: list[tuple[np.ndarray, Encoded]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if len(parts) == 1:
        times, encoded = parts[0]
        return times, encoded.numeric, encoded.categorical
    return (np.concatenate([t for t, _ in parts]), np.concatenate([e.numeric for _, e in parts]),
            np.concatenate([e.categorical for _, e in parts]))


def _json(value: object) -> str:
    try:
        return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS, default=str).decode()
    except TypeError:  # orjson stops at 64-bit integers and at deep nesting; the standard library does not
        return json.dumps(value, default=str)


def _log_rows(model: ModelMonitor, rec: Record, rows: Batch, outputs: Outputs) -> list[LogRow]:
    """Prediction-log rows of one record: batch row ``i`` gets the id ``"{prediction id}:{i}"``."""
    names = model.schema.names if model.schema is not None else ()
    options = model.options
    chosen_features = options.log_features
    when = rec.wall_ns * _NS
    out = []
    for i, (row, output) in enumerate(zip(rows, outputs)):
        values: Mapping[str, Any] = row if isinstance(row, Mapping) else dict(zip(names, row))
        segments = {name: _bounded(values.get(name)) for name in options.segments}
        if chosen_features is None:
            features = None
        else:
            chosen = values if chosen_features == "all" else {n: values.get(n) for n in chosen_features}
            features = _json({k: ("[redacted]" if k in options.redact else v) for k, v in chosen.items()})
        pid = rec.prediction_id if len(rows) == 1 else f"{rec.prediction_id}:{i}"
        result = rec.explanation.result if rec.explanation is not None and i == 0 else None
        explanation = None if result is None else _json(shown(result))
        out.append(LogRow(pid, model.name, model.version, when, _json(output or {}), _json(segments), features, explanation))
    return out


def _bounded(value: object) -> object:
    """A segment value as logged: long text cut (it becomes a label of exported series)."""
    return bounded_category(value) if isinstance(value, str) else value


def _explained(model: ModelMonitor, pending: PendingExplanation, when: float, telemetry: Telemetry) -> None:
    """Time an explanation and keep its |contributions| for attribution drift."""
    result = pending.result
    if result is None:
        return
    telemetry.explanation_duration.observe(np.array([pending.seconds]), {**model.attrs, "explainer": result["method"]})
    model.attributions.append((when, np.abs(np.asarray(result["contributions"], dtype=float))))


def _prediction_exemplar(traced: tuple[Record, tuple[int, int], Mapping[str, Any]] | None,
                         output: str) -> Exemplar | None:
    """The exemplar of an output's prediction histogram: the last traced record's first prediction."""
    if traced is None:
        return None
    rec, ids, first = traced
    value = first.get(output)
    if not isinstance(value, (int, float)):
        return None
    return Exemplar(float(value), rec.wall_ns + rec.duration_ns, *ids)


def _span(model: ModelMonitor, telemetry: Telemetry, rec: Record, rows: Batch,
          outputs: Outputs) -> tuple[int, int] | None:
    attrs: dict[str, Any] = {**model.attrs, PREDICTION_ID: rec.prediction_id, BATCH_SIZE: len(rows)}
    if rec.route:
        attrs[HTTP_ROUTE] = rec.route
    first = outputs[0] if outputs else None
    if first:
        for name, value in first.items():
            if isinstance(value, (int, float, str, bool)):
                attrs[f"{PREDICTION}.{name}" if len(first) > 1 else PREDICTION] = value
    allowed = model.registry.config.trace_features
    if allowed and rows and isinstance(rows[0], Mapping):
        for name in allowed:
            value = rows[0].get(name)
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

