"""Tail latency: p50, p99 and p99.9 of monitored requests against bare ones, in one run.

    python benchmarks/tail.py [inprocess|http|gc|all] [--rounds 10] [--requests 20000] [--seconds 3] [--copies 2]
                              [--endpoints "22 features;4 fields"] [--variants "bare;mlmon;..."]

Two endpoints: the realistic one (22 features: 18 numbers and 4 categories, ``WIDE_FIELDS`` of
``overhead.py``) and ``overhead.py``'s trivial 4-field one. Four variants of each: bare
FastAPI, mlmon (tracing off), mlmon flushing every 256 records (the default before 2026-12-07),
and mlmon with the prediction log on (SQLite in a temporary folder);
under real HTTP also mlmon with the interpreter's switch interval left alone, its pipeline
sleeping between stretches instead (``MLMON_SWITCH_INTERVAL=0``), mlmon's request path alone
(``BENCH_REQUEST_PATH_ONLY=1``: each record made, then dropped at the queue), mlmon's pipeline
without its ingestion (``BENCH_NO_INGEST=1``: records queued, drained by the pipeline's thread,
then dropped: what the queue and the thread cost without the work), and the floor
(``BENCH_FLOOR=1``): a pass-through middleware that sees the status and a decorator that times
the call and keeps its input and result, with no work after it. No Python monitor inside the
process does less; its ratio to bare is how close to bare one can get.

inprocess  requests one after another by direct ASGI calls into each app, each one timed; the
           pipeline runs as in service (its own thread, default flush interval and batch), so a
           request that waits for the GIL behind it shows in the tail. Variants are interleaved
           round by round; the ratios to bare are per round (median; min–max over rounds).
http       each variant in ``--copies`` uvicorn processes (one worker each) on 127.0.0.1,
           servers on core 0 and ``wrk -t1 -c32`` on core 1 (``fleet.py``'s harness: the servers
           of an endpoint stay up and take ``--seconds``-long bursts in turn, in a new order each
           round; a variant's figure of a round is the mean over its processes): requests/s,
           p99, p99.9 and the server's CPU time per request (and its part in user space). The
           control, "bare, again", is bare once more: its ratios to bare are what the method
           cannot tell from 1. When the floor ran, each mlmon variant's requests/s is also
           given as a share of the floor's (per round): what is left above the least any
           in-process monitor does. What the pipeline costs a request, per round: the CPU of
           mlmon's background threads (pipeline, analyzer, exporters; in the same process), and
           when the request path alone ran, mlmon's user CPU less the request path's (another
           process: that also counts the serving thread slowed by the pipeline's work).

gc         the garbage collector in the served 22-feature endpoint: bare, mlmon, mlmon with
           ``freeze_startup`` off and mlmon with ``flush_batch`` 256, one server each, bursts of wrk in turn; per generation the
           collections and their time per 10,000 requests, and the longest one (a full
           collection holds the GIL: every request waits for it).

inprocess and http report the pipeline's longest stretch (``pipeline_longest_hold``): the longest
stretch of work its thread did between two pace points. With ``switch_interval=0`` that is the
longest it held the GIL; under the default short switch interval the interpreter hands the GIL
to a waiting thread inside stretches too, so it is an upper bound, and the requests' tail
(p99.9 in process) is the measure of what they wait.
"""


import argparse
import asyncio
import gc
import json
import os
import platform
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from typing import Any

from fleet import LATENCY, bench_http, print_http, run_wrk
from overhead import BODY, WIDE_FIELDS, drive, pin, service_folder, start, stop, wrk_script

WIDE_BODY = json.dumps(WIDE_FIELDS).encode()
ENDPOINTS = {"22 features": ("22", WIDE_BODY), "4 fields": ("4", BODY)}
PERCENTILES = (50, 99, 99.9)


