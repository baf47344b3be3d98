"""What sharing between workers costs: bare vs monitored under real uvicorn with 1 and 3 workers.

    python benchmarks/fleet.py [http|scrape|postgres|all] [--rounds 10] [--seconds 3] [--copies 2]
                               [--variants "1 worker, bare;1 worker, monitored;..."] [--before DIR]

http      requests/s and tail latency (p99, p99.9) of the benchmark endpoint of
          ``benchmarks/overhead.py`` in real uvicorn processes on 127.0.0.1 (server on core 0, wrk
          on core 1): bare and monitored with 1 worker; bare, monitored (the workers share: summed
          metrics, one leader) and monitored with sharing off (``MLMON_MULTIPROC_DIR=off``) with 3
          workers; the same with an endpoint that first does about 1 ms of fixed work (a small
          model). The servers compared with one bare server stay up side by side and take
          ``--seconds``-long bursts of wrk in turn, in a new order each round; each round's
          ratios are taken against the same round's bare bursts. Each variant runs as ``--copies`` servers, its figure of
          a round the mean over them, and a control ("bare, again", identical to bare) shows
          what the method cannot tell from 1. Beside requests/s and the tail, the server's CPU
          time per request (all threads and workers, from /proc), the part of it spent in
          user space (the rest is the kernel's: sockets, scheduling), and the part spent by the
          threads other than the serving ones (mlmon's pipeline, analyzer and exporters: the
          background work, measured in the process that does it); with several workers, the
          busiest process's share of the server's CPU (wrk's keep-alive connections stay with
          the worker that accepted them: on one core, often one worker serves nearly all). The
          shared/unshared pair gives the extra cost of sharing per request. ``--before DIR``
          (a checkout of an earlier revision) runs every monitored variant a second time with
          that revision's library, in the same rounds: a before/after comparison under load.
scrape    the time of a ``/metrics`` scrape through one worker: alone vs summing 3 workers.
postgres  the PostgreSQL prediction log's rows/s and labels/s against SQLite
          (``benchmarks/store.py postgres``, which starts its own PostgreSQL).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import time

from overhead import BODY, pin, service_folder, start, stop, wrk_script

HERE = os.path.dirname(os.path.abspath(__file__))
# wrk prints p50..p99 with --latency; p99.9 needs its Lua hook
LATENCY = """
done = function(summary, latency, requests)
  io.write(string.format("P99 %d\\n", latency:percentile(99.0)))
  io.write(string.format("P999 %d\\n", latency:percentile(99.9)))
end
"""
MODEL_1MS = {"BENCH_MODEL_US": "1000"}  # the endpoint computes for about 1 ms (fixed work), as a small model would
VARIANTS = {  # name -> (workers, monitored, extra environment, the bare variant it is compared with)
    "1 worker, bare": (1, False, {}, None),
    "1 worker, bare, again (the control: identical to bare)": (1, False, {}, "1 worker, bare"),
    "1 worker, monitored": (1, True, {}, "1 worker, bare"),
    "3 workers, bare": (3, False, {}, None),
    "3 workers, monitored (shared)": (3, True, {}, "3 workers, bare"),
    "3 workers, monitored (sharing off)": (3, True, {"MLMON_MULTIPROC_DIR": "off"}, "3 workers, bare"),
    "1 ms model, 1 worker, bare": (1, False, MODEL_1MS, None),
    "1 ms model, 1 worker, monitored": (1, True, MODEL_1MS, "1 ms model, 1 worker, bare"),
    "1 ms model, 3 workers, bare": (3, False, MODEL_1MS, None),
    "1 ms model, 3 workers, monitored (shared)": (3, True, MODEL_1MS, "1 ms model, 3 workers, bare"),
}
Variants = dict[str, tuple[int, bool, dict[str, str], str | None]]
def bench_http(seconds: int, rounds: int, variants: Variants = VARIANTS,
               body: bytes = BODY, copies: int = 2) -> dict[str, list[dict[str, float]]]:
    """Each variant's requests/s, p99 and p99.9 (ms) and server CPU per request (µs) per round
    under wrk; monitored variants also report the pipeline's longest stretch of work (``hold_ms``, see
    ``tail.py``).

    Each variant runs as ``copies`` server processes, and a round's figure of a variant is the
    mean over its processes: two processes of the same code differ by several per cent (memory
    layout, hash seeds: see the control variant "bare, again", identical to bare), and with one
    process per variant that difference would pass for the cost of monitoring.

    The variants compared with one bare variant (a group) run side by side: their servers all
    start first, each is warmed up, then every round sends one ``seconds``-long burst to each,
    in a new order each round. This VM's speed drifts by up to 2× within minutes: bursts of a few
    seconds, alternating between servers that stay up, put the variants of one round in the same
    state of the machine (servers restarted per run did not: bare alone varied 0.7–1.4× between
    runs). An idle server waits in ``epoll`` and costs the others nothing but its
    analyzer's periodic check."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("the http benchmark needs wrk: apt-get install wrk")
    results: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    groups: dict[str, list[str]] = {}
    for name, (_, _, _, bare) in variants.items():
        groups.setdefault(bare or name, []).append(name)
    with service_folder(wrk_script(body) + LATENCY, "mlmon-fleet-") as (workdir, script):
        for group in groups.values():
            servers: dict[tuple[str, int], tuple[subprocess.Popen, int]] = {}
            try:
                for name in group:
                    workers, monitored, extra, _ = variants[name]
                    for copy in range(copies):
                        servers[(name, copy)] = start(workdir, workers, monitored, extra)
                for _, port in servers.values():  # warm up: imports, first-use paths, full windows
                    run_wrk(wrk, script, port, 3)
                order = list(servers)
                for r in range(rounds):
                    random.Random(r).shuffle(order)  # a new order each round: no server always follows the same one
                    bursts: dict[str, list[dict[str, float]]] = {name: [] for name in group}
                    for name, copy in order:
                        bursts[name].append(_burst(wrk, script, servers[(name, copy)], seconds))
                    for name in group:  # the round's figure: the mean over the variant's processes
                        results[name].append({key: statistics.fmean(b[key] for b in bursts[name]) for key in bursts[name][0]})
                        print(f"round {r + 1} {name}: {results[name][-1]}", file=sys.stderr)
                for name in group:
                    holds = [longest_hold(port) for (each, _), (_, port) in servers.items() if each == name]
                    if variants[name][1] and None not in holds:
                        for run in results[name]:
                            run["hold_ms"] = max(holds) * 1000  # the longest over all of its servers' rounds
            finally:
                for proc, _ in servers.values():
                    stop(proc)
    return results


