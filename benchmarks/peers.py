"""Every peer side by side in one run: the request path, one drift check, and how mlmon scales.

    python benchmarks/peers.py [requests|drift|scaling|all] [--rounds 9] [--quick]

Peers whose pins clash with ours run in their own interpreters, which ``make bench`` builds
(``.bench-evidently``, ``.bench-nannyml``, ``.bench-alibi``, ``.bench-whylogs``); a peer whose
interpreter is missing is skipped with a line saying so.

requests  The 22-field endpoint of ``tail.py`` (18 numbers, 4 categories; body ``WIDE_FIELDS``),
          driven by direct ASGI calls (no network), 2,000 per variant and round: bare FastAPI;
          mlmon (``@monitor`` + ``instrument_app``, tracing off, the pipeline running as in
          service); prometheus-fastapi-instrumentator; OpenTelemetry's FastAPIInstrumentor (spans
          batched, then discarded); ``bentoml.monitor`` (each request's features and prediction
          logged by BentoML's default monitor, JSON lines in a temporary folder); whylogs' rolling
          logger (each request's row logged, ``when="S", interval=60``, profiles written to a
          temporary folder). The cost counted is the process's CPU time (``time.process_time``:
          every thread) per request, each round ending with the tool's deferred work done
          (mlmon's ``flush``, OTel's ``force_flush``, whylogs' rollover), so background work
          counts. whylogs cannot be imported beside our pins, so it runs in a worker process
          started once from ``.bench-whylogs`` (this script, ``--whylogs-worker``) holding its own
          bare endpoint and its whylogs one; each round the worker runs one batch of each when its
          turn comes, in the same rotation as the in-process variants (the order shifts by one
          every round), so all variants share the machine's state round by round. The µs added by
          a tool is the median over rounds of (tool − bare of the same process, same round); the
          last column divides it by mlmon's.
drift     100 numeric features, 10,000 reference and 10,000 current rows (``drift.data``), on
          one core: mlmon's check (``drift.mlmon_check``: window snapshot, statistics, verdicts),
          scipy per feature (``drift.scipy_per_feature``), and in their own interpreters (on core
          0): Evidently's ``DataDriftPreset``, NannyML's ``UnivariateDriftCalculator`` (KS,
          Wasserstein, Jensen-Shannon; the current rows as one chunk), alibi-detect's ``KSDrift``
          (feature-wise KS, Bonferroni), whylogs (profiling the current rows, then
          ``calculate_drift_scores``). What a peer prepares from the reference alone (a fitted
          calculator, a detector, a reference profile) is built before the timing, as mlmon's
          baseline is; Evidently's report has no such step and takes both frames each time.
          Median wall-clock seconds over the rounds (at most 3 for the peers in other
          interpreters, as ``drift.py`` runs Evidently: some take seconds a run), and × mlmon.
scaling   ``scaling.py``'s tables: mlmon's cost per row × feature for features 5–500 and batches
          of 1–256 rows, checks of 1k–100k-row windows, memory for 1–100 models.

``--quick`` shrinks every size (200 requests a round; 20 features × 2,000 rows; fewer scaling
cases) for a smoke run of about a minute.
"""

import argparse
import asyncio
import functools
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from overhead import drive, with_otel, with_prometheus
from tail import WIDE_BODY, build_app, predict_app

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER_VENVS = {"evidently": ".bench-evidently", "nannyml": ".bench-nannyml", "alibi-detect": ".bench-alibi",
              "whylogs": ".bench-whylogs"}  # package -> the interpreter `make bench` builds for it
# the peers' own usage reporting, off (this machine reaches no host of theirs anyway)
NO_TELEMETRY = {"WHYLOGS_NO_ANALYTICS": "1", "NML_DISABLE_USAGE_LOGGING": "1", "BENTOML_DO_NOT_TRACK": "True",
                "DO_NOT_TRACK": "1"}