def predict_app(features: str, decorate=lambda f: f):
    """The endpoint of ``overhead.py``'s service (``features``: "22" or "4") as a new FastAPI app,
    its handler wrapped by ``decorate``."""
    from fastapi import FastAPI
    from pydantic import BaseModel, create_model

    if features == "22":
        tx = create_model("Tx", amount=(float, ...), **{f"x{i}": (float, ...) for i in range(1, 18)},
                          country=(str, ...), channel=(str, ...), device=(str, ...), plan=(str, ...))
    else:
        tx = create_model("Tx", amount=(float, ...), age=(int, ...), country=(str, ...), channel=(str, ...))
    assert issubclass(tx, BaseModel)
    app = FastAPI()

    @app.post("/predict")
    @decorate
    async def predict(payload: tx) -> dict:  # type: ignore[valid-type]  (resolved at runtime: no postponed annotations here)
        return {"prediction": 0.42 if payload.amount > 100 else 0.1}

    return app


def build_app(features: str, monitored: bool, store_dir: str | None, **config: Any):
    """``predict_app`` in this process, with its own Monitor when ``monitored`` (``config``: more
    of its MonitorConfig)."""
    from mlmon_fastapi import instrument_app
    from mlmon_middleware import Monitor, MonitorConfig, monitor

    if not monitored:
        return predict_app(features), None
    mon = Monitor(MonitorConfig(tracing=False, service_name="bench", store_dir=store_dir, **config))
    app = predict_app(features, monitor(model="bench", version="1", registry=mon))
    instrument_app(app, registry=mon)
    mon.start()
    return app, mon


def percentile(sorted_ns: list[int], q: float) -> float:
    """The ``q``-th percentile (nearest rank) of sorted durations, in ms."""
    return sorted_ns[min(len(sorted_ns) - 1, int(len(sorted_ns) * q / 100))] / 1e6


def bench_inprocess(rounds: int, requests: int) -> dict[str, list[dict[str, float]]]:
    store = tempfile.mkdtemp(prefix="mlmon-tail-")
    apps = {}
    for endpoint, (features, body) in ENDPOINTS.items():
        for variant, monitored, log, config in (("bare", False, False, {}), ("mlmon", True, False, {}),
                                                ("mlmon, flush_batch 256", True, False, {"flush_batch": 256}),
                                                ("mlmon + log", True, True, {})):
            folder = os.path.join(store, features) if log else None  # a log of its own: no lock shared with the other
            apps[f"{endpoint}, {variant}"] = (*build_app(features, monitored, folder, **config), body)
    loop = asyncio.new_event_loop()
    results: dict[str, list[dict[str, float]]] = {name: [] for name in apps}
    try:
        for app, _, body in apps.values():  # warm up: imports, pydantic schemas, first-use paths
            loop.run_until_complete(drive(app, 1000, body))
        for r in range(rounds):
            for name, (app, mon, body) in apps.items():
                if mon is not None:
                    mon.flush()
                gc.collect()
                latencies: list[int] = []
                start = time.perf_counter()
                loop.run_until_complete(drive(app, requests, body, latencies))
                elapsed = time.perf_counter() - start
                latencies.sort()
                row = {f"p{q}": percentile(latencies, q) for q in PERCENTILES}
                row["rps"] = requests / elapsed
                if mon is not None:
                    row["hold_ms"] = mon.pipeline.longest_hold * 1000
                results[name].append(row)
            print(f"round {r + 1} done", file=sys.stderr)
    finally:
        for _, mon, _ in apps.values():
            if mon is not None:
                mon.shutdown()
        loop.close()
        shutil.rmtree(store, ignore_errors=True)
    return results


def print_inprocess(results: dict[str, list[dict[str, float]]]) -> None:
    print("| variant (direct ASGI calls, one at a time) | p50 ms | p99 ms | p99.9 ms | p99 vs bare (median; min–max) "
          "| p99.9 vs bare (median; min–max) | requests/s vs bare (median; min–max) "
          "| pipeline's longest stretch, ms |")
    print("|---|---:|---:|---:|---|---|---|---:|")
    for name, runs in results.items():
        bare = results[name.split(",")[0] + ", bare"]
        cells = [f"{statistics.median(r[f'p{q}'] for r in runs):.3f}" for q in PERCENTILES]
        spans = []
        for key in ("p99", "p99.9", "rps"):
            got = [a[key] / b[key] for a, b in zip(runs, bare)]
            spans.append("—" if runs is bare else f"{statistics.median(got):.2f}; {min(got):.2f}–{max(got):.2f}")
        hold = f"{max(r['hold_ms'] for r in runs):.3f}" if "hold_ms" in runs[0] else "—"
        print(f"| {name} | {' | '.join(cells)} | {' | '.join(spans)} | {hold} |")


