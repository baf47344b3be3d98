"""MLMonitorMiddleware on raw ASGI apps: pass-through, tees, limits, latency, state."""

import asyncio
import copy

import orjson
import pytest

from mlmon_middleware import Endpoint, MLMonitorMiddleware

JSON = [(b"content-type", b"application/json")]


def run(app, scope, chunks=(b"",)):
    """Call an ASGI app with the request body in ``chunks``; return the messages it sent."""
    sent = []
    pending = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

    async def receive():
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message):
        sent.append(copy.deepcopy(message))

    asyncio.run(app(scope, receive, send))
    return sent


def http_scope(path="/predict", method="POST", headers=JSON):
    return {"type": "http", "method": method, "path": path, "headers": list(headers)}


def echo_app(response_chunks=(b'{"prediction": 0.5}',), status=200, delay=0.0, content_type=b"application/json"):
    """Reads the whole body, answers with ``response_chunks`` (streamed), records what it read."""
    seen = {}

    async def app(scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        seen["body"] = body
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", content_type)]})
        for i, chunk in enumerate(response_chunks):
            await asyncio.sleep(delay)
            await send({"type": "http.response.body", "body": chunk, "more_body": i < len(response_chunks) - 1})

    app.seen = seen
    return app


def test_unmonitored_paths_pass_through_unchanged(harness):
    app = echo_app((b"a", b"b", b"c"))
    bare = run(app, http_scope("/other"), [b"x", b"y"])
    wrapped = run(MLMonitorMiddleware(app, registry=harness.monitor, endpoints=[Endpoint("/predict", "m")]),
                  http_scope("/other"), [b"x", b"y"])
    assert wrapped == bare and app.seen["body"] == b"xy"
    assert harness.total("mlmon.predictions") == 0


def test_websocket_and_lifespan_go_straight_to_the_app(harness):
    """Websockets reach the app untouched; lifespan messages too, in order and unchanged, except
    that monitoring is shut down before the server hears the app's shutdown is complete."""
    calls = []

    async def app(scope, receive, send):
        calls.append((scope["type"], receive, send))
        if scope["type"] == "lifespan":
            for expected, answer in (("lifespan.startup", "lifespan.startup.complete"),
                                     ("lifespan.shutdown", "lifespan.shutdown.complete")):
                assert (await receive())["type"] == expected
                await send({"type": answer})

    mw = MLMonitorMiddleware(app, registry=harness.monitor, endpoints=[Endpoint("/ws", "m", methods=("GET",))])
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent = []

    async def receive():
        return incoming.pop(0) if incoming else {}

    async def send(message):
        sent.append((message["type"], harness.monitor._started))

    for kind in ("websocket", "lifespan"):
        asyncio.run(mw({"type": kind, "path": "/ws", "method": "GET"}, receive, send))
    assert calls[0] == ("websocket", receive, send) and calls[1][:2] == ("lifespan", receive)
    assert sent == [("lifespan.startup.complete", True), ("lifespan.shutdown.complete", False)]


def test_endpoint_capture_tees_chunked_bodies_and_adds_the_header(harness):
    app = echo_app((b'{"predic', b'tion": 0.5}'))
    mw = MLMonitorMiddleware(app, registry=harness.monitor, endpoints=[Endpoint("/predict", "toy", "3")])
    sent = run(mw, http_scope(), [b'{"x": 1', b'.5, "c": "a"}'])
    assert app.seen["body"] == b'{"x": 1.5, "c": "a"}'
    start, *bodies = sent
    headers = dict(start["headers"])
    assert len(headers[b"x-prediction-id"]) == 32 and headers[b"content-type"] == b"application/json"
    assert b"".join(b["body"] for b in bodies) == b'{"prediction": 0.5}'
    assert harness.total("mlmon.predictions", outcome="ok", **{"http.route": "/predict"}) == 1
    snap = harness.monitor.model("toy").window_snapshot()
    assert snap["features"]["numeric"].tolist() == [[1.5]] and snap["outputs"]["numeric"].tolist() == [[0.5]]
    [span] = harness.finished_spans()
    assert span.attributes["mlmon.prediction.id"] == headers[b"x-prediction-id"].decode()


def test_path_templates_and_methods(harness):
    mw = MLMonitorMiddleware(echo_app(), registry=harness.monitor,
                             endpoints=[{"path": "/models/{name}/predict", "model": "t"}])
    run(mw, http_scope("/models/abc/predict"), [b'{"x": 1}'])
    run(mw, http_scope("/models/abc/predict", method="GET"), [b""])
    run(mw, http_scope("/models/abc/def/predict"), [b'{"x": 1}'])
    assert harness.total("mlmon.predictions") == 1
    assert harness.total("mlmon.predictions", **{"http.route": "/models/{name}/predict"}) == 1


def test_latency_ends_when_the_last_chunk_is_sent(harness):
    mw = MLMonitorMiddleware(echo_app((b'{"prediction":', b" 1}"), delay=0.05), registry=harness.monitor,
                             endpoints=[Endpoint("/predict", "slow")])
    run(mw, http_scope(), [b'{"x": 1}'])
    [(_, point)] = harness.points("mlmon.inference.duration")
    assert point.sum >= 0.1  # two 50 ms pauses happen before the last chunk


def test_bodies_over_the_limit_are_skipped_not_truncated(harness):
    app = echo_app()
    mw = MLMonitorMiddleware(app, registry=harness.monitor, endpoints=[Endpoint("/predict", "m")], max_body_bytes=10)
    big = [b'{"x": ', b"1" * 20, b"}"]
    sent = run(mw, http_scope(), big)
    assert app.seen["body"] == b"".join(big)
    assert sent[1]["body"] == b'{"prediction": 0.5}'
    stated = run(mw, http_scope(headers=[*JSON, (b"content-length", b"5000")]), [b'{"x": 1}'])
    assert stated[1]["body"] == b'{"prediction": 0.5}'
    assert harness.total("mlmon.capture.errors", reason="too_large") == 2
    assert harness.total("mlmon.predictions", outcome="ok") == 2


def test_only_json_is_parsed(harness):
    mw = MLMonitorMiddleware(echo_app(), registry=harness.monitor, endpoints=[Endpoint("/predict", "m")])
    run(mw, http_scope(headers=[(b"content-type", b"text/csv")]), [b"1,2,3"])
    run(mw, http_scope(headers=[(b"content-type", b"application/vnd.api+json")]), [b'{"x": 2}'])
    assert harness.total("mlmon.capture.errors", reason="not_json") == 1
    assert harness.monitor.model("m").health()["rows_in_window"] == 1


def test_app_exceptions_propagate_and_are_counted(harness):
    error = RuntimeError("model crashed")

    async def app(scope, receive, send):
        await receive()
        raise error

    mw = MLMonitorMiddleware(app, registry=harness.monitor, endpoints=[Endpoint("/predict", "m")])
    with pytest.raises(RuntimeError) as info:
        run(mw, http_scope(), [b'{"x": 1}'])
    assert info.value is error
    [(attrs, _)] = harness.points("mlmon.inference.duration")
    assert attrs["error.type"] == "RuntimeError" and attrs["http.response.status_code"] == 500
    assert harness.total("mlmon.predictions", outcome="error") == 1


def test_error_statuses_get_no_prediction_id(harness):
    mw = MLMonitorMiddleware(echo_app(status=422), registry=harness.monitor, endpoints=[Endpoint("/predict", "m")])
    start = run(mw, http_scope(), [b'{"x": 1}'])[0]
    assert b"x-prediction-id" not in dict(start["headers"])
    assert harness.total("mlmon.predictions", outcome="error") == 1
    assert harness.monitor.model("m").health()["rows_in_window"] == 0


def test_the_send_the_app_gets_is_a_coroutine_function_for_code_that_asks(harness):
    """It is a plain function returning what to await (no coroutine of ours per message), marked
    so that code asking ``asyncio.iscoroutinefunction(send)`` (asgiref's AsyncToSync) gets yes."""
    seen = []

    async def app(scope, receive, send):
        seen.append(asyncio.iscoroutinefunction(send))
        await echo_app()(scope, receive, send)

    run(MLMonitorMiddleware(app, registry=harness.monitor, endpoints=[Endpoint("/predict", "m")]), http_scope(), [b'{"x": 1}'])
    assert seen == [True]


def test_a_wsgi_app_under_asgiref_sends_without_a_warning(harness, recwarn):
    wsgi = pytest.importorskip("asgiref.wsgi")

    def application(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"prediction": 0.5}']

    mw = MLMonitorMiddleware(wsgi.WsgiToAsgi(application), registry=harness.monitor, endpoints=[Endpoint("/predict", "w")])
    scope = {**http_scope(), "query_string": b"", "root_path": "", "scheme": "http", "server": ("t", 80), "http_version": "1.1"}
    sent = run(mw, scope, [b'{"x": 1}'])
    assert sent[0]["status"] == 200 and b"x-prediction-id" in dict(sent[0]["headers"])
    assert not [w for w in recwarn if "non-async-marked" in str(w.message)]
    harness.monitor.flush()
    assert harness.total("mlmon.predictions", outcome="ok") == 1


def test_a_file_sent_by_path_completes_the_record(harness, tmp_path):
    """``http.response.pathsend`` (a server's extension: the file goes out by its path) is the
    response's last message: the record is completed after it, with the header on its start."""
    path = tmp_path / "answer.json"

    async def app(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"19")]})
        await asyncio.sleep(0.05)
        await send({"type": "http.response.pathsend", "path": str(path)})

    mw = MLMonitorMiddleware(app, registry=harness.monitor, endpoints=[Endpoint("/predict", "f")])
    sent = run(mw, http_scope(), [b'{"x": 1}'])
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.pathsend"]
    assert len(dict(sent[0]["headers"])[b"x-prediction-id"]) == 32
    [(attrs, point)] = harness.points("mlmon.inference.duration")
    assert attrs["http.response.status_code"] == 200 and point.sum >= 0.05  # it ended at the pathsend