def _burst(wrk: str, script: str, server: tuple[subprocess.Popen, int], seconds: int) -> dict[str, float]:
    """One ``seconds``-long burst of wrk at ``server``: requests/s, p99 and p99.9 (ms), and the
    server's CPU time per request (µs): all of it, in user space, and in the threads other
    than the serving ones (mlmon's pipeline, analyzer and exporters), each a difference per
    process or per thread between a read before and one after (one that ended meanwhile is left
    out, one that began counts from zero); and the busiest process's share of that CPU."""
    proc, port = server
    processes, threads = server_cpu(proc.pid)
    out = run_wrk(wrk, script, port, seconds)
    processes_after, threads_after = server_cpu(proc.pid)
    used = {pid: (u - u0, k - k0) for pid, (u, k) in processes_after.items()
            for u0, k0 in [processes.get(pid, (0.0, 0.0))]}
    user, system = sum(u for u, _ in used.values()), sum(k for _, k in used.values())
    background = sum(cpu - threads.get(key, 0.0) for key, cpu in threads_after.items())
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p99_ms": int(re.search(r"P99 (\d+)", out).group(1)) / 1000,
            "p999_ms": int(re.search(r"P999 (\d+)", out).group(1)) / 1000,
            "cpu_us": (user + system) / requests * 1e6, "user_us": user / requests * 1e6,
            "background_us": background / requests * 1e6,
            "busiest": max((u + k for u, k in used.values()), default=0.0) / max(user + system, 1e-9)}


