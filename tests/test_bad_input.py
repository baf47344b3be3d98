"""Bad input never changes a response: a monitored app and an identical unmonitored one answer
byte for byte the same (but for the X-Prediction-ID header), and each problem is counted."""

import json

import pytest
from fastapi import Body, FastAPI, Request
from pydantic import BaseModel
from starlette.responses import JSONResponse
from starlette.testclient import TestClient

from mlmon_fastapi import instrument_app
from mlmon_middleware import Endpoint, monitor

FEATURES = {"amount": "numeric", "country": "categorical"}


class Tx(BaseModel):
    amount: float
    country: str


def make_app(mon=None) -> FastAPI:
    app = FastAPI()
    wrap = (lambda name: monitor(model=name, features=FEATURES, registry=mon)) if mon else (lambda name: (lambda f: f))

    @app.post("/predict")
    @wrap("typed")
    def predict(tx: Tx) -> dict:
        return {"prediction": 0.5 if tx.amount < 100 else 0.9}

    @app.post("/predict/raw")
    @wrap("raw")
    async def predict_raw(row: dict) -> dict:
        return {"prediction": 0.25, "keys": sorted(row)}

    @app.post("/predict/batch")
    @wrap("batch")
    def predict_batch(rows: list = Body()) -> list:
        return [0.5] * len(rows)

    @app.post("/score")
    async def score(request: Request) -> JSONResponse:  # captured by path, not decorated
        body = await request.body()
        return JSONResponse({"prediction": (len(body) % 7) / 7})

    if mon:
        instrument_app(app, registry=mon, endpoints=[Endpoint("/score", model="scored", features=FEATURES)],
                       metrics_path=None, health_path=None)
    return app


TEN_MB = b'{"amount": 1, "country": "' + b"x" * (10 << 20) + b'"}'
JSON = {"content-type": "application/json"}

# (path, body, headers, reason counted by mlmon or None when the framework rejects it first)
CASES = [
    ("/score", b'{"amount": 1, "country":', JSON, "invalid_json"),
    ("/score", b'{"amount": "lots", "country": "fr"}', JSON, "type_mismatch"),
    ("/score", b'{"amount": 5}', JSON, "missing_feature"),
    ("/score", b'{"amount": 5, "country": "fr", "extra": 1}', JSON, "unexpected_feature"),
    ("/score", b'{"amount": NaN, "country": "fr"}', JSON, "non_finite"),
    ("/score", b'{"amount": Infinity, "country": "fr"}', JSON, "non_finite"),
    ("/score", b"", JSON, "empty_body"),
    ("/score", TEN_MB, JSON, "too_large"),
    ("/score", b"amount,country\n1,fr", {"content-type": "text/csv"}, "not_json"),
    ("/score", b'[{"amount": 1, "country": "fr"}, [1, "fr", 3]]', JSON, "shape_mismatch"),
    ("/score", b"[]", JSON, "empty_input"),
    ("/score", b'"just a string"', JSON, "unsupported_input"),
    ("/predict/raw", b'{"amount": "lots", "country": "fr"}', JSON, "type_mismatch"),
    ("/predict/raw", b'{"amount": 5}', JSON, "missing_feature"),
    ("/predict/raw", b'{"amount": 5, "country": "fr", "extra": 1}', JSON, "unexpected_feature"),
    ("/predict/raw", b'{"amount": NaN, "country": "fr"}', JSON, "non_finite"),
    ("/predict/raw", b'{"amount": 5, "country": ["a"]}', JSON, "type_mismatch"),
    ("/predict/raw", TEN_MB, JSON, "value_truncated"),  # the decorator sees the parsed body: a 10 MB category, cut
    ("/predict/raw", b"{}", JSON, "empty_input"),
    # a lone surrogate (valid JSON, invalid Unicode): no writer downstream could hold it
    ("/score", b'{"amount": 1, "country": "fr\\udfff"}', JSON, "invalid_text"),
    ("/predict/raw", b'{"amount": 5, "country": "eu\\ud800"}', JSON, "invalid_text"),
    ("/score", b'{"amount": 5, "country": "fr", "x\\ud800": 1}', JSON, "unexpected_feature"),
    ("/predict", b'{"amount": 1, "country": "eu\\ud800"}', JSON, "invalid_text"),
    ("/predict/batch", b'[{"amount": 1, "country": "fr"}, [1, "fr"]]', JSON, "shape_mismatch"),
    ("/predict/batch", b'[[1, "fr"], [1]]', JSON, "shape_mismatch"),
    ("/predict", b'{"amount": 1, "country":', JSON, None),
    ("/predict", b'{"amount": "lots", "country": "fr"}', JSON, None),
    ("/predict", b"", JSON, None),
    ("/predict", b"amount=1", {"content-type": "application/x-www-form-urlencoded"}, None),
    ("/predict", b'{"amount": 1e999, "country": "fr"}', JSON, "non_finite"),
]


def comparable(response):
    headers = [(k, v) for k, v in response.headers.multi_items() if k != "x-prediction-id"]
    return response.status_code, headers, response.content


@pytest.mark.parametrize("path, body, headers, reason", CASES,
                         ids=[f"{c[0]}:{c[3]}:{i}" for i, c in enumerate(CASES)])
def test_bad_input_gets_the_same_response_and_is_counted(harness, path, body, headers, reason):
    with TestClient(make_app(), raise_server_exceptions=False) as bare, \
            TestClient(make_app(harness.monitor), raise_server_exceptions=False) as monitored:
        expected = bare.post(path, content=body, headers=headers)
        got = monitored.post(path, content=body, headers=headers)
    assert comparable(got) == comparable(expected)
    counted = {attrs["reason"]: p.value for attrs, p in harness.points("mlmon.capture.errors")}
    if reason is None:
        assert counted == {}
    else:
        assert counted == {reason: 1}
    assert harness.monitor.errors.counts() == {}  # bad input is a capture error, never a monitor failure


def test_good_input_after_bad_input_is_still_recorded(harness):
    with TestClient(make_app(harness.monitor)) as client:
        client.post("/score", content=b"{", headers=JSON)
        response = client.post("/score", content=json.dumps({"amount": 3, "country": "fr"}), headers=JSON)
    assert len(response.headers["x-prediction-id"]) == 32
    harness.monitor.flush()
    assert harness.monitor.model("scored").health()["rows_in_window"] == 1
