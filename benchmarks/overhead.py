"""What monitoring costs a request, against bare FastAPI and two peers, in one process and one run.

    python benchmarks/overhead.py [asgi|http|memory|all] [--rounds 7] [--requests 3000]

asgi    the same trivial JSON predict endpoint as bare FastAPI; with ``@monitor`` +
        ``instrument_app`` (tracing off, then on); with OpenTelemetry's ``FastAPIInstrumentor``;
        with ``prometheus-fastapi-instrumentator``. Driven by direct ASGI calls (no network),
        interleaved round by round; prints the median µs per request and the µs added to bare.
        mlmon's rows count all its work: the background pipeline runs as in service and each
        round ends with a timed flush (same process, same GIL). The "(request path only)" rows
        leave the pipeline's work out, to show what a request itself waits for.
http    bare vs monitored app in real uvicorn processes on 127.0.0.1, loaded by ``wrk`` (Debian's
        package) from a second process for a bounded time; prints requests/s and the ratio.
memory  RSS of a process after 10,000 and after 1,000,000 monitored calls.
"""


import argparse
import asyncio
import contextlib
import gc
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator, Sequence
from typing import IO

BODY = b'{"amount": 120.5, "age": 41, "country": "fr", "channel": "web"}'
# the realistic endpoint of benchmarks/tail.py (BENCH_FEATURES=22): 18 numbers and 4 categories
WIDE_FIELDS = {"amount": 120.5, **{f"x{i}": round(0.37 * i, 2) for i in range(1, 18)},
               "country": "fr", "channel": "web", "device": "ios", "plan": "pro"}


def tracer_provider():
    """An OpenTelemetry TracerProvider whose spans are batched, then thrown away (no exporter I/O)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Discard(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Discard()))
    return provider


def with_otel(app):
    """``app`` instrumented by OpenTelemetry's FastAPIInstrumentor; returns its TracerProvider."""
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.sdk.metrics import MeterProvider

    provider = tracer_provider()
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider, meter_provider=MeterProvider())
    return provider


def with_prometheus(app) -> None:
    """``app`` instrumented by prometheus-fastapi-instrumentator, on a registry of its own."""
    from prometheus_client import CollectorRegistry
    from prometheus_fastapi_instrumentator import Instrumentator

    Instrumentator(registry=CollectorRegistry()).instrument(app)


def build_apps() -> dict[str, tuple[object, object]]:
    """name -> (ASGI app, Monitor or None) for every variant, each its own FastAPI instance."""
    from fastapi import FastAPI
    from pydantic import BaseModel

    from mlmon_fastapi import instrument_app
    from mlmon_middleware import Monitor, MonitorConfig, monitor

    class Tx(BaseModel):
        amount: float
        age: int
        country: str
        channel: str

    def app_with(decorate=lambda f: f) -> FastAPI:
        app = FastAPI()

        @app.post("/predict")
        @decorate
        async def predict(tx: Tx) -> dict:
            return {"prediction": 0.42 if tx.amount > 100 else 0.1}

        return app

    apps: dict[str, tuple[object, object]] = {"bare FastAPI": (app_with(), None)}
    for label, tracing in (("mlmon, tracing off", False), ("mlmon, tracing on", True)):
        for suffix, deferred in (("", {}), (" (request path only)", {"flush_interval": 3600, "flush_batch": 10**6})):
            # "request path only": the pipeline waits for the untimed flush after each round;
            # otherwise it runs as in service (every 0.5 s or flush_batch records) and the round ends
            # with a timed flush, so its whole cost is counted.
            mon = Monitor(MonitorConfig(tracing=tracing, tracer_provider=tracer_provider() if tracing else None,
                                        service_name="bench", **deferred))
            app = app_with(monitor(model="bench", version="1", registry=mon))
            instrument_app(app, registry=mon)
            apps[label + suffix] = (app, mon)

    app = app_with()
    with_otel(app)
    apps["OTel FastAPIInstrumentor"] = (app, None)
    app = app_with()
    with_prometheus(app)
    apps["prometheus-fastapi-instrumentator"] = (app, None)
    return apps


async def drive(app, n: int, body: bytes = BODY, latencies: list[int] | None = None) -> None:
    """``n`` POST /predict calls of ``body`` straight into the ASGI app, checking each answer;
    with ``latencies``, each call's duration (ns) is appended to it."""
    scope_base = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                  "scheme": "http", "path": "/predict", "raw_path": b"/predict", "query_string": b"",
                  "root_path": "", "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5000),
                  "headers": [(b"host", b"bench"), (b"content-type", b"application/json"),
                              (b"content-length", str(len(body)).encode())]}
    status = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            status.append(message["status"])

    clock = time.perf_counter_ns
    for _ in range(n):
        start = clock()
        await app(dict(scope_base), receive, send)
        if latencies is not None:
            latencies.append(clock() - start)
    if status.count(200) != n:
        raise RuntimeError(f"unexpected statuses: {set(status)}")


