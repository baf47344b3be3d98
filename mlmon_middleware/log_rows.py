"""What the prediction log keeps of a record: its rows as JSON text, bounded.

:func:`log_rows` makes a record's log rows (batch row ``i`` gets the id
``"{prediction id}:{i}"``): the features (``log_features``, ``redact``), the prediction, the
segment values and the explanation, each as JSON text (:func:`_json`: anything JSON has no
form for as its ``str``, text that is not valid Unicode made valid, integers too long to write
as a note of their size). A row's features or prediction over ``MAX_LOGGED_CHARS`` are logged
cut (:func:`_cut`); the caller counts the cuts (:func:`count_cuts`) once it keeps the rows.
:func:`bounded_value` is how a cut row and a span hold one value.

>>> from mlmon_middleware import Monitor, MonitorConfig
>>> from mlmon_middleware.model import Record
>>> mon = Monitor(MonitorConfig(tracing=False))
>>> mm = mon.model("toy", segments=["region"])
>>> rec = Record(mm, "id1", 0, 1000, {"x": 1.5, "region": "eu"}, {"prediction": 1})
>>> cuts = []
>>> row, = log_rows(mm, rec, [rec.inputs], [rec.outputs], cuts)
>>> row.prediction_id, row.prediction, row.segments, cuts
('id1', '{"prediction":1}', '{"region":"eu"}', [])
>>> mon.shutdown()
"""

from __future__ import annotations

import itertools
import json
import math
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from mlmon_middleware.columns import Batch, Outputs
from mlmon_middleware.explain_request import shown
from mlmon_middleware.limits import MAX_LOGGED_CHARS, MAX_LOGGED_FIELDS, bounded_category, bounded_name, is_valid_text
from mlmon_middleware.model import ModelMonitor, Record
from mlmon_middleware.schema import FeatureSchema
from mlmon_middleware.store import LogRow
from mlmon_middleware.values import segment_value

NS = 1e-9  # seconds per nanosecond


def _json(value: object) -> str:
    """``value`` as JSON text, anything it holds that JSON has no form for as its ``str``.

    Keys that are not text are written as text too, but tried second: orjson's option for
    them makes every row cost 40 % more (1.18 µs against 0.85 µs on a 22-field row), and rows
    nearly always have text keys.

    Text that is not valid Unicode (a lone surrogate, from JSON's ``"\\ud800"``) is written
    with the surrogate as its escape's characters (:func:`~mlmon_middleware.limits.valid_text`),
    so that what is logged can be read back.

    >>> _json({"a": 1.5, 2: None}), _json({"big": 2**70, "tags": {1}})
    ('{"a":1.5,"2":null}', '{"big": 1180591620717411303424, "tags": "{1}"}')
    >>> orjson.loads(_json({"eu\\ud800": "x"})) == {"eu\\\\ud800": "x"}
    True
    """
    try:
        return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY, default=str).decode()
    except TypeError:
        try:
            return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS, default=str).decode()
        except TypeError:  # orjson stops at 64-bit integers, deep nesting and lone surrogates; the standard library does not
            try:
                text = json.dumps(value, default=str, ensure_ascii=False)
            except ValueError:  # an integer of more digits than Python writes as text (4,300)
                text = json.dumps(_writable(value), default=str, ensure_ascii=False)
            return text if text.isascii() or is_valid_text((text,)) else _SURROGATE.sub(_escaped, text)


def _writable(value: Any) -> Any:
    """``value`` with each integer too long for Python to write as text (more digits than
    ``sys.get_int_max_str_digits()``, 4,300 by default) replaced by a note of its size.

    >>> _writable({"n": [10**5000, 7]})
    {'n': ['<an integer of 16610 bits>', 7]}
    """
    if isinstance(value, int) and value.bit_length() * 0.30103 + 1 > (sys.get_int_max_str_digits() or math.inf):
        return _integer_note(value)
    if isinstance(value, Mapping):
        return {_writable(k): _writable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_writable(v) for v in value]
    return value


_SURROGATE = re.compile("[\ud800-\udfff]")


def _escaped(match: re.Match[str]) -> str:
    """A lone surrogate in JSON text as the text of its escape (``\\\\ud800``): read back, the
    six characters :func:`~mlmon_middleware.limits.valid_text` gives."""
    return f"\\\\u{ord(match.group()):04x}"


