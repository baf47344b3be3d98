"""One bad record never costs the good ones around it: each is counted and skipped, and every good
prediction reaches the metrics, the window and the log, and can be labelled."""

from __future__ import annotations

import tempfile

from hypothesis import given, settings
from hypothesis import strategies as st

from mlmon_middleware import Monitor, MonitorConfig
from mlmon_middleware.payload import RawBody

DEEP = b'{"a": ' * 1500 + b"1" + b"}" * 1500  # deeper than any JSON parser here goes

POISONS = {
    "huge_int": {"a": 10**400, "b": "x"},  # no float holds it
    "u64": {"a": 2**64, "b": "x"},  # a float holds it; orjson does not (the log)
    "deep_json": RawBody(DEEP, "application/json"),
    "unhashable_key_row": [{"a": 1.0, "b": "x"}, 5],  # a batch mixing a row and a scalar
}


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from(["good", *POISONS]), min_size=1, max_size=20))
def test_poison_records_never_cost_good_ones(kinds):
    mon = Monitor(MonitorConfig(tracing=True, check_interval=0, store_dir=tempfile.mkdtemp(), trace_features=("a",)))
    try:
        model = mon.model("m", features={"a": "numeric", "b": "categorical"})
        good = []
        for kind in kinds:
            if kind == "good":
                good.append(model.record({"a": 1.0, "b": "x"}, {"prediction": 0.5}))
            else:
                model.record(POISONS[kind], {"prediction": 0.5})
        mon.flush()
        health = model.health()
        assert health["predictions"] == {"ok": len(kinds), "error": 0}
        # the poison rows that still have a feature row count too: a number out of range is a missing
        # value; deep JSON is a capture error, or (where the recursion limit lets Python parse it) a
        # row whose feature has the wrong type
        least = len(good) + sum(kind in ("huge_int", "u64") for kind in kinds)
        assert least <= health["rows_in_window"] <= least + kinds.count("deep_json")
        assert mon.errors.counts() == {}  # nothing escaped to the monitor's own error count
        for pid in good:
            assert model.lookup(pid) is not None
        if good:
            assert model.record_outcomes([(pid, 1, None) for pid in good])["labelled"] == len(good)
    finally:
        mon.shutdown()
