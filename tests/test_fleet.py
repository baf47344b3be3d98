"""One server, many workers, one truth: real uvicorn and gunicorn with 3 workers on 127.0.0.1.

Through any worker: counters summed over every worker (exact once published, never falling across
scrapes nor when a worker restarts), health and the drift report over every worker's rows, and one
webhook per alert (only the leader checks)."""

import collections
import concurrent.futures
import http.client
import os
import pathlib
import re
import shutil
import signal
import subprocess
import time

import httpx
import numpy as np
import orjson
import pytest

from demo import free_port, start_service
from http_helpers import RecordingServer

pytestmark = pytest.mark.integration

TESTS = pathlib.Path(__file__).parent
WORKERS = 3


def post_rows(url: str, rows: list[dict], threads: int = 6) -> int:
    """POST each row on its own connection (the kernel spreads them over the workers); how many got 200."""
    host, port = url.removeprefix("http://").split(":")

    def one(row: dict) -> bool:
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            connection.request("POST", "/predict", body=orjson.dumps(row), headers={"Content-Type": "application/json"})
            return connection.getresponse().status == 200
        finally:
            connection.close()

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(one, rows))


def rows(n: int, seed: int, shift: float = 0.0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"x": float(x), "color": str(c)} for x, c in zip(rng.normal(shift, 1, n), rng.choice(["red", "green", "blue"], n))]


def scrape(url: str) -> dict[str, float]:
    """Totals of a /metrics scrape (new connection: any worker may answer), per sample name."""
    text = httpx.get(f"{url}/metrics", timeout=10, headers={"Connection": "close"}).text
    totals: dict[str, float] = collections.defaultdict(float)
    for name, value in re.findall(r"^(mlmon_[a-z_]+)(?:\{[^}]*\})? (\S+)$", text, re.M):
        totals[name] += float(value)
    return totals


def wait_for(url: str, predicate, timeout: float = 30.0) -> dict[str, float]:
    """Scrape until ``predicate(totals)`` holds (the other workers publish every second)."""
    deadline = time.monotonic() + timeout
    while True:
        totals = scrape(url)
        if predicate(totals) or time.monotonic() > deadline:
            return totals
        time.sleep(0.2)