# sizes: requests per variant and round; drift's features and rows; arguments of scaling.py's functions
FULL = {"requests": 2000, "drift": (100, 10_000), "scaling requests": {}, "scaling windows": {}, "scaling models": {}}
QUICK = {"requests": 200, "drift": (20, 2_000), "scaling requests": {"features_list": (5, 22), "batches": (16,)},
         "scaling windows": {"sizes": (1_000, 10_000)}, "scaling models": {"counts": (1, 10)}}


def peer_python(package: str) -> str | None:
    """The interpreter ``make bench`` builds for ``package``, or None when it is missing."""
    python = os.path.join(ROOT, PEER_VENVS[package], "bin", "python")
    return python if os.access(python, os.X_OK) else None


def skipped(package: str) -> None:
    print(f"({package} skipped: run `make bench` to build {PEER_VENVS[package]})")


def versions() -> str:
    """The peers' versions, from the interpreters that run them."""
    pairs = [(sys.executable, p) for p in ("fastapi", "prometheus-fastapi-instrumentator",
                                            "opentelemetry-instrumentation-fastapi", "bentoml")]
    pairs += [(peer_python(p), p) for p in PEER_VENVS]
    out = []
    for python, package in pairs:
        if python is not None:
            got = subprocess.run([python, "-c", f"import importlib.metadata as m; print(m.version({package!r}))"],
                                 capture_output=True, text=True)
            out.append(f"{package} {got.stdout.strip() or '(not installed)'}")
    return ", ".join(out)


# --------------------------------------------------------------------------------------- requests
def logged_by(log):
    """A decorator for ``predict_app``'s handler passing each request's features and prediction,
    as one dict, to ``log`` (as a service calls a logging tool from its endpoint)."""
    def decorate(handler):
        @functools.wraps(handler)
        async def logged(payload):
            answer = await handler(payload)
            log({**payload.model_dump(), "prediction": answer["prediction"]})
            return answer
        return logged
    return decorate


def bentoml_log(log_dir: str):
    """One record per call with ``bentoml.monitor`` (BentoML's default monitor, files in ``log_dir``)."""
    import bentoml

    def log(row: dict) -> None:
        with bentoml.monitor("bench", monitor_class="default", monitor_options={"log_path": log_dir}) as mon:
            for name, value in row.items():
                mon.log(value, name, "prediction" if name == "prediction" else "feature",
                        "categorical" if isinstance(value, str) else "numerical")
    return log


def cpu_us(loop, app, flush, requests: int) -> float:
    """Process CPU µs per request (every thread) for ``requests`` calls, ``flush`` included."""
    gc.collect()
    start = time.process_time()
    loop.run_until_complete(drive(app, requests, WIDE_BODY))
    if flush is not None:
        flush()
    return (time.process_time() - start) / requests * 1e6


def warm_up(loop, apps: dict) -> None:
    """Imports, pydantic schemas, first-use paths, then each tool's deferred work, out of the way."""
    for app, flush in apps.values():
        loop.run_until_complete(drive(app, 500, WIDE_BODY))
        if flush is not None:
            flush()


def whylogs_worker(requests: int) -> None:
    """In ``.bench-whylogs``' interpreter: for each line read, one round of the bare endpoint and
    one of the whylogs-logged one; prints {"bare": µs, "whylogs": µs} per round."""
    import whylogs

    store = tempfile.mkdtemp(prefix="mlmon-peers-")
    rolling = whylogs.logger(mode="rolling", interval=60, when="S", base_name="bench")
    rolling.append_writer("local", base_dir=store)
    loop = asyncio.new_event_loop()
    # the rollover is what the logger's timer thread runs every interval: a round ends with one
    apps = {"bare": (predict_app("22"), None), "whylogs": (predict_app("22", logged_by(rolling.log)), rolling._do_rollover)}
    try:
        warm_up(loop, apps)
        print("ready", flush=True)
        for _ in sys.stdin:
            print(json.dumps({name: cpu_us(loop, app, flush, requests) for name, (app, flush) in apps.items()}), flush=True)
    finally:
        rolling.close()  # stops its timer thread, which would keep the process alive
        loop.close()
        shutil.rmtree(store, ignore_errors=True)