def http_variants(store: str) -> dict[str, tuple[int, bool, dict[str, str], str | None]]:
    variants: dict[str, tuple[int, bool, dict[str, str], str | None]] = {}
    for endpoint, (features, _) in ENDPOINTS.items():
        env = {"BENCH_FEATURES": features}
        bare = f"{endpoint}, bare"
        variants[bare] = (1, False, env, None)
        variants[f"{endpoint}, bare, again (the control: identical to bare)"] = (1, False, env, bare)
        # the floor: a pass-through middleware and a timing decorator, no pipeline (overhead.py's SERVICE)
        variants[f"{endpoint}, floor"] = (1, False, {**env, "BENCH_FLOOR": "1"}, bare)
        variants[f"{endpoint}, mlmon"] = (1, True, env, bare)
        # the default before 2026-12-07: the pipeline ran every 256 records instead of 64
        variants[f"{endpoint}, mlmon, flush_batch 256"] = (1, True, {**env, "MLMON_FLUSH_BATCH": "256"}, bare)
        # fewer, larger batches: the pipeline's code and data are cold at each batch's start
        variants[f"{endpoint}, mlmon, flush_batch 1024"] = (1, True, {**env, "MLMON_FLUSH_BATCH": "1024"}, bare)
        # what the request path alone costs: records made, then dropped instead of queued
        variants[f"{endpoint}, mlmon, request path only"] = (1, True, {**env, "BENCH_REQUEST_PATH_ONLY": "1"}, bare)
        # the queue and the pipeline's thread without the ingestion: records drained and dropped
        variants[f"{endpoint}, mlmon, pipeline without ingest"] = (1, True, {**env, "BENCH_NO_INGEST": "1"}, bare)
        # the interpreter's switch interval left alone: the pipeline sleeps 50 µs every 50 µs of work
        variants[f"{endpoint}, mlmon, switch_interval 0"] = (1, True, {**env, "MLMON_SWITCH_INTERVAL": "0"}, bare)
        variants[f"{endpoint}, mlmon + log"] = (1, True, {**env, "MLMON_STORE_DIR": os.path.join(store, features)}, bare)
    return variants


GC_VARIANTS = {  # name -> (monitored, extra environment)
    "bare": (False, {}),
    "mlmon, freeze_startup off": (True, {"MLMON_FREEZE_STARTUP": "off"}),
    "mlmon": (True, {}),
    "mlmon, flush_batch 256": (True, {"MLMON_FLUSH_BATCH": "256"}),  # the default before 2026-12-07
}


