"""What monitoring costs a request under real HTTP, in CPU instructions: a figure the VM's noise cannot move.

    python benchmarks/instructions.py [--rounds 2] [--requests 1600] [--variants "bare;floor;..."] [--before DIR]

Each variant of ``overhead.py``'s service (the 22-feature endpoint of ``tail.py``: bare FastAPI,
the floor, mlmon's request path only, mlmon, mlmon flushing every 256 records (the default
before 2026-12-07: now 64), mlmon with the prediction log) runs in one uvicorn
process (one worker, tracing off) under valgrind's cachegrind, which counts every instruction
the process executes in user space (the kernel's work, socket calls included, is not
counted). A client sends POST /predict on 8 keep-alive connections: a warm-up of 400 requests,
then ``--requests`` more; the process runs twice, once without and once with those, so start-up
and shutdown cancel out and the difference divided by ``--requests`` is the instructions a
request costs, the pipeline's work included. mlmon flushes every ``flush_batch`` records
(``MLMON_FLUSH_INTERVAL`` raised so that the timer never fires first): the batches a server under
load flushes, whatever valgrind's slowness (about 50 times).

``--before DIR``: every mlmon variant runs a second time with the library of ``DIR`` (a checkout
of an earlier revision, ``git worktree add DIR REV``: its ``mlmon_middleware`` and ``adapters``
go first on the server's ``PYTHONPATH``), in the same rounds: a before/after comparison.

Instructions are not time: a cache miss, a context switch or a sleep costs time and few
instructions, so requests/s under wrk (``tail.py http``) stays the measure of a target. But the
count is the same from one run to the next (to about 0.1 %), where the VM's speed changes by
a factor of two from hour to hour: it shows a change of a few percent that a timed run cannot
tell from noise, and where the instructions go (bare → floor → request path → pipeline → log).
Needs valgrind (Debian's ``valgrind`` package).
"""


import argparse
import http.client
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time

from overhead import WIDE_FIELDS, service_folder, start

BODY = json.dumps(WIDE_FIELDS).encode()
WARM_UP = 400
CONNECTIONS = 8
VARIANTS = {
    "bare": {"BENCH_MONITORED": "0"},
    "floor": {"BENCH_MONITORED": "0", "BENCH_FLOOR": "1"},
    "mlmon, request path only": {"BENCH_MONITORED": "1", "BENCH_REQUEST_PATH_ONLY": "1"},
    "mlmon": {"BENCH_MONITORED": "1"},
    "mlmon, flush_batch 256": {"BENCH_MONITORED": "1", "MLMON_FLUSH_BATCH": "256"},  # the default before 2026-12-07
    "mlmon + log": {"BENCH_MONITORED": "1", "MLMON_STORE_DIR": ""},  # the log in a folder of the run's own (SQLite)
}


def send(port: int, n: int) -> None:
    """``n`` POST /predict of the 22-feature body on ``CONNECTIONS`` keep-alive connections."""
    failures = []

    def one(count: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        try:
            for _ in range(count):
                connection.request("POST", "/predict", BODY, {"content-type": "application/json"})
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    failures.append(response.status)
        finally:
            connection.close()

    shares = [n // CONNECTIONS + (i < n % CONNECTIONS) for i in range(CONNECTIONS)]
    threads = [threading.Thread(target=one, args=(k,)) for k in shares]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise RuntimeError(f"unexpected statuses: {set(failures)}")


def count(workdir: str, env: dict[str, str], requests: int) -> int:
    """Instructions uvicorn executed serving the warm-up and ``requests`` more, start to exit."""
    environment = {"BENCH_FEATURES": "22", "MLMON_FLUSH_INTERVAL": "3600", "OPENBLAS_NUM_THREADS": "1",
                   "PYTHONHASHSEED": "0", **env}
    monitored = environment.pop("BENCH_MONITORED") == "1"
    valgrind = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null"]
    with tempfile.TemporaryFile("w+") as log:  # a file, not a pipe: nothing waits for us to read it
        proc, port = start(workdir, 1, monitored, environment, wrap=valgrind, stderr=log, timeout=600)
        try:
            send(port, WARM_UP)
            if requests:
                send(port, requests)
        finally:
            proc.terminate()
            proc.wait(timeout=600)
        log.seek(0)
        err = log.read()
    found = re.search(r"I\s+refs:\s+([\d,]+)", err)
    if found is None:
        raise RuntimeError(f"no instruction count in valgrind's output: {err[-2000:]}")
    return int(found.group(1).replace(",", ""))


def bench(variants: dict[str, dict[str, str]], rounds: int, requests: int) -> dict[str, list[float]]:
    """Instructions per request of each variant (name -> environment), per round (variants in a
    new order each round)."""
    names = list(variants)
    per_request: dict[str, list[float]] = {name: [] for name in names}
    with service_folder(prefix="mlmon-instructions-") as (workdir, _):
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                env = dict(variants[name])
                store = tempfile.mkdtemp(prefix="mlmon-instructions-log-") if "MLMON_STORE_DIR" in env else None
                if store is not None:
                    env["MLMON_STORE_DIR"] = store
                try:
                    without, with_requests = count(workdir, env, 0), count(workdir, env, requests)
                finally:
                    if store is not None:
                        shutil.rmtree(store, ignore_errors=True)
                per_request[name].append((with_requests - without) / requests)
                print(f"  round {r + 1}, {name}: {per_request[name][-1]:,.0f} instructions a request", file=sys.stderr)
    return per_request


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--requests", type=int, default=1600)
    parser.add_argument("--variants", default=";".join(VARIANTS), help="separated by ';', from: " + "; ".join(VARIANTS))
    parser.add_argument("--before", help="a checkout of an earlier revision: its library runs the mlmon variants too")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (Debian: apt-get install valgrind)")
    names = [n.strip() for n in args.variants.split(";")]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or "bare" not in names:
        sys.exit(f"unknown variants {unknown} (and bare is needed): choose from {list(VARIANTS)}")
    print(f"# {time.strftime('%Y-%m-%d')} on {platform.node()}: {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}; `python benchmarks/instructions.py --rounds {args.rounds} "
          f"--requests {args.requests}{f' --variants {args.variants!r}' if names != list(VARIANTS) else ''}"
          f"{' --before ' + args.before if args.before else ''}`")
    variants = {name: VARIANTS[name] for name in names}
    if args.before:
        library = os.path.abspath(args.before)
        if not os.path.isdir(os.path.join(library, "mlmon_middleware")):
            sys.exit(f"{library} holds no mlmon_middleware")
        path = os.pathsep.join([library, os.path.join(library, "adapters"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        variants.update({f"{name} (before)": {**VARIANTS[name], "PYTHONPATH": path}
                         for name in names if VARIANTS[name]["BENCH_MONITORED"] == "1"})
    rows = bench(variants, args.rounds, args.requests)
    bare = statistics.median(rows["bare"])
    print("\n| variant (uvicorn, 22 features) | instructions a request (median; min–max over rounds) "
          "| added vs bare | vs bare |")
    print("|---|---|---:|---:|")
    for name, values in rows.items():
        median = statistics.median(values)
        print(f"| {name} | {median:,.0f}; {min(values):,.0f}–{max(values):,.0f} | "
              f"{median - bare:+,.0f} | {median / bare:.3f} |")


if __name__ == "__main__":
    main()
