"""The Grafana dashboard has the structure Grafana expects (type-checked against Grafana's own
published dashboard types), and every query parses in Prometheus."""

import pathlib
import shutil
import subprocess

import orjson
import yaml

from mlmon_middleware.cli import main
from mlmon_middleware.dashboards import grafana_dashboard
from mlmon_middleware.instruments import INSTRUMENTS


def test_structure():
    board = grafana_dashboard()
    assert {"title", "uid", "schemaVersion", "panels", "templating", "time"} <= set(board)
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for p in panels:
        grid = p["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["w"] > 0 and grid["h"] > 0
        if p["type"] != "row":
            assert p["type"] in ("timeseries", "table", "stat") and p["targets"]
            assert p["datasource"]["uid"] == "${datasource}"
            for t in p["targets"]:
                assert t["refId"] and t["expr"]
    titles = [p["title"] for p in panels if p["type"] == "row"]
    assert titles == ["Traffic and latency", "Drift", "Data quality", "Performance", "Explanations",
                      "Alerts and the monitor's health"]


GRAFANA_TYPES = pathlib.Path(__file__).parent / "grafana"  # @grafana/schema + typescript, `npm ci` by make tools


def test_grafanas_published_types_accept_it(tmp_path):
    """@grafana/schema holds the TypeScript types Grafana generates from its dashboard schema; the
    compiler checks the JSON against them, unknown fields and missing ones included (an object
    literal gets excess-property checks)."""
    tsc = GRAFANA_TYPES / "node_modules" / ".bin" / "tsc"
    assert tsc.exists(), "run `make tools` (npm ci in tests/grafana)"
    board = orjson.dumps(grafana_dashboard()).decode()
    check = GRAFANA_TYPES / f"check_{tmp_path.name}.ts"  # beside node_modules, where imports resolve
    check.write_text('import type { Dashboard } from "@grafana/schema/dist/esm/raw/dashboard/x/Dashboard_types.gen";\n'
                     'import type { Dashboard as Frontend } from "@grafana/schema";\n'
                     f"export const raw: Dashboard = {board};\nexport const frontend: Frontend = {board};\n")
    try:
        result = subprocess.run([str(tsc), "--noEmit", "--strict", "--skipLibCheck", "--module", "esnext",
                                 "--moduleResolution", "bundler", "--target", "es2022", check.name],
                                cwd=GRAFANA_TYPES, capture_output=True, text=True, timeout=120)
    finally:
        check.unlink()
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_query_parses_and_names_real_metrics(tmp_path):
    board = grafana_dashboard()
    exprs = [t["expr"] for p in board["panels"] if p["type"] != "row" for t in p["targets"]]
    names = {spec.prometheus for spec in INSTRUMENTS.values()}
    known = names | {n + suffix for n in names for suffix in ("_bucket", "_sum", "_count")} | {"mlmon:feature_psi:fleet"}
    for expr in exprs:
        assert any(name in expr for name in known), expr
    # promtool parses PromQL in rule files: every panel query as a recording rule
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": e.replace("$model", ".*").replace("$version", ".*")}
        for i, e in enumerate(exprs)]}]}
    (tmp_path / "queries.yml").write_text(yaml.safe_dump(rules))
    result = subprocess.run([shutil.which("promtool"), "check", "rules", str(tmp_path / "queries.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cli_prints_it(capsys):
    assert main(["dashboard", "grafana"]) == 0
    assert orjson.loads(capsys.readouterr().out)["uid"] == "mlmon-models"
