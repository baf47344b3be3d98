"""A real Prometheus server scrapes two processes of the example service: the fleet PSI of the
recording rule equals mlmon's PSI on the union of their traffic, and the fleet drift alert fires
if and only if the merged traffic drifted (not when each replica alone looks drifted). The
services set an API token, so the metrics need it: Prometheus sends it from a credentials file,
as docs/deployment.md configures it."""

import json
import shutil
import subprocess
import time

import httpx
import numpy as np
import pytest
import yaml

from mlmon_middleware import Baseline
from mlmon_middleware.drift import stats
from mlmon_middleware.rules import RuleConfig, render

from data import make_rows
from demo import free_port, start_service
from http_helpers import PortTaken, wait_ready
from train import train

pytestmark = pytest.mark.integration


def query(base: str, expr: str) -> list[dict]:
    answer = httpx.get(f"{base}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def alerts_named(base: str, name: str, feature: str) -> list[dict]:
    alerts = httpx.get(f"{base}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] == name and a["labels"].get("feature") == feature]


def start_prometheus(prometheus: str, config, tmp_path) -> tuple[subprocess.Popen, int]:
    """Prometheus on a free port, once it answers queries; started again (twice at most) when the
    port chosen free was taken before it bound it; one that exits otherwise fails at once, with
    its output."""
    for attempt in range(3):
        web, log = free_port(0), tmp_path / f"prometheus-{attempt}.log"
        with open(log, "wb") as out:
            server = subprocess.Popen([prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                       f"--web.listen-address=127.0.0.1:{web}"], stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_ready(server, f"http://127.0.0.1:{web}/-/ready", log, 60)
            return server, web
        except PortTaken:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


@pytest.fixture
def fleet(tmp_path):
    """Two example processes (with an API token) and a Prometheus scraping both with the token,
    with the rendered rules."""
    prometheus = shutil.which("prometheus")
    assert prometheus, "prometheus is missing: `make test` installs Debian's prometheus package"
    demo = tmp_path / "demo"
    train(demo, rows=3000)
    token = tmp_path / "mlmon-token"
    token.write_text("fleet-t0ken\n")  # Prometheus strips the trailing newline
    services = [start_service(demo, port := free_port(0), tmp_path / f"s{port}.log",
                              env={"MLMON_CHECK_INTERVAL": "1", "MLMON_API_TOKEN": "fleet-t0ken"})
                for _ in range(2)]
    ports = [int(s.args[s.args.index("--port") + 1]) for s in services]
    rules = tmp_path / "rules.yml"
    rules.write_text(render(RuleConfig(fleet_window="all", drift_for="5s")))
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{"job_name": "mlmon", "metrics_path": "/mlmon/metrics",
                            "authorization": {"credentials_file": str(token)},
                            "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in ports]}]}]}))
    server, web = start_prometheus(prometheus, config, tmp_path)
    try:
        yield demo, ports, f"http://127.0.0.1:{web}"
    finally:
        server.terminate()
        server.wait(timeout=20)
        for service in services:
            service.terminate()
            service.wait(timeout=10)


def send(port: int, rows: list[dict]) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        for i in range(0, len(rows), 50):
            assert client.post("/predict/batch", json=rows[i:i + 50]).status_code == 200


def test_undrifted_traffic_split_unevenly_raises_no_fleet_alert(fleet):
    demo, ports, base = fleet
    rows = sorted(make_rows(800, np.random.default_rng(9)), key=lambda r: r["income"])
    send(ports[0], rows[:400])  # the poorer half to one replica, the richer to the other
    send(ports[1], rows[400:])
    deadline = time.monotonic() + 90
    replicas: list = []
    while time.monotonic() < deadline and len(replicas) < 2:  # each replica's own checks: income drifted
        replicas = query(base, 'mlmon:feature_drift_alert:replica{subject="income"}')
        time.sleep(0.5)
    assert len(replicas) == 2, "each replica alone should see its half as drifted"
    assert [httpx.get(f"http://127.0.0.1:{p}/mlmon/metrics", timeout=10).status_code for p in ports] == [401, 401]
    rows: list = []
    while time.monotonic() < deadline and not (rows and float(rows[0]["value"][1]) == 800):
        # the fleet's recorded rows and PSI come from one rule evaluation: wait until it saw all 800
        rows = query(base, 'mlmon:feature_rows:fleet{feature="income"}')
        psi = query(base, 'mlmon:feature_psi:fleet{feature="income"}')
        time.sleep(0.2)
    assert rows and float(rows[0]["value"][1]) == 800
    assert psi and float(psi[0]["value"][1]) < 0.05  # together they are the training population
    time.sleep(8)  # longer than drift_for, with rules evaluated every second
    assert alerts_named(base, "MLModelFleetFeatureDrift", "income") == []
    assert [a for a in httpx.get(f"{base}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
            if a["labels"]["alertname"] == "MLModelFeatureDrift"] == []  # per-replica verdicts stand down


def test_fleet_psi_and_firing_alert(fleet):
    demo, ports, base = fleet
    rows = make_rows(800, np.random.default_rng(8), drift=1.0)
    for half, port in zip((rows[:400], rows[400:]), ports):  # each process gets half of the same traffic
        send(port, half)
    baseline = Baseline.load(demo / "baseline.json")
    expected = {}
    for feature in ("income", "debt_ratio", "age"):
        edges = np.asarray(baseline.features[feature]["bin_edges"])
        counts = stats.bin_counts(np.array([r[feature] for r in rows]), edges[1:-1])
        reference = np.asarray(baseline.features[feature]["bin_proportions"])
        expected[feature] = float(stats.psi(reference[None], (counts / counts.sum())[None])[0])
    for feature in ("region", "channel"):  # categorical: the in-process PSI of the merged traffic
        profile = baseline.features[feature]
        names, ref, cur = stats.category_counts(profile["frequencies"], stats.reference_rows(profile),
                                                [r[feature] for r in rows])
        expected[feature] = float(stats.psi(ref / ref.sum(), cur / cur.sum()))
    features = "|".join(expected)
    deadline = time.monotonic() + 90
    got: dict = {}
    while time.monotonic() < deadline:
        results = query(base, f'mlmon:feature_psi:fleet{{feature=~"{features}"}}')
        totals = query(base, 'sum by (feature) (mlmon_feature_bin_total{feature=~"income|region"})')
        got = {r["metric"]["feature"]: float(r["value"][1]) for r in results}
        settled = len(got) == len(expected) and len(totals) == 2 and all(float(t["value"][1]) == 800 for t in totals)
        # the recording rule is evaluated once a second: wait until it has seen the last scrape
        if settled and all(abs(got[f] - expected[f]) <= 1e-9 for f in expected):
            break
        time.sleep(0.5)
    assert got == pytest.approx(expected, abs=1e-9, rel=0), json.dumps({"got": got, "expected": expected})
    assert expected["income"] >= 0.25 and expected["age"] < 0.1  # income drifted; age did not
    firing = []
    while time.monotonic() < deadline and not firing:
        firing = [a for a in alerts_named(base, "MLModelFleetFeatureDrift", "income") if a["state"] == "firing"]
        time.sleep(0.5)
    assert firing, "the fleet drift alert did not reach firing"
    assert firing[0]["labels"]["severity"] == "critical"
    assert alerts_named(base, "MLModelFleetFeatureDrift", "age") == []
