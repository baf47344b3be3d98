"""What an explanation costs a request, and what explanations cost other requests.

    python benchmarks/explain.py

1. Added latency of an explained request (5 rounds of 80 sequential requests of each kind,
   alternating: not explained, explained by mlmon, and a route whose endpoint calls the same
   explainer itself; per round the medians, and mlmon's added latency over the endpoint's) for a
   100-tree random forest, gradient boosting, XGBoost and logistic regression on 20 features.
   Direct ASGI calls into a FastAPI app; mlmon runs the explanation in a worker process, or in a
   thread of the serving process for XGBoost's native contributions.
2. Plain requests (another route of the same async app) while two clients send predict requests,
   none or all of them explained (random forest, TreeSHAP in worker processes), with 1 and 2
   workers at ``nice=10`` (the default: below the serving process) and ``nice=0`` (level). Each
   configuration is its own app, built once with all its workers started; 5 rounds run them in
   turn, in a new order each round, after one round of warm-up, once on an idle host and once
   beside another process spinning on a core (a busy host, where the workers' priority
   matters). Per configuration: the plain requests' median and p99, the p99 as a ratio to the
   unexplained app's in the same round and host (median; min–max over the rounds), and the
   explained predict requests' median latency.
"""

import asyncio
import contextlib
import os
import platform
import statistics
import subprocess
import sys
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


def app_for(model, when="request", workers=1, nice=10):
    mon = Monitor(MonitorConfig(tracing=False, check_interval=0))
    app = FastAPI()

    @app.post("/predict")
    @monitor(model="m", features=FEATURES, registry=mon,
             explain=Explain(model=model, background=X[:100], when=when, deadline=5.0, max_in_flight=16,
                             workers=workers, nice=nice))
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
    service = mon.model("m").explainer
    assert service.warm.wait(120)
    # as many jobs at once as workers: the pool spawns its other workers on demand; their start-up
    # (and a worker's first job, after which it lowers its priority) is not what is measured
    for job in [service.submit(X[i]) for i in range(workers)]:
        assert not isinstance(job, str), job
        job.result(timeout=120)
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


async def plain_under_load(app) -> tuple[list[float], list[float]]:
    """The latencies of plain requests, and of the predict requests sent beside them."""
    latencies: list[float] = []
    predicts: list[float] = []
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://b") as client:
        async def plain_loop():
            for _ in range(300):
                latencies.append(await timed(client, "GET", "/plain"))
                await asyncio.sleep(0.002)

        async def predict_loop():
            for _ in range(150):
                predicts.append(await timed(client, "POST", "/predict", json=ROW))

        await asyncio.gather(plain_loop(), predict_loop(), predict_loop())
    return latencies, predicts


@contextlib.contextmanager
def busy(on: bool):
    """Another process spinning on a core at the serving process's priority (a busy host), or nothing."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if on else None
    try:
        yield
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()


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
    forest = models["random forest (100 trees)"]
    configs = {"none explained": app_for(forest, "request")}
    for workers in (1, 2):
        for nice in (10, 0):
            configs[f"all explained, {workers} worker{'s' * (workers > 1)}, nice={nice}"] = \
                app_for(forest, "always", workers=workers, nice=nice)
    hosts = ("idle", "one busy process")
    results: dict[tuple[str, str], list[tuple[list[float], list[float]]]] = {
        (host, label): [] for host in hosts for label in configs}
    labels = list(configs)
    for round_ in range(6):  # round 0 warms up (caches, the allocator) and is not counted
        for host in hosts if round_ % 2 else hosts[::-1]:
            with busy(host != "idle"):
                for label in labels[round_ % len(labels):] + labels[:round_ % len(labels)]:  # a new order each round
                    run = asyncio.run(plain_under_load(configs[label][0]))
                    if round_:
                        results[host, label].append(run)
    print("\n| host | predict traffic (random forest) | plain p50 | plain p99 | plain p99 / none explained's, per "
          "round (median; min–max) | predict p50 |\n|---|---|---:|---:|---:|---:|")
    for (host, label), runs in results.items():
        base = [statistics.quantiles(plain, n=100)[98] for plain, _ in results[host, "none explained"]]
        p99s = [statistics.quantiles(plain, n=100)[98] for plain, _ in runs]
        ratios = [p / b for p, b in zip(p99s, base)]
        plain_all = [v for plain, _ in runs for v in plain]
        predict_all = [v for _, predicts in runs for v in predicts]
        print(f"| {host} | {label} | {statistics.median(plain_all) * 1e3:.2f} ms | {statistics.median(p99s) * 1e3:.2f} ms "
              f"| {statistics.median(ratios):.2f}×; {min(ratios):.2f}–{max(ratios):.2f} "
              f"| {statistics.median(predict_all) * 1e3:.2f} ms |")
    for _, mon in configs.values():
        mon.shutdown()


if __name__ == "__main__":
    main()