class Worker:
    """``whylogs_worker`` in its own interpreter, one round per ``round()``."""

    def __init__(self, python: str, requests: int, errors) -> None:
        self.proc = subprocess.Popen([python, os.path.abspath(__file__), "--whylogs-worker", str(requests)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, text=True)
        self.errors = errors
        self.expect("ready")

    def expect(self, what: str) -> str:
        line = self.proc.stdout.readline()
        if not line.startswith(what):
            self.errors.seek(0)
            raise RuntimeError(f"whylogs worker: {(line or self.errors.read()).strip().splitlines()[-1:]}")
        return line

    def round(self) -> dict[str, float]:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return json.loads(self.expect("{"))

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


WORKER_BARE = f"bare FastAPI (in {PEER_VENVS['whylogs']})"


def bench_requests(rounds: int, requests: int) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Per variant, its CPU µs per request in each round; and which bare each is measured against."""
    log_dir = tempfile.mkdtemp(prefix="mlmon-peers-")
    apps: dict[str, tuple[object, object]] = {"bare FastAPI": (predict_app("22"), None)}
    app, mon = build_app("22", monitored=True, store_dir=None)
    apps["mlmon (tracing off)"] = (app, mon.flush)
    app = predict_app("22")
    with_prometheus(app)
    apps["prometheus-fastapi-instrumentator"] = (app, None)
    app = predict_app("22")
    apps["OTel FastAPIInstrumentor"] = (app, with_otel(app).force_flush)
    apps["bentoml.monitor"] = (predict_app("22", logged_by(bentoml_log(log_dir))), None)
    loop = asyncio.new_event_loop()
    warm_up(loop, apps)
    order = list(apps)
    against = dict.fromkeys(apps, "bare FastAPI")
    python = peer_python("whylogs")
    worker = None
    errors = tempfile.TemporaryFile("w+")
    if python is None:
        skipped("whylogs")
    else:
        try:
            worker = Worker(python, requests, errors)
            order.append("whylogs")
            against.update({WORKER_BARE: WORKER_BARE, "whylogs rolling logger": WORKER_BARE})
        except RuntimeError as failure:
            print(f"(whylogs failed: {failure})")
    times: dict[str, list[float]] = {name: [] for name in against}
    try:
        for r in range(rounds):
            for name in order[r % len(order):] + order[:r % len(order)]:
                if name == "whylogs":
                    got = worker.round()
                    times[WORKER_BARE].append(got["bare"])
                    times["whylogs rolling logger"].append(got["whylogs"])
                else:
                    times[name].append(cpu_us(loop, *apps[name], requests))
            print(f"round {r + 1} done", file=sys.stderr)
    finally:
        if worker is not None:
            worker.close()
        errors.close()
        mon.shutdown()
        loop.close()
        shutil.rmtree(log_dir, ignore_errors=True)
    return times, against


def print_requests(times: dict[str, list[float]], against: dict[str, str], requests: int) -> None:
    per_round = {name: [a - b for a, b in zip(t, times[against[name]])] for name, t in times.items()}
    added = {name: statistics.median(d) for name, d in per_round.items()}
    ours = added["mlmon (tracing off)"]
    print(f"| variant (22-field FastAPI endpoint, direct ASGI calls, {requests:,} per round) | CPU µs/request (median) "
          "| added vs bare, µs (median; min–max over rounds) | added / mlmon's added |\n|---|---:|---:|---:|")
    for name, t in times.items():
        bare = against[name] == name
        ratio = "—" if bare or ours <= 0 else f"{added[name] / ours:.2f}"
        spread = f"{added[name]:+.1f}; {min(per_round[name]):+.1f}–{max(per_round[name]):+.1f}"
        print(f"| {name} | {statistics.median(t):.1f} | {'—' if bare else spread} | {ratio} |")


# ------------------------------------------------------------------------------------------ drift
def drift_peers() -> dict[str, tuple[str, str]]:
    """label -> (package, script) for each peer that runs in its own interpreter."""
    from drift import EVIDENTLY, peer_script

    return {
        "Evidently DataDriftPreset (both frames each time)": ("evidently", EVIDENTLY),
        "NannyML UnivariateDriftCalculator (KS, Wasserstein, JS; one chunk)": ("nannyml", peer_script("""
            import nannyml
            calculator = nannyml.UnivariateDriftCalculator(
                column_names=columns, chunk_number=1,
                continuous_methods=["kolmogorov_smirnov", "wasserstein", "jensen_shannon"])
            calculator.fit(ref)
        """, "calculator.calculate(cur)")),
        "alibi-detect KSDrift (feature-wise KS, Bonferroni)": ("alibi-detect", peer_script("""
            from alibi_detect.cd import KSDrift
            detector = KSDrift(ref.to_numpy())
        """, "detector.predict(cur.to_numpy())")),
        "whylogs (profile of the current rows, calculate_drift_scores)": ("whylogs", peer_script("""
            import whylogs
            from whylogs.viz.drift.column_drift_algorithms import calculate_drift_scores
            reference = whylogs.log(ref).view()
        """, "calculate_drift_scores(target_view=whylogs.log(cur).view(), reference_view=reference, with_thresholds=True)")),
    }


def bench_drift(rounds: int, features: int, rows: int) -> list[tuple[str, float]]:
    from drift import data, mlmon_check, run_peer, scipy_per_feature, timed

    ref, cur = data(features, rows)
    check = mlmon_check(ref, cur)
    check()
    results = [("mlmon check (KS p-values, effect sizes, PSI, JS, quality)", statistics.median(timed(check, rounds))),
               ("scipy per feature (ks_2samp, wasserstein, JS, PSI)",
                statistics.median(timed(lambda: scipy_per_feature(ref, cur), rounds)))]
    for label, (package, script) in drift_peers().items():
        python = peer_python(package)
        if python is None:
            skipped(package)
            continue
        try:
            results.append((label, statistics.median(run_peer(python, script, features, rows, min(rounds, 3)))))
        except RuntimeError as failure:
            print(f"({package} failed: {failure})")
    return results


def print_drift(results: list[tuple[str, float]], features: int, rows: int) -> None:
    ours = results[0][1]
    print(f"| {features} features, {rows:,} + {rows:,} rows, one core | median | × mlmon |\n|---|---:|---:|")
    for label, seconds in results:
        print(f"| {label} | {seconds * 1e3:,.1f} ms | {seconds / ours:,.1f} |")


# ------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", default="all", choices=["requests", "drift", "scaling", "all"])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--whylogs-worker", type=int, metavar="REQUESTS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.update(NO_TELEMETRY)
    if args.whylogs_worker:
        return whylogs_worker(args.whylogs_worker)
    sizes = QUICK if args.quick else FULL
    command = f"python benchmarks/peers.py {args.what} --rounds {args.rounds}{' --quick' if args.quick else ''}"
    print(f"# {time.strftime('%Y-%m-%d')} on {platform.node()}: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}; `{command}`\n\npeers: {versions()}")
    if args.what in ("requests", "all"):
        print("\n## Request path\n")
        print_requests(*bench_requests(args.rounds, sizes["requests"]), sizes["requests"])
    if args.what in ("drift", "all"):
        affinity = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {0})  # one core, as drift.py; the peers' interpreters run on core 0 too
        try:
            print("\n## One drift check\n")
            print_drift(bench_drift(args.rounds, *sizes["drift"]), *sizes["drift"])
        finally:
            os.sched_setaffinity(0, affinity)
    if args.what in ("scaling", "all"):
        import scaling

        print("\n## Scaling (mlmon alone, as `python benchmarks/scaling.py` measures it)\n")
        scaling.print_requests(scaling.bench_requests(args.rounds, **sizes["scaling requests"]))
        scaling.print_windows(scaling.bench_windows(args.rounds, **sizes["scaling windows"]))
        scaling.print_models(scaling.bench_models(**sizes["scaling models"]))

if __name__ == "__main__":
    sys.exit(main())
