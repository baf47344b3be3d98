"""What an explanation costs a request, and what explanations cost other requests.

    python benchmarks/explain.py

1. Added latency of an explained request (5 rounds of 80 sequential requests of each kind,
   alternating: not explained, explained by mlmon, and a route whose endpoint calls the same
   explainer itself; per round the medians, and mlmon's added latency over the endpoint's) for a
   100-tree random forest, gradient boosting, XGBoost and logistic regression on 20 features.
   Direct ASGI calls into a FastAPI app; mlmon runs the explanation in a worker process, or in a
   thread of the serving process for XGBoost's native contributions.
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
from mlmon_middleware.explain_worker import build_explainer

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

    direct = build_explainer("auto", model, X[:100])  # the same explainer, called in the endpoint

    @app.post("/direct")
    async def predict_and_explain(row: dict) -> dict:
        values = np.array([[row[f] for f in FEATURES]])
        base, contributions, _ = direct(values)
        return {"prediction": float(model.predict_proba(values)[0, 1]), "base": float(base[0]),
                "contributions": contributions[0].tolist()}

    instrument_app(app, registry=mon)
    mon.current_context()  # start: the workers warm up
    assert mon.model("m").explainer.warm.wait(120)
    return app, mon


async def timed(client, method, path, **kwargs) -> float:
    start = time.perf_counter()
    response = await client.request(method, path, **kwargs)
    response.raise_for_status()
    return time.perf_counter() - start


async def added_latency(app, rounds: int) -> list[tuple[float, float, float]]:
    """Per round: the median latency of a plain predict, of one mlmon explains, and of one whose
    endpoint calls the explainer itself (the three alternate request by request)."""
    out = []
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://b") as client:
        for _ in range(rounds):
            plain, explained, direct = [], [], []
            for _ in range(80):
                plain.append(await timed(client, "POST", "/predict", json=ROW, headers={"X-MLMon-Explain": "false"}))
                explained.append(await timed(client, "POST", "/predict", json=ROW, headers={"X-MLMon-Explain": "true"}))
                direct.append(await timed(client, "POST", "/direct", json=ROW))
            out.append((statistics.median(plain), statistics.median(explained), statistics.median(direct)))
    return out


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
    print("| model | request, not explained | explained by mlmon | added | explainer called in the endpoint: added "
          "| mlmon / in the endpoint, per round (median; min–max) | where mlmon runs it |\n|---|---:|---:|---:|---:|---:|---|")
    for name, model in models.items():
        app, mon = app_for(model)
        rounds = asyncio.run(added_latency(app, 5))
        plain, explained, direct = (statistics.median(r[i] for r in rounds) for i in range(3))
        ratios = [(e - p) / (d - p) for p, e, d in rounds]
        where = "threads" if mon.model("m").explainer.in_threads else "worker process"
        print(f"| {name} | {plain * 1e3:.2f} ms | {explained * 1e3:.2f} ms | {(explained - plain) * 1e3:+.2f} ms "
              f"| {(direct - plain) * 1e3:+.2f} ms | {statistics.median(ratios):.2f}; {min(ratios):.2f}–{max(ratios):.2f} "
              f"| {where} |")
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