def run_wrk(wrk: str, script: str, port: int, seconds: int) -> str:
    """wrk's report of ``seconds`` of 32 connections posting to the server on ``port`` (on core 1)."""
    out = subprocess.run([*pin(1), wrk, "-t1", "-c32", f"-d{seconds}s", "-s", script, f"http://127.0.0.1:{port}/predict"],
                         capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out:
        raise RuntimeError(out)
    return out


def server_cpu(pid: int) -> tuple[dict[int, tuple[float, float]], dict[tuple[int, int], float]]:
    """Seconds of CPU used so far by the server process ``pid`` and its children (uvicorn's
    workers), read from /proc: per process, in user space and in the kernel (every thread,
    ended ones included); and per thread other than its process's main one, which serves the
    requests, user and kernel together, keyed by (process, thread). Those threads are mlmon's
    (pipeline, analyzer, exporters), uvicorn's own in a worker of several (a thread that
    answers the supervisor's pings: next to nothing), and with a sync endpoint the pool
    threads that run it. /proc counts in clock ticks (10 ms)."""
    tick = os.sysconf("SC_CLK_TCK")
    processes: dict[int, tuple[float, float]] = {}
    threads: dict[tuple[int, int], float] = {}
    pids = [pid]
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            pids += [int(p) for p in fh.read().split()]
    for each in pids:
        with contextlib.suppress(OSError):  # a process that ended meanwhile
            fields = _stat(f"/proc/{each}/stat")
            processes[each] = (int(fields[11]) / tick, int(fields[12]) / tick)  # utime, stime
            for thread in map(int, os.listdir(f"/proc/{each}/task")):
                if thread != each:
                    with contextlib.suppress(OSError):  # a thread that ended meanwhile
                        fields = _stat(f"/proc/{each}/task/{thread}/stat")
                        threads[(each, thread)] = (int(fields[11]) + int(fields[12])) / tick
    return processes, threads


def _stat(path: str) -> list[str]:
    """The fields of a /proc ``stat`` file after the command name (which may hold spaces)."""
    with open(path) as fh:
        return fh.read().rsplit(")", 1)[1].split()


def longest_hold(port: int) -> float | None:
    """The server's ``pipeline_longest_hold`` (seconds, from /mlmon/health), None if unreadable."""
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/mlmon/health", timeout=10) as answer:
            return float(json.load(answer)["pipeline_longest_hold"])
    except (OSError, KeyError, ValueError):
        return None


def print_http(results: dict[str, list[dict[str, float]]], variants: Variants = VARIANTS) -> None:
    """The table of requests/s, p99, p99.9 and server CPU per request with each variant's
    ratios to its bare variant, per round."""
    def ratios(name: str, against: str, key: str) -> list[float]:
        return [a[key] / b[key] for a, b in zip(results[name], results[against])]

    keys = ("rps", "p99_ms", "p999_ms", "cpu_us")
    print("\n| variant | requests/s (median) | vs bare, per round (median; min–max) | p99 ms (median) "
          "| p99 vs bare (median; min–max) | p99.9 ms (median) | p99.9 vs bare (median; min–max) "
          "| server CPU µs/request (median) | CPU vs bare (median; min–max) "
          "| of which user space, µs (median) | pipeline's longest stretch, ms (max) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, runs in results.items():
        bare = variants[name][3]
        cells = []
        for key in keys:
            digits = 1 if key in ("rps", "cpu_us") else 2
            got = ratios(name, bare, key) if bare else []
            cells += [f"{statistics.median(r[key] for r in runs):.{digits}f}",
                      f"{statistics.median(got):.3f}; {min(got):.3f}–{max(got):.3f}" if got else "—"]
        holds = [r["hold_ms"] for r in runs if "hold_ms" in r]
        hold = f"{max(holds):.3f}" if holds else "—"
        user = statistics.median(r["user_us"] for r in runs)
        print(f"| {name} | {' | '.join(cells)} | {user:.1f} | {hold} |")
    _against_floor(results)
    _pipeline_cost(results, variants)
    for name, runs in results.items():
        if variants[name][0] > 1:
            got = [r["busiest"] for r in runs]
            print(f"{name}: its busiest process used {statistics.median(got):.0%} of the server's CPU "
                  f"(per round {min(got):.0%}–{max(got):.0%})")
    if "3 workers, monitored (shared)" in results and "3 workers, monitored (sharing off)" in results:
        shared = [r["rps"] for r in results["3 workers, monitored (shared)"]]
        alone = [r["rps"] for r in results["3 workers, monitored (sharing off)"]]
        extra = [(1 / s - 1 / a) * 1e6 for s, a in zip(shared, alone)]
        print(f"\nsharing between 3 workers costs {statistics.median(extra):+.1f} µs per request at saturation "
              f"(per round {min(extra):+.1f} to {max(extra):+.1f}; one core serving)")


def _against_floor(results: dict[str, list[dict[str, float]]]) -> None:
    """Each monitored variant's requests/s as a share of the floor's (tail.py's variant of that
    name: the least any in-process monitor does), per round, when the floor ran."""
    for floor in [name for name in results if name.endswith(", floor")]:
        endpoint = floor[:-len(", floor")]
        for name, runs in results.items():
            if name.startswith(f"{endpoint}, mlmon"):
                got = [a["rps"] / b["rps"] for a, b in zip(runs, results[floor])]
                print(f"{name}: {statistics.median(got):.3f} of the floor's requests/s (per round {min(got):.3f}–{max(got):.3f})")


def _pipeline_cost(results: dict[str, list[dict[str, float]]], variants: Variants) -> None:
    """What the pipeline costs a request, per round, two ways: the CPU of mlmon's background
    threads (measured in the same process), and mlmon's user CPU less that of its request path
    alone (another process: it also counts the serving thread's work made slower by the
    pipeline's, and the two processes' differences)."""
    for name, runs in results.items():
        # a sync endpoint runs in threads of the server's pool: not background work
        if variants[name][1] and not name.endswith("request path only") and "BENCH_MODEL_US" not in variants[name][2]:
            got = [r["background_us"] for r in runs]
            print(f"{name}: its background threads take {statistics.median(got):.1f} µs of CPU a request "
                  f"(per round {min(got):.1f} to {max(got):.1f})")
    for alone in [name for name in results if name.endswith(", mlmon, request path only")]:
        whole = alone[:-len(", request path only")]
        if whole in results:
            got = [a["user_us"] - b["user_us"] for a, b in zip(results[whole], results[alone])]
            print(f"{whole}: its user CPU less its request path's alone: {statistics.median(got):.1f} µs a request "
                  f"(per round {min(got):.1f} to {max(got):.1f})")


def bench_scrape(rounds: int) -> dict[str, list[float]]:
    import httpx

    body = {"amount": 120.5, "age": 41, "country": "fr", "channel": "web"}
    times: dict[str, list[float]] = {"1 worker": [], "3 workers, summed": []}
    with service_folder(prefix="mlmon-fleet-") as (workdir, _):
        for _ in range(rounds):
            for name, workers in (("1 worker", 1), ("3 workers, summed", 3)):
                proc, port = start(workdir, workers, True, {})
                try:
                    for _ in range(300):
                        httpx.post(f"http://127.0.0.1:{port}/predict", json=body, headers={"Connection": "close"})
                    time.sleep(1.5)  # every worker has published
                    with httpx.Client() as client:
                        samples = []
                        for _ in range(50):
                            start_at = time.perf_counter()
                            client.get(f"http://127.0.0.1:{port}/metrics")
                            samples.append(time.perf_counter() - start_at)
                    times[name].append(statistics.median(samples) * 1000)
                finally:
                    stop(proc)
    return times


def chosen_variants(names: str | None, before: str | None) -> Variants:
    """The variants named (``;``-separated; None: all), each with its bare one (KeyError when a
    name is unknown or its bare one is not named), and with a checkout ``before``, every
    monitored one a second time as ``"<name> (before)"``: the same server with that checkout's
    ``mlmon_middleware`` and adapters first on its ``PYTHONPATH`` (the server runs in a folder of
    its own, so the working tree's copy does not come first)."""
    chosen = dict(VARIANTS) if names is None else {name.strip(): VARIANTS[name.strip()] for name in names.split(";")}
    for _, _, _, bare in chosen.values():
        if bare is not None and bare not in chosen:
            raise KeyError(bare)
    if before:
        library = os.path.abspath(before)
        path = os.pathsep.join([library, os.path.join(library, "adapters")])
        for name, (workers, monitored, extra, bare) in list(chosen.items()):
            if monitored:
                chosen[f"{name} (before)"] = (workers, True, {**extra, "PYTHONPATH": path}, bare)
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", default="all", choices=["http", "scrape", "postgres", "all"])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seconds", type=int, default=3, help="wrk duration per burst")
    parser.add_argument("--copies", type=int, default=2, help="server processes per variant (http)")
    parser.add_argument("--variants", help=f"separated by ';' (http; default: all): {'; '.join(VARIANTS)}")
    parser.add_argument("--before", help="a checkout of an earlier revision (git worktree add DIR REV): its library "
                                         "runs the monitored variants too, in the same rounds (http)")
    args = parser.parse_args()
    try:
        variants = chosen_variants(args.variants, args.before)
    except KeyError as exc:
        parser.error(f"unknown variant {exc} (a monitored one needs its bare one): {'; '.join(VARIANTS)}")
    print(f"# {time.strftime('%Y-%m-%d')} · {platform.processor() or platform.machine()} · {os.cpu_count()} cores · "
          f"Python {platform.python_version()} · {' '.join(sys.argv)}")
    if args.what in ("http", "all"):
        print_http(bench_http(args.seconds, args.rounds, variants, copies=args.copies), variants)
    if args.what in ("scrape", "all"):
        scrape = bench_scrape(args.rounds)
        print("\n| /metrics scrape through one worker | ms (median of 50, per round) |\n|---|---|")
        for name, values in scrape.items():
            print(f"| {name} | {statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f}) |")
    if args.what in ("postgres", "all"):
        subprocess.run([sys.executable, os.path.join(HERE, "store.py"), "postgres"], check=True)


if __name__ == "__main__":
    main()