def bench_asgi(rounds: int, requests: int) -> list[dict]:
    apps = build_apps()
    loop = asyncio.new_event_loop()
    for app, _ in apps.values():  # warm up: imports, pydantic schemas, first-use paths
        loop.run_until_complete(drive(app, 500))
    for _, mon in apps.values():
        if mon is not None:
            mon.flush()
    times: dict[str, list[float]] = {k: [] for k in apps}
    for _ in range(rounds):
        for name, (app, mon) in apps.items():
            gc.collect()
            start = time.perf_counter()
            loop.run_until_complete(drive(app, requests))
            if mon is not None and not name.endswith("(request path only)"):
                mon.flush()  # what the pipeline had not yet done of this round's requests
            times[name].append((time.perf_counter() - start) / requests * 1e6)
            if mon is not None:
                mon.flush()
    for _, mon in apps.values():
        if mon is not None:
            mon.shutdown()
    bare = statistics.median(times["bare FastAPI"])
    return [{"variant": name, "us_per_request": statistics.median(t), "added_us": statistics.median(t) - bare}
            for name, t in times.items()]


def print_asgi(rows: list[dict]) -> None:
    print("| variant (direct ASGI calls) | µs/request (median of rounds) | added vs bare |")
    print("|---|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {r['us_per_request']:.1f} | {r['added_us']:+.1f} |")
    by = {r["variant"]: r["added_us"] for r in rows}
    off, on = by["mlmon, tracing off"], by["mlmon, tracing on"]
    fai, pfi = by["OTel FastAPIInstrumentor"], by["prometheus-fastapi-instrumentator"]
    print(f"\nmlmon adds {off:.1f} µs (tracing off) and {on:.1f} µs (tracing on), all work included; "
          f"that is {off / fai:.3f}× / {on / fai:.3f}× what FastAPIInstrumentor adds and "
          f"{off / pfi:.2f}× / {on / pfi:.2f}× what prometheus-fastapi-instrumentator adds")


