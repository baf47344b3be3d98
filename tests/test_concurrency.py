"""50 concurrent clients: exact totals, no lost or double counts, unique prediction ids."""

import asyncio

import httpx
from fastapi import FastAPI

from mlmon_fastapi import instrument_app
from mlmon_middleware import monitor

CLIENTS, PER_CLIENT = 50, 20


def make_app(mon) -> FastAPI:
    app = FastAPI()

    @app.post("/sync")
    @monitor(model="sync-model", registry=mon)
    def predict_sync(row: dict) -> dict:  # runs in the thread pool: many threads at once
        return {"prediction": row["x"] * 2}

    @app.post("/async")
    @monitor(model="async-model", registry=mon)
    async def predict_async(row: dict) -> dict:  # many tasks interleaved on one loop
        await asyncio.sleep(0)
        return {"prediction": row["x"] * 3}

    instrument_app(app, registry=mon)
    return app


def test_exact_totals_under_50_concurrent_clients(harness):
    app = make_app(harness.monitor)
    ids: list[str] = []

    async def client_loop(client: httpx.AsyncClient, k: int) -> None:
        for i in range(PER_CLIENT):
            for path in ("/sync", "/async"):
                response = await client.post(path, json={"x": float(k * PER_CLIENT + i)})
                assert response.status_code == 200
                ids.append(response.headers["x-prediction-id"])

    async def main() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            await asyncio.gather(*(client_loop(client, k) for k in range(CLIENTS)))

    asyncio.run(main())
    n = CLIENTS * PER_CLIENT
    assert len(ids) == len(set(ids)) == 2 * n
    for model, path, factor in (("sync-model", "/sync", 2), ("async-model", "/async", 3)):
        labels = {"mlmon.model.name": model}
        assert harness.total("mlmon.predictions", outcome="ok", **labels, **{"http.route": path}) == n
        assert harness.total("mlmon.inference.duration", **labels) == n
        [(_, values)] = [(a, p) for a, p in harness.points("mlmon.prediction.value") if a["mlmon.model.name"] == model]
        assert values.count == n and values.sum == factor * sum(range(n))
        snap = harness.monitor.model(model).window_snapshot()
        assert sorted(snap["features"]["numeric"][:, 0]) == list(range(n))
    spans = harness.finished_spans()
    assert len(spans) == 2 * n and {s.attributes["mlmon.prediction.id"] for s in spans} == set(ids)
