"""Ingestion: a batch of one model's records turned into counts, timings, rows, log rows and spans.

The :class:`~mlmon_middleware.pipeline.Pipeline` thread calls :func:`ingest` with the records
it drained, grouped by model. Data flows one way: the records are read
(:mod:`~mlmon_middleware.batch_read`: payloads resolved into feature and prediction rows, log
rows and spans built), then the batch's counts and timings go to telemetry once, its log rows
to the log writer, and its rows into the model's windows and fleet bins in arrival order:
encoded :data:`UNPAUSED_ROW_CELLS` values at a time (rows; :data:`ROW_CELLS` when ``pace``
pauses) or :data:`TABLE_CELLS` (batches in columns), written :data:`STORE_CELLS` at a time.
``pace`` is called between these small pieces of work (see :mod:`~mlmon_middleware.pacing`), so
the serving thread never waits long for the GIL however large the batch. A row that cannot be
encoded is counted (``mlmon_capture_errors_total{reason}``) and skipped; the batch goes on.

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
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from mlmon_middleware.batch_read import READ_RECORDS, BatchRead, failed, read_plain, read_records
from mlmon_middleware.columns import Batch, Columns, Outputs
from mlmon_middleware.histograms import Exemplar
from mlmon_middleware.instruments import ERROR_TYPE, HTTP_ROUTE, HTTP_STATUS
from mlmon_middleware.limits import MAX_NAME_CHARS, OVERSIZED
from mlmon_middleware.log_rows import NS
from mlmon_middleware.model import ModelMonitor, Record
from mlmon_middleware.pacing import no_pace
from mlmon_middleware.reservoir import SlidingWindow
from mlmon_middleware.schema import Encoded, FeatureSchema, admissible_name
from mlmon_middleware.store_writer import StoreWriter
from mlmon_middleware.telemetry import Telemetry

#: feature values encoded into the windows at a time (tens of µs of work between two pace points):
#: of rows (dicts or lists, value by value), and of batches in columns (a few numpy calls per column)
ROW_CELLS = 512
#: of rows when the pace points do not pause (a short switch interval hands the GIL over within
#: any stretch): each encoding has a fixed cost, and four times fewer of them is a seventh less
#: of the pipeline's work a record (22 features)
UNPAUSED_ROW_CELLS = 2048
TABLE_CELLS = 16_384
STORE_CELLS = 16_384  # encoded values written into the windows at a time


def ingest(model: ModelMonitor, records: list[Record], telemetry: Telemetry, writer: StoreWriter | None,
           pace: Callable[[], None] = no_pace, row_cells: int = UNPAUSED_ROW_CELLS) -> bool:
    """Turn a batch of one model's records into counts, timings, rows, log rows and spans,
    calling ``pace`` between small pieces of the work (see the module docstring), rows encoded
    ``row_cells`` values at a time (:data:`ROW_CELLS` when ``pace`` pauses). True when the
    batch held input over a capture bound (:data:`~mlmon_middleware.limits.OVERSIZED`)."""
    read = BatchRead()
    plain = telemetry.tracer is None  # a span per record is made record by record
    for start in range(0, len(records), READ_RECORDS):
        chunk = records[start:start + READ_RECORDS]
        if not (plain and read_plain(model, chunk, writer, read)):
            read_records(model, chunk, telemetry, writer, pace, read)
        pace()
    capture, counts = read.capture, read.counts
    attrs = model.attrs
    for (route, status, error_type), values in read.durations.items():
        labels: dict[str, Any] = {**attrs, HTTP_ROUTE: route, HTTP_STATUS: status or (500 if error_type else 200)}
        if error_type:
            labels[ERROR_TYPE] = error_type
        telemetry.inference_duration.observe(np.array(values) * NS, labels, read.traced.get((route, status, error_type)))
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
            _windows(model, (rows, outputs), rows[start:end], outputs[start:end], times[start:end], capture,
                     read.messages, pending, pace)
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


def _windows(model: ModelMonitor, segment: tuple[Batch, Outputs], rows: Batch, outputs: Outputs, times: np.ndarray,
             capture: collections.Counter[str], messages: dict[str, str], pending: _Pending,
             pace: Callable[[], None] = no_pace) -> None:
    """Encode rows (a slice of ``segment``'s) for the model's feature and prediction windows.
    Schemas not known yet are inferred from the whole segment, not from the slice: a feature
    missing from the first rows of a batch and present later gets the kind of its first value
    however small the slices (they are smaller when the pipeline pauses). When the rows cannot
    be encoded at once, they go in one by one (each its own schema source) and the ones that
    cannot are counted (``unencodable``): one bad row never costs the others their place."""
    try:
        _encode(model, segment, rows, outputs, times, capture, pending)
    except Exception:
        for i in range(len(rows)):
            one = rows[i:i + 1], outputs[i:i + 1]
            try:
                _encode(model, one, *one, times[i:i + 1], capture, pending)
            except Exception as exc:
                failed(capture, messages, "unencodable", exc)
            pace()


def _width(rows: Batch) -> int:
    """Values per row of a batch whose schema is not known yet."""
    if isinstance(rows, Columns):
        return rows.width
    first: Any = rows[0] if rows else None
    return len(first) if first is not None and hasattr(first, "__len__") else 1


def _encode(model: ModelMonitor, source: tuple[Batch, Outputs], rows: Batch, outputs: Outputs, times: np.ndarray,
            capture: collections.Counter[str], pending: _Pending) -> None:
    """Encode rows and their predictions into ``pending``: all or nothing (a failure adds nothing).
    Schemas not known yet are inferred from ``source`` (rows and outputs that hold these)."""
    config = model.registry.config
    size = config.reservoir_size
    source_rows, source_outputs = source
    schema = model.schema or FeatureSchema.infer(source_rows, names=model.declared_names, kinds=model.declared_kinds,
                                                 max_features=config.max_features)
    if model.schema is None and model.declared_names is None and isinstance(source_rows[0], Mapping):
        # the bounds an inferred schema applied to a client's field names, counted once
        first = source_rows[0]
        too_long = sum(len(str(k)) > MAX_NAME_CHARS for k in first)
        invalid = sum(not admissible_name(str(k)) for k in first) - too_long
        too_wide = len(first) - too_long - invalid - len(schema.names)
        for reason, n in (("name_too_long", too_long), ("invalid_text", invalid), ("too_wide", too_wide)):
            if n > 0:
                capture[reason] += n
    encoded = schema.encode(rows)
    answered, answers = _answers(outputs)
    output_schema = model.output_schema
    out = None
    if len(answers):
        if output_schema is None:
            source_answers = _answers(source_outputs)[1]
            output_schema = FeatureSchema.infer(source_answers, max_features=config.max_features)
            answer = None if isinstance(source_answers, Columns) or not len(source_answers) else source_answers[0]
            if isinstance(answer, Mapping) and len(answer) > len(output_schema.names):
                # outputs beyond max_features, counted once (they are logged, not judged)
                capture["prediction_too_wide"] += len(answer) - len(output_schema.names)
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


def _answers(outputs: Outputs) -> tuple[Any, Batch]:
    """The rows with a prediction (every one of an array answer) and their predictions."""
    if isinstance(outputs, Columns):
        return slice(None), outputs
    answered = [i for i, o in enumerate(outputs) if o is not None]
    return answered, [outputs[i] for i in answered]


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