def log_rows(model: ModelMonitor, rec: Record, rows: Batch, outputs: Outputs, cuts: list[str]) -> list[LogRow]:
    """Prediction-log rows of one record: batch row ``i`` gets the id ``"{prediction id}:{i}"``.
    A value logged cut adds its note to ``cuts``: the caller counts them once the rows are
    kept (a batch read again record by record after a failure must not count them twice)."""
    names = _names(model, rows)
    options = model.options
    chosen_features, redact, segment_names = options.log_features, options.redact, options.segments
    when = rec.wall_ns * NS
    out = []
    for i, (row, output) in enumerate(zip(rows, outputs)):
        values: Mapping[str, Any] = row if isinstance(row, Mapping) else dict(zip(names, row))
        # no segments, no redaction (the defaults): no dict to build, the row's own dict is written
        segments = _json({name: segment_value(values.get(name)) for name in segment_names}) if segment_names else "{}"
        if chosen_features is None:
            features = None
        else:
            chosen = values if chosen_features == "all" else {n: values.get(n) for n in chosen_features}
            if redact:
                chosen = {k: ("[redacted]" if k in redact else v) for k, v in chosen.items()}
            features = _bounded_json(chosen if type(chosen) is dict else dict(chosen), cuts)
        pid = rec.prediction_id if len(rows) == 1 else f"{rec.prediction_id}:{i}"
        result = rec.explanation.result if rec.explanation is not None and i == 0 else None
        explanation = None if result is None else _json(shown(result))
        prediction = _bounded_json(output or {}, cuts)
        out.append(LogRow(pid, model.name, model.version, when, prediction, segments, features, explanation))
    return out


def _names(model: ModelMonitor, rows: Batch) -> Sequence[str]:
    """The names that rows of values by position are logged with: the schema's. In the first
    batch, read before the schema is inferred, the names inference gives these rows (the
    declared names, else ``f0``, ``f1``, ...): those the schema will have when they are the
    batch's first rows. None for rows of names, or that inference cannot read (their
    encoding counts them)."""
    if model.schema is not None:
        return model.schema.names
    if not len(rows) or isinstance(rows[0], Mapping):
        return ()
    try:
        return FeatureSchema.infer(rows, names=model.declared_names, kinds=model.declared_kinds,
                                   max_features=model.registry.config.max_features).names
    except Exception:
        return ()


def _bounded_json(value: Any, cuts: list[str]) -> str:
    """``value`` (a logged row's features or prediction) as JSON text; over ``MAX_LOGGED_CHARS``,
    cut (:func:`_cut`), with a note in ``cuts``: a client's row, or an answer echoing one, may be
    any size."""
    text = _json(value)
    if len(text) <= MAX_LOGGED_CHARS:
        return text
    cuts.append(f"a logged row of {len(text)} characters, cut")
    return _json(_cut(value) if isinstance(value, Mapping) else {"value": bounded_value(value)})


def count_cuts(model: ModelMonitor, cuts: list[str]) -> None:
    """Count the logged values that were cut (``mlmon_limit_hits_total{limit="logged_row"}``)."""
    for note in cuts:
        model.registry.limits.hit("logged_row", note)


def _cut(row: Mapping[Any, Any]) -> dict[str, Any]:
    """A row too long to log whole: its first fields (at most ``MAX_LOGGED_FIELDS``, and no more
    once ``MAX_LOGGED_CHARS`` are taken), names cut like field names, and values like category
    values (a list or an object as its JSON text, cut; a whole number past 64 bits as its text).

    >>> _cut({"text": "x" * 300, "n": 1, "v": list(range(100))})["v"][-12:]
    '…#ba32f03941'
    """
    out: dict[str, Any] = {}
    size = 0
    for name, value in itertools.islice(row.items(), MAX_LOGGED_FIELDS):
        if value is None or isinstance(value, (bool, int, float)):
            value = bounded_value(value)
        else:
            value = bounded_category(value if isinstance(value, str) else _json(value))
        key = bounded_name(str(name))
        size += len(key) + (len(value) if isinstance(value, str) else 24) + 6
        if size > MAX_LOGGED_CHARS:
            break
        out[key] = value
    return out


def bounded_value(value: Any) -> Any:
    """A value as a span attribute or a cut row holds it: text cut and made valid, a whole number
    past 64 bits as a note of its size (OTLP and orjson write 64 bits at most); other values as
    they are.

    >>> bounded_value("x" * 300)[-12:], bounded_value(2**70), bounded_value(7)
    ('…#07791d26ef', '<an integer of 71 bits>', 7)
    """
    if isinstance(value, str):
        return bounded_category(value)
    if isinstance(value, int) and not isinstance(value, bool) and not -2**63 <= value < 2**64:
        return _integer_note(value)
    return value


def _integer_note(value: int) -> str:
    """What is written in place of an integer too long to write: its size."""
    return f"<an integer of {value.bit_length()} bits>"