def bench_gc(seconds: int, rounds: int) -> dict[str, dict[str, list[float]]]:
    """The garbage collector under wrk, per variant of the 22-feature endpoint: per generation,
    the collections and their time per 10,000 requests and the longest one (ms), per round.
    The servers start, are warmed up, and their counts reset; then each round sends a burst
    to each, in a new order, and reads (and resets) what the server's ``gc.callbacks`` saw."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("the gc benchmark needs wrk: apt-get install wrk")

    def seen(port: int) -> dict[str, list[float]]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/bench/gc", timeout=10) as answer:
            return json.load(answer)

    servers = {}
    results: dict[str, dict[str, list[float]]] = {name: {} for name in GC_VARIANTS}
    with service_folder(wrk_script(WIDE_BODY) + LATENCY, "mlmon-gc-") as (workdir, script):
        try:
            for name, (monitored, extra) in GC_VARIANTS.items():
                servers[name] = start(workdir, 1, monitored, {"BENCH_FEATURES": "22", "BENCH_GC_STATS": "1", **extra})
            for _, port in servers.values():
                run_wrk(wrk, script, port, 3)  # warm up (and the start-up's own collections)
                seen(port)
            order = list(servers)
            for r in range(rounds):
                random.Random(r).shuffle(order)
                for name in order:
                    port = servers[name][1]
                    requests = int(re.search(r"(\d+) requests in", run_wrk(wrk, script, port, seconds)).group(1))
                    per_generation: dict[int, list[float]] = {0: [0, 0.0, 0.0], 1: [0, 0.0, 0.0], 2: [0, 0.0, 0.0]}
                    for key, (n, total, longest) in seen(port).items():
                        got = per_generation[int(key.rsplit(":", 1)[1])]
                        got[0], got[1], got[2] = got[0] + n, got[1] + total, max(got[2], longest)
                    for generation, (n, total, longest) in per_generation.items():
                        row = results[name]
                        row.setdefault(f"gen{generation} per 10k", []).append(n / requests * 1e4)
                        row.setdefault(f"gen{generation} ms per 10k", []).append(total * 1e3 / requests * 1e4)
                        row.setdefault(f"gen{generation} longest ms", []).append(longest * 1e3)
                print(f"gc round {r + 1} done", file=sys.stderr)
        finally:
            for proc, _ in servers.values():
                stop(proc)
    return results


def print_gc(results: dict[str, dict[str, list[float]]]) -> None:
    print("| variant (22 features) | generation | collections per 10,000 requests (median; min–max) "
          "| ms of collection per 10,000 requests (median; min–max) | longest collection, ms (max) |")
    print("|---|---:|---|---|---:|")
    for name, row in results.items():
        for generation in range(3):
            cells = []
            for key in (f"gen{generation} per 10k", f"gen{generation} ms per 10k"):
                values = row[key]
                cells.append(f"{statistics.median(values):.1f}; {min(values):.1f}–{max(values):.1f}")
            print(f"| {name} | {generation} | {' | '.join(cells)} | {max(row[f'gen{generation} longest ms']):.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", default="all", choices=["inprocess", "http", "gc", "all"])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--requests", type=int, default=20_000, help="per variant and round (inprocess)")
    parser.add_argument("--seconds", type=int, default=3, help="wrk duration per burst (http)")
    parser.add_argument("--copies", type=int, default=2, help="server processes per variant (http)")
    parser.add_argument("--endpoints", default=";".join(ENDPOINTS), help="separated by ';' (http)")
    parser.add_argument("--variants", help="separated by ';', without the endpoint: 'bare;mlmon;...' (http; "
                                           "default: all)")
    args = parser.parse_args()
    endpoints = [e.strip() for e in args.endpoints.split(";")]
    kinds = list(dict.fromkeys(name.split(", ", 1)[1] for name in http_variants("")))  # the variants, per endpoint
    wanted = kinds if args.variants is None else [v.strip() for v in args.variants.split(";")]
    unknown = [e for e in endpoints if e not in ENDPOINTS] + [v for v in wanted if v not in kinds]
    if unknown or "bare" not in wanted:  # before anything runs
        parser.error(f"unknown {unknown} (and bare is needed): endpoints {list(ENDPOINTS)}, variants {kinds}")
    print(f"# {time.strftime('%Y-%m-%d')} on {platform.node()}: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}; "
          f"`python benchmarks/tail.py {' '.join(sys.argv[1:])}`\n")
    if args.what in ("inprocess", "all"):
        print_inprocess(bench_inprocess(args.rounds, args.requests))
    if args.what in ("gc", "all"):
        print(f"\nThe garbage collector: uvicorn, one worker{' on core 0, wrk on core 1' if pin(0) else ''}, "
              f"{args.seconds} s bursts\n")
        print_gc(bench_gc(args.seconds, args.rounds))
    if args.what in ("http", "all"):
        store = tempfile.mkdtemp(prefix="mlmon-tail-")
        try:
            variants = http_variants(store)
            for endpoint in endpoints:
                _, body = ENDPOINTS[endpoint]
                chosen = {f"{endpoint}, {kind}": variants[f"{endpoint}, {kind}"] for kind in kinds if kind in wanted}
                print(f"\n{endpoint}: uvicorn, one worker{' on core 0, wrk on core 1' if pin(0) else ''}")
                print_http(bench_http(args.seconds, args.rounds, chosen, body, args.copies), chosen)
        finally:
            shutil.rmtree(store, ignore_errors=True)


if __name__ == "__main__":
    main()