# ------------------------------------------------------------------------------------------ http
# the trivial endpoint, or (BENCH_MODEL_US, used by fleet.py) a sync one that first computes for
# about that many µs (a fixed amount of Python work), as a small scikit-learn model would (in the
# threadpool, as FastAPI runs sync endpoints);
# BENCH_FEATURES=22 reads WIDE_FIELDS instead of BODY's four fields
SERVICE = textwrap.dedent('''
    import os
    import time
    from fastapi import FastAPI
    from pydantic import BaseModel, create_model

    class Tx(BaseModel):
        amount: float
        age: int
        country: str
        channel: str

    if os.environ.get("BENCH_FEATURES") == "22":
        Tx = create_model("Tx", amount=(float, ...), **{f"x{i}": (float, ...) for i in range(1, 18)},
                          country=(str, ...), channel=(str, ...), device=(str, ...), plan=(str, ...))

    app = FastAPI()
    monitored = os.environ["BENCH_MONITORED"] == "1"
    # a fixed amount of work, not of time: 37 iterations of the loop below took 1 µs of CPU on
    # the project's VM (2026-12-07); a spin on the clock did less work in a thread that lost the
    # GIL meanwhile (more often under mlmon's short switch interval), and a spin on the thread's
    # CPU clock spent most of its time in the kernel (that clock is read by a system call)
    spend = int(float(os.environ.get("BENCH_MODEL_US", "0")) * 37)
    if monitored:
        from mlmon_fastapi import instrument_app
        from mlmon_middleware import monitor
        decorate = monitor(model="bench", version="1")
    elif os.environ.get("BENCH_FLOOR") == "1":
        # the floor: the least any in-process monitor does on the request path (a pass-through
        # ASGI middleware that sees the status, a decorator that times the call and keeps its
        # input and result), and no work after it: what no Python monitor can get below
        import collections
        import functools
        import inspect
        kept = collections.deque(maxlen=10_000)

        def decorate(fn):
            if inspect.iscoroutinefunction(fn):
                @functools.wraps(fn)
                async def timed(tx):
                    start = time.perf_counter_ns()
                    result = await fn(tx)
                    kept.append((tx.__dict__, result, time.perf_counter_ns() - start))
                    return result
                return timed

            @functools.wraps(fn)
            def timed_sync(tx):
                start = time.perf_counter_ns()
                result = fn(tx)
                kept.append((tx.__dict__, result, time.perf_counter_ns() - start))
                return result
            return timed_sync

        class SeesStatus:
            def __init__(self, app):
                self.app = app

            async def __call__(self, scope, receive, send):
                if scope["type"] != "http":
                    return await self.app(scope, receive, send)
                statuses = []

                async def seen(message):
                    if message["type"] == "http.response.start":
                        statuses.append(message["status"])
                    await send(message)

                await self.app(scope, receive, seen)
                kept.append(statuses)

        app.add_middleware(SeesStatus)
    else:
        decorate = lambda f: f

    if spend:
        @app.post("/predict")
        @decorate
        def predict(tx: Tx) -> dict:
            x = 0
            for i in range(spend):
                x += i * i
            return {"prediction": 0.42 if tx.amount > 100 else 0.1}
    else:
        @app.post("/predict")
        @decorate
        async def predict(tx: Tx) -> dict:
            return {"prediction": 0.42 if tx.amount > 100 else 0.1}

    if monitored:
        instrument_app(app)
        if os.environ.get("BENCH_REQUEST_PATH_ONLY") == "1":
            # the request path alone (tail.py http): records are made and handed to the queue,
            # which drops them, so no pipeline work follows
            from mlmon_middleware import Monitor
            Monitor.get().pipeline.submit = lambda record: True
        elif os.environ.get("BENCH_NO_INGEST") == "1":
            # the pipeline without its ingestion (tail.py http): records are queued, and the
            # thread drains them every flush_batch records as usual, then drops each batch
            import mlmon_middleware.pipeline
            mlmon_middleware.pipeline.ingest = lambda *args, **kwargs: False

    if os.environ.get("BENCH_GC_STATS") == "1":
        # tail.py gc: each collection's thread, generation and duration, read (and reset) at /bench/gc
        import gc
        import threading
        seen = {}
        began = [0.0]

        def timed(phase, info):
            if phase == "start":
                began[0] = time.perf_counter()
                return
            spent = time.perf_counter() - began[0]
            key = f"{threading.current_thread().name}:{info['generation']}"
            n, total, longest = seen.get(key, (0, 0.0, 0.0))
            seen[key] = (n + 1, total + spent, max(longest, spent))

        gc.callbacks.append(timed)

        @app.get("/bench/gc")
        def collections_seen() -> dict:
            got = {key: list(value) for key, value in seen.items()}
            seen.clear()
            return got
''')

def wrk_script(body: bytes) -> str:
    """wrk's Lua script posting ``body`` as JSON."""
    return f'wrk.method = "POST"\nwrk.body = \'{body.decode()}\'\nwrk.headers["Content-Type"] = "application/json"\n'


WRK_SCRIPT = wrk_script(BODY)


@contextlib.contextmanager
def service_folder(script: str = WRK_SCRIPT, prefix: str = "mlmon-bench-") -> Iterator[tuple[str, str]]:
    """A folder of this run's own holding ``SERVICE`` as ``bench_service.py`` (uvicorn's
    ``--app-dir``) and wrk's Lua ``script`` as ``post.lua``; yields the folder and the
    script's path, and removes the folder afterwards. Two runs at once must not share a
    service file: one run's would replace the other's."""
    workdir = tempfile.mkdtemp(prefix=prefix)
    try:
        with open(os.path.join(workdir, "bench_service.py"), "w") as fh:
            fh.write(SERVICE)
        script_path = os.path.join(workdir, "post.lua")
        with open(script_path, "w") as fh:
            fh.write(script)
        yield workdir, script_path
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pin(cpu: int) -> list[str]:
    """Run the server on one core and wrk on another, when the machine has two: less noise."""
    return ["taskset", "-c", str(cpu)] if shutil.which("taskset") and (os.cpu_count() or 1) >= 2 else []