def workers_of(proc) -> set[int]:
    """The pids of the server's worker processes (its children, but multiprocessing's helper)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = pathlib.Path(f"/proc/{entry}/stat").read_text()
            command = pathlib.Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[stat.rfind(")") + 2:].split()[1]) == proc.pid and b"resource_tracker" not in command:
            found.add(int(entry))
    return found


@pytest.mark.parametrize("server", ["uvicorn", "gunicorn"])
def test_three_workers_answer_as_one(tmp_path, server):
    hook = RecordingServer()
    port = free_port(0)
    url = f"http://127.0.0.1:{port}"
    proc = start_service(tmp_path, port, tmp_path / "service.log", app="fleet_app:app", app_dir=TESTS, server=server,
                         workers=WORKERS, env={"MLMON_CHECK_INTERVAL": "1", "MLMON_ALLOW_ANONYMOUS_WRITES": "true",
                                               "FLEET_WEBHOOK": hook.url})
    try:
        deadline = time.monotonic() + 30
        while len(workers_of(proc)) < WORKERS and time.monotonic() < deadline:
            time.sleep(0.2)
        assert post_rows(url, rows(300, seed=1)) == 300
        totals = wait_for(url, lambda t: t["mlmon_predictions_total"] == 300)
        assert totals["mlmon_predictions_total"] == 300
        assert totals["mlmon_inference_duration_seconds_count"] == 300  # histograms summed too
        seen = [scrape(url)["mlmon_predictions_total"] for _ in range(50)]
        assert seen == [300] * 50  # every scrape, through whichever worker, counts all of them
        merged = httpx.get(f"{url}/metrics", timeout=10).content
        lint = subprocess.run([shutil.which("promtool"), "check", "metrics"], input=merged, capture_output=True)
        assert lint.returncode == 0 and lint.stdout.strip() == lint.stderr.strip() == b"", lint  # clean, as one process's

        for _ in range(3):  # through any worker: every worker's rows
            health = httpx.get(f"{url}/mlmon/health", headers={"Connection": "close"}).json()
            assert health["workers"]["running"] == WORKERS
            assert health["models"]["fleet"]["predictions"] == {"ok": 300, "error": 0}
            assert health["models"]["fleet"]["rows_in_window"] == 300
        report = httpx.get(f"{url}/mlmon/drift?refresh=true", headers={"Connection": "close"}, timeout=30).json()
        assert report["fleet"]["rows"] == 300 and report["fleet"]["drifted"] == []

        # a worker stops and is replaced: its counts stay in the totals, which never fall
        before = set(workers_of(proc))
        os.kill(min(before), signal.SIGTERM)
        while workers_of(proc) == before or len(workers_of(proc)) < WORKERS:
            assert time.monotonic() < deadline + 60, "the server did not replace its worker"
            try:
                assert scrape(url)["mlmon_predictions_total"] >= 300
            except httpx.TransportError:  # a connection the stopping worker had accepted: the server's doing, not ours
                pass
            time.sleep(0.2)
        assert post_rows(url, rows(100, seed=2)) == 100
        totals = wait_for(url, lambda t: t["mlmon_predictions_total"] == 400)
        assert totals["mlmon_predictions_total"] == 400

        # drifted traffic: the leader alone checks, so one webhook per alert
        assert post_rows(url, rows(300, seed=3, shift=2.0)) == 300
        deadline = time.monotonic() + 30
        while not any(b'"FeatureDrift"' in body for _, body in hook.received) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(4)  # four more checks: a second notifier would have sent its own by now
        events = collections.Counter((e["alertname"], e["subject"], e["state"])
                                     for e in (orjson.loads(body)["mlmon"] for _, body in hook.received))
        assert events[("FeatureDrift", "x", "firing")] == 1, events
        assert all(n == 1 for (_, _, state), n in events.items() if state == "firing"), events
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        hook.shutdown()


def otlp_predictions(received: list[tuple[str, bytes]]) -> dict[str, float]:
    """The last cumulative ``mlmon.predictions`` total each ``service.instance.id`` pushed."""
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    latest: dict[str, float] = {}
    for path, body in received:
        assert path == "/v1/metrics", path
        request = ExportMetricsServiceRequest.FromString(body)
        for resource in request.resource_metrics:
            instance = next(a.value.string_value for a in resource.resource.attributes if a.key == "service.instance.id")
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == "mlmon.predictions":
                        assert metric.sum.aggregation_temporality == 2 and metric.sum.is_monotonic  # cumulative
                        latest[instance] = sum(p.as_double or p.as_int for p in metric.sum.data_points)
    return latest


def test_otlp_pushes_one_instance_per_worker_as_the_standard_variables_say(tmp_path):
    collector = RecordingServer()
    port = free_port(0)
    url = f"http://127.0.0.1:{port}"
    proc = start_service(tmp_path, port, tmp_path / "service.log", app="fleet_app:app", app_dir=TESTS, workers=2,
                         env={"MLMON_CHECK_INTERVAL": "0", "OTEL_METRIC_EXPORT_INTERVAL": "300",
                              "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": f"{collector.url}/v1/metrics",  # that signal alone
                              "OTEL_TRACES_EXPORTER": "none", "MLMON_TRACING": "true"})
    try:
        # the kernel may hand every connection of one round to the same worker (a second worker still
        # starting, or simply first to accept): post rounds until both have pushed, as any backend would see
        posted, deadline = 0, time.monotonic() + 60
        while True:
            posted += post_rows(url, rows(100, seed=4 + posted))
            settle = time.monotonic() + 5
            while sum(otlp_predictions(list(collector.received)).values()) < posted and time.monotonic() < settle:
                time.sleep(0.2)
            pushed = otlp_predictions(list(collector.received))
            if len(pushed) >= 2 or time.monotonic() > deadline:
                break
        settle = time.monotonic() + 30
        while sum(pushed.values()) < posted and time.monotonic() < settle:
            time.sleep(0.2)
            pushed = otlp_predictions(list(collector.received))
        # each worker pushes its own cumulative counts as its own instance: a backend's sum is exact
        assert len(pushed) == 2 and sum(pushed.values()) == posted, (pushed, posted)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        collector.shutdown()