def test_a_server_send_that_fails_on_the_last_chunk_makes_the_record_an_error(harness):
    async def failing_send(message):
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            raise OSError("the client went away")

    async def receive():
        return {"type": "http.request", "body": b'{"x": 1}', "more_body": False}

    mw = MLMonitorMiddleware(echo_app((b'{"prediction":', b" 1}")), registry=harness.monitor,
                             endpoints=[Endpoint("/predict", "m")])
    with pytest.raises(OSError):
        asyncio.run(mw(http_scope(), receive, failing_send))
    [(attrs, _)] = harness.points("mlmon.inference.duration")
    assert attrs["error.type"] == "OSError" and harness.total("mlmon.predictions", outcome="error") == 1


def test_the_responder_sets_every_field_of_the_request_state(harness):
    """It sets them itself (one call less per request): a field added to RequestState must be set there too."""
    from mlmon_middleware.capture.context import RequestState
    from mlmon_middleware.capture.responder import Responder

    mw = MLMonitorMiddleware(echo_app(), registry=harness.monitor)
    responder, plain = Responder(mw, http_scope(), None, None), RequestState(http_scope())
    for name in RequestState.__slots__:
        assert getattr(responder, name) == getattr(plain, name), name


def test_no_per_request_state_on_the_middleware(harness):
    mw = MLMonitorMiddleware(echo_app(), registry=harness.monitor, endpoints=[Endpoint("/predict", "m")])
    def state():
        return {k: (id(v), copy.copy(v) if isinstance(v, (dict, list, int)) else None) for k, v in vars(mw).items()}

    before = state()
    for _ in range(5):
        run(mw, http_scope(), [orjson.dumps({"x": 1})])
    assert state() == before


def test_on_a_starlette_app(harness):
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    async def score(request: Request) -> JSONResponse:
        row = await request.json()
        return JSONResponse({"probabilities": [0.2, 0.8] if row["x"] > 0 else [0.9, 0.1]})

    async def stream(request: Request) -> StreamingResponse:
        async def chunks():
            for part in (b"a", b"b", b"c"):
                yield part
        return StreamingResponse(chunks(), media_type="text/plain")

    app = Starlette(routes=[Route("/score", score, methods=["POST"]), Route("/stream", stream)])
    wrapped = MLMonitorMiddleware(app, registry=harness.monitor,
                                  endpoints=[Endpoint("/score", model="star", class_names=("no", "yes"))])
    with TestClient(wrapped) as client:
        assert client.post("/score", json={"x": 1.0}).json() == {"probabilities": [0.2, 0.8]}
        assert client.post("/score", json={"x": -1.0}).headers["x-prediction-id"]
        streamed = client.get("/stream")
    assert streamed.content == b"abc" and "x-prediction-id" not in streamed.headers
    values = {a["output"]: p for a, p in harness.points("mlmon.prediction.value")}
    assert values["yes"].sum == pytest.approx(0.9) and values["no"].count == 2