def start(workdir: str, workers: int, monitored: bool, extra: dict[str, str], wrap: Sequence[str] = (),
          stderr: IO[str] | None = None, timeout: float = 60) -> tuple[subprocess.Popen, int]:
    """uvicorn serving ``workdir``'s ``bench_service`` (bare or ``monitored``, tracing off, the
    ``extra`` environment) with ``workers`` workers on core 0, run by ``wrap`` when given (say,
    valgrind), its stderr to ``stderr``; returns once it listens (or after ``timeout`` s).

    The server runs in ``workdir``: ``python -m`` puts its working directory first on the
    path, and run from the project's root it would import the library from there, ahead of a
    ``PYTHONPATH`` that names another revision's (``instructions.py --before``)."""
    port = free_port()
    env = {**os.environ, "BENCH_MONITORED": "1" if monitored else "0", "MLMON_TRACING": "off", **extra}
    command = [*pin(0), *wrap, sys.executable, "-m", "uvicorn", "bench_service:app", "--app-dir", workdir,
               "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log"]
    proc = subprocess.Popen(command + (["--workers", str(workers)] if workers > 1 else []), env=env, stderr=stderr,
                            cwd=workdir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    time.sleep(1.0 if workers > 1 else 0.0)  # every worker listening
    return proc, port


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def bench_http(seconds: int, rounds: int) -> list[dict]:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("the http benchmark needs wrk: apt-get install wrk")
    results: dict[str, list[float]] = {"bare": [], "monitored": []}
    with service_folder(prefix="mlmon-overhead-") as (workdir, script):
        for _ in range(rounds):
            for label in ("bare", "monitored"):
                proc, port = start(workdir, 1, label == "monitored", {})
                try:
                    url = f"http://127.0.0.1:{port}/predict"
                    subprocess.run([*pin(1), wrk, "-t1", "-c16", "-d2s", "-s", script, url],
                                   capture_output=True, check=True)  # warm-up
                    out = subprocess.run([*pin(1), wrk, "-t1", "-c16", f"-d{seconds}s", "-s", script, url],
                                         capture_output=True, text=True, check=True).stdout
                    if "Non-2xx" in out:
                        raise RuntimeError(out)
                    results[label].append(float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)))
                finally:
                    stop(proc)
    return [{"variant": k, "rps": statistics.median(v), "runs": v} for k, v in results.items()]


# ---------------------------------------------------------------------------------------- memory
def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def bench_memory(total: int) -> dict:
    from mlmon_middleware import Monitor, MonitorConfig, monitor

    mon = Monitor(MonitorConfig(tracing=False))
    countries = ("fr", "de", "es", "it", "pl")

    @monitor(model="mem", version="1", registry=mon)
    def predict(row: dict) -> dict:
        return {"prediction": row["amount"] / 1000}

    marks = {}
    for i in range(1, total + 1):
        predict({"amount": float(i % 997), "age": i % 90, "country": countries[i % 5]})
        if i % 5_000 == 0:
            # A loop of bare calls outruns any server by far (and the pipeline thread, which waits
            # for the GIL): drain here so that every call is analysed, as in service.
            mon.flush()
        if i in (10_000, total):
            gc.collect()
            marks[i] = rss_mb()
    mon.flush()
    health = mon.health()
    model = health["models"]["mem"]
    mon.shutdown()
    return {"rss_10k_mb": marks[10_000], "rss_total_mb": marks[total], "calls": total,
            "predictions_ok": model["predictions"]["ok"], "rows_in_window": model["rows_in_window"],
            "dropped": health["monitor_errors"].get("queue_full", 0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", default="all", choices=["asgi", "http", "memory", "all"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=2000,
                        help="per round (asgi)")
    parser.add_argument("--seconds", type=int, default=8, help="wrk duration per run (http)")
    parser.add_argument("--http-rounds", type=int, default=5, help="bare/monitored pairs, alternated (http)")
    parser.add_argument("--calls", type=int, default=1_000_000, help="monitored calls (memory)")
    args = parser.parse_args()
    print(f"# {time.strftime('%Y-%m-%d')} on {platform.node()}: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}\n")
    if args.what in ("asgi", "all"):
        print_asgi(bench_asgi(args.rounds, args.requests))
    if args.what in ("http", "all"):
        rows = bench_http(args.seconds, args.http_rounds)
        by = {r["variant"]: r["rps"] for r in rows}
        print(f"\n| uvicorn on 127.0.0.1 {'(core 0), wrk (core 1)' if pin(0) else ''} -t1 -c16 | requests/s (median) | runs |"
              "\n|---|---:|---|")
        for r in rows:
            print(f"| {r['variant']} | {r['rps']:.0f} | {', '.join(f'{v:.0f}' for v in r['runs'])} |")
        print(f"\nratio monitored / bare: {by['monitored'] / by['bare']:.3f}")
    if args.what in ("memory", "all"):
        m = bench_memory(args.calls)
        print(f"\nmemory: RSS {m['rss_10k_mb']:.1f} MB after 10,000 calls, {m['rss_total_mb']:.1f} MB after "
              f"{m['calls']:,} calls: {m['rss_total_mb'] - m['rss_10k_mb']:+.1f} MB "
              f"(pipeline saw {m['predictions_ok']:,} predictions, dropped {m['dropped']:,}; "
              f"window holds {m['rows_in_window']:,} rows)")


if __name__ == "__main__":
    main()
