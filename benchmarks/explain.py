"""What an explanation costs a request, and what explanations cost other requests.

    python benchmarks/explain.py

1. Added latency of an explained request (median over 200 sequential requests, explained minus
   not explained, same app) for a 100-tree random forest, gradient boosting, XGBoost and logistic
   regression on 20 features. Direct ASGI calls into a FastAPI app; the explanation itself runs in
   a worker process.
2. Plain requests (another route of the same async app) while predict requests run concurrently,
   with 0 %, 10 % and 100 % of them explained (random forest): median and p99 of the plain
   requests, and the ratio to 0 %.
"""

import asyncio
import os
import platform
import statistics
import time

import httpx
import numpy as np
from fastapi import FastAPI

from mlmon_fastapi import instrument_app
from mlmon_middleware import Monitor, MonitorConfig, monitor
from mlmon_middleware.explain import Explain

FEATURES = [f"f{i}" for i in range(20)]
rng = np.random.default_rng(0)
X = rng.normal(size=(3000, 20))
y = (X[:, 0] + X[:, 1] - X[:, 2] + rng.normal(0, 0.5, 3000) > 0).astype(int)
ROW = {name: float(v) for name, v in zip(FEATURES, X[0])}


def trained() -> dict:
    import xgboost
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    return {"random forest (100 trees)": RandomForestClassifier(100, max_depth=10, random_state=0).fit(X, y),
            "gradient boosting (100 trees)": GradientBoostingClassifier(random_state=0).fit(X, y),
            "XGBoost (100 trees)": xgboost.XGBClassifier(n_estimators=100, max_depth=6).fit(X, y),
            "logistic regression": LogisticRegression().fit(X, y)}


def app_for(model, when="request"):
    mon = Monitor(MonitorConfig(tracing=False, check_interval=0))
    app = FastAPI()

    @app.post("/predict")
    @monitor(model="m", features=FEATURES, registry=mon,
             explain=Explain(model=model, background=X[:100], when=when, deadline=5.0, max_in_flight=16))
    async def predict(row: dict) -> dict:
        return {"prediction": float(model.predict_proba(np.array([[row[f] for f in FEATURES]]))[0, 1])}

    @app.get("/plain")
    async def plain() -> dict:
        return {"ok": True}

    instrument_app(app, registry=mon)
    mon.current_context()  # start: the workers warm up
    assert mon.model("m").explainer.warm.wait(120)
    return app, mon


async def timed(client, method, path, **kwargs) -> float:
    start = time.perf_counter()
    response = await client.request(method, path, **kwargs)
    response.raise_for_status()
    return time.perf_counter() - start


async def added_latency(app) -> tuple[float, float]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://b") as client:
        plain, explained = [], []
        for i in range(400):
            explain = i % 2 == 1
            t = await timed(client, "POST", "/predict", json=ROW, headers={"X-MLMon-Explain": "true" if explain else "false"})
            (explained if explain else plain).append(t)
    return statistics.median(plain), statistics.median(explained)


async def plain_under_load(app) -> list[float]:
    latencies: list[float] = []
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://b") as client:
        async def plain_loop():
            for _ in range(300):
                latencies.append(await timed(client, "GET", "/plain"))
                await asyncio.sleep(0.002)

        async def predict_loop():
            for _ in range(150):
                await client.post("/predict", json=ROW)

        await asyncio.gather(plain_loop(), predict_loop(), predict_loop())
    return latencies


def main() -> None:
    print(f"# {time.strftime('%Y-%m-%d')} on {platform.node()}: {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}\n")
    models = trained()
    print("| model | request, not explained | explained | added |\n|---|---:|---:|---:|")
    for name, model in models.items():
        app, mon = app_for(model)
        plain, explained = asyncio.run(added_latency(app))
        print(f"| {name} | {plain * 1e3:.2f} ms | {explained * 1e3:.2f} ms | {(explained - plain) * 1e3:+.2f} ms |")
        mon.shutdown()
    print("\n| predict traffic explained (random forest) | plain p50 | plain p99 | p99 vs 0 % |\n|---|---:|---:|---:|")
    base_p99 = None
    for label, when in (("0 %", "request"), ("10 %", 0.1), ("100 %", "always")):
        app, mon = app_for(models["random forest (100 trees)"], when=when)
        latencies = asyncio.run(plain_under_load(app))
        p50, p99 = statistics.median(latencies), statistics.quantiles(latencies, n=100)[98]
        base_p99 = base_p99 or p99
        print(f"| {label} | {p50 * 1e3:.2f} ms | {p99 * 1e3:.2f} ms | {p99 / base_p99:.2f}× |")
        mon.shutdown()


if __name__ == "__main__":
    main()
