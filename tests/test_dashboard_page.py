"""The embedded dashboard at /mlmon/ in headless Chromium (Debian's /usr/bin/chromium, driven by
Playwright) against the example service in a real uvicorn process fed with drifted traffic.

The page must load with no console errors, no script errors and no request leaving the service
(every other URL is aborted and reported), and show what the service's own reports say: the
drifted features, the alerts, performance over time and per segment, and the explanation of a
chosen prediction. A full-page screenshot goes to test-artifacts/dashboard.png. At 1024 and
1440 px the page fits the viewport, chart labels are short and inside their charts, KS and χ² have
columns of their own, and the header tells mlmon's own health from the model's state (screenshots
test-artifacts/dashboard-1024.png and -1440.png). A second service (tests/two_models_app.py: two
models without baselines, an API token) checks the model picker, the warm-up state and the token
prompt.
"""

import pathlib
import re
import time

import httpx
import numpy as np
import pytest

from mlmon_middleware.health import DROPS

from data import FEATURES, default_risk, make_rows
from demo import free_port, start_service
from train import train

HERE = pathlib.Path(__file__).resolve().parent

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"  # Debian's package, installed by `make tools`
ARTIFACTS = HERE.parent / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """The example service after three rounds of traffic, labels and checks; yields (url, a
    prediction id that was explained, the service's drift report)."""
    demo_dir = tmp_path_factory.mktemp("dashboard")
    train(demo_dir, rows=3000)
    port = free_port(0)
    # scheduled checks every 2 s (on-demand ones count toward no alert); labels posted anonymously
    proc = start_service(demo_dir, port, demo_dir / "service.log",
                         env={"MLMON_CHECK_INTERVAL": "2", "MLMON_STORE_DIR": str(demo_dir / "log"),
                              "MLMON_ALLOW_ANONYMOUS_WRITES": "true"})
    url = f"http://127.0.0.1:{port}"
    rng = np.random.default_rng(5)
    explained = None
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            for drift in (0.0, 1.0, 1.0):
                labels = []
                for i, row in enumerate(make_rows(100, rng, drift=drift)):
                    response = client.post("/predict", json=row, headers={"X-MLMon-Explain": "true"} if i % 4 == 0 else {})
                    assert response.status_code == 200
                    if "explanation" in response.json():
                        explained = response.headers["x-prediction-id"]
                    labels.append({"prediction_id": response.headers["x-prediction-id"],
                                   "actual": int(default_risk([row], rng)[0])})
                for _ in range(10):
                    assert client.post("/predict/batch", json=make_rows(50, rng, drift=1.0)).status_code == 200
                assert client.post("/mlmon/feedback", json=labels).json()["labelled"] == 100
            # the alert policy fires after two drifted scheduled checks, and two scheduled checks
            # after the labels give the performance chart a line (one point is drawn as a dot; on
            # a busy machine the alerts may fire before the labels arrive)
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                active = {a["alertname"] for a in client.get("/mlmon/alerts").json()["credit-risk"]["active"]}
                if {"FeatureDrift", "DatasetDrift"} <= active and charted_points(client) >= 2:
                    break
                time.sleep(0.5)
            assert {"FeatureDrift", "DatasetDrift"} <= active, active
            assert charted_points(client) >= 2
            report = client.get("/mlmon/drift").json()["credit-risk"]
        assert explained is not None, "no request was explained"
        yield url, explained, report
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def charted_points(client) -> int:
    """How many points the page's performance chart draws: the checks in the history with overall
    metrics for the window the page shows (the first window of the latest check that has them)."""
    performance = client.get("/mlmon/performance").json()["credit-risk"]
    windows = performance.get("windows") or {}
    shown = next((name for name, window in windows.items() if window.get("overall")), None)
    return sum(1 for point in performance.get("history") or [] if (point["windows"].get(shown) or {}).get("overall"))


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def open_page(browser, url: str, path: str, loaded: bool = True, width: int = 1400):
    """A page at ``url + path`` in a viewport ``width`` px wide (``loaded``: once it has drawn the
    reports) and the list its problems go to: console errors and warnings, script errors, failed
    requests, and any request outside the service (aborted)."""
    problems: list[str] = []

    def only_the_service(route):
        if route.request.url.startswith(url + "/"):
            route.continue_()
        else:
            problems.append(f"request outside the service: {route.request.url}")
            route.abort()

    page = browser.new_page(viewport={"width": width, "height": 1000})
    page.on("console", lambda m: m.type in ("error", "warning") and problems.append(f"console {m.type}: {m.text}"))
    page.on("pageerror", lambda exc: problems.append(f"script error: {exc}"))
    page.on("requestfailed", lambda r: problems.append(f"failed: {r.url} {r.failure}"))
    page.route("**/*", only_the_service)
    page.goto(url + path)
    if loaded:
        page.wait_for_selector("body[data-loaded=true]", timeout=30_000)
    return page, problems


def test_dashboard_page_in_headless_chromium(service, browser):
    url, explained, report = service
    page, problems = open_page(browser, url, f"/mlmon/#prediction={explained}")
    try:
        page.wait_for_selector("[data-role=explanation-text]", timeout=30_000)
        page.wait_for_load_state("networkidle")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

        flagged = page.eval_on_selector_all(
            "#drift-table tbody tr", "rows => rows.filter(r => ['warning', 'critical'].includes(r.dataset.severity))"
                                     ".map(r => r.dataset.feature)")
        cards = page.eval_on_selector_all("#histograms .card", "cards => cards.map(c => c.dataset.feature)")
        bars = page.eval_on_selector_all("#histograms .card svg rect", "rects => rects.length")
        active = page.eval_on_selector_all("#alerts-active tbody tr", "rows => rows.map(r => r.dataset.alert)")
        segments = page.inner_text("#segments")
        lines = page.eval_on_selector_all("#performance-chart polyline", "lines => lines.length")
        explanation = page.inner_text("[data-role=explanation-text]")
        summary = page.inner_text("#drift-summary")
        predictions = page.eval_on_selector_all("#prediction-histograms .card", "cards => cards.map(c => c.dataset.feature)")
        attribution_rows = page.eval_on_selector_all("#attributions svg text", "texts => texts.length")
        attributions = page.inner_text("#attributions-summary")
        loaded = list(problems)

        # an unknown prediction id is answered in the page (Chromium itself logs the 404 response)
        page.fill("#prediction-id", "no-such-id")
        page.click("#explain-form button[type=submit]")
        page.wait_for_selector("#explanation .error")
        missing = page.inner_text("#explanation")
    finally:
        page.close()

    assert loaded == [], loaded
    assert all("status of 404" in p for p in problems[len(loaded):]), problems
    drifted = set(report["drifted"])
    assert {"income", "debt_ratio", "credit_score", "credit_utilization", "region", "channel"} <= drifted
    assert set(flagged) == drifted
    assert f"{len(drifted)} of {len(FEATURES)} features drifted" in summary
    assert sorted(cards) == sorted(FEATURES) and bars > 2 * len(FEATURES)
    assert predictions == ["prediction"]
    assert attribution_rows == 2 * 14  # a name and a value per numeric feature (the explainer's)
    assert re.match(r"\d+ explained predictions in the window; ", attributions), attributions
    assert report["attributions"]["status"] == "ok"
    assert "FeatureDrift" in active and "DatasetDrift" in active
    assert "region = west" in segments and "channel = web" in segments
    assert lines >= 1  # three checks: one line per metric over time
    assert explanation.startswith("default risk ")
    assert "not in the prediction log" in missing


# every chart label's text and box, with the offenders: longer than the page's TICK_CHARS or cut
# ("…"), or reaching outside its chart's viewBox (where the browser clips it)
CHART_LABELS = """() => {
  const out = {ticks: [], outside: []};
  for (const chart of document.querySelectorAll("svg[viewBox]")) {
    const box = chart.viewBox.baseVal;
    for (const text of chart.querySelectorAll("text")) {
      const b = text.getBBox();
      if (text.classList.contains("tick")) out.ticks.push(text.textContent);
      if (b.x < -0.5 || b.y < -0.5 || b.x + b.width > box.width + 0.5 || b.y + b.height > box.height + 0.5) {
        out.outside.push(`${text.textContent} at x ${b.x.toFixed(1)}..${(b.x + b.width).toFixed(1)} of ${box.width}`);
      }
    }
  }
  return out;
}"""

# the drift table's cells per feature, drawn by the page's own function from the report it reads
# (drawn again here: a scheduled check may land between the page's refresh and this fetch)
DRIFT_ROWS = """async () => {
  const report = Object.values(await (await fetch("drift")).json())[0];
  renderDrift(report);
  const rows = [...document.querySelectorAll("#drift-table tbody tr")];
  const cells = Object.fromEntries(rows.map((r) => [r.dataset.feature, [...r.cells].map((c) => c.textContent)]));
  return [cells, report];
}"""

# the header's two indications after mlmon itself reported a dropped capture (health's real
# issues plus one), drawn by the page's own function
MONITOR_DEGRADED = """async (dropped) => {
  const health = await (await fetch("health")).json();
  health.issues.push(dropped);
  health.monitor_errors = {queue_full: 3};
  renderMonitorState(health);
  const badge = document.getElementById("monitor-state");
  return [badge.textContent, badge.dataset.state, badge.title, document.getElementById("model-state").textContent];
}"""


def test_layout_ticks_statistics_and_states(service, browser):
    """What users found: a page wider than a 1024 px screen, tick labels cut mid-number, KS and
    χ² in one column, and one "degraded" badge for a drifted model under a healthy monitor."""
    url, explained, _ = service
    health = httpx.get(f"{url}/mlmon/health", timeout=30).json()
    page, problems = open_page(browser, url, f"/mlmon/#prediction={explained}", width=1024)
    widths = {}
    try:
        page.wait_for_selector("[data-role=explanation-text]", timeout=30_000)
        page.wait_for_selector("#recent-explained a")
        ARTIFACTS.mkdir(exist_ok=True)
        for width in (1024, 1440):
            page.set_viewport_size({"width": width, "height": 1000})
            page.screenshot(path=str(ARTIFACTS / f"dashboard-{width}.png"), full_page=True)
            widths[width] = page.evaluate("document.documentElement.scrollWidth")
        labels = page.evaluate(CHART_LABELS)
        tick_chars = page.evaluate("TICK_CHARS")
        ticks = page.evaluate("""() => [10909.45, 12289.3, 0.000123, -0.5, 999.5, 1234567, -2.5e20, 5e-324, 0, 42]
                                       .map(tick)""")
        categorical = page.evaluate("""() => {
          const names = Array.from({length: 8}, (_, i) => `category number ${i} with a long name`);
          const card = histogram("f", "none", "", {names}, names.map(() => 0.125), names.map(() => 0.125));
          return [[...card.querySelectorAll("text.tick")].map((t) => t.textContent), card.querySelector(".key").textContent];
        }""")
        headers = page.eval_on_selector_all("#drift-table thead th", "cells => cells.map(c => c.textContent)")
        forecasts = page.evaluate("""() => [undefined, {seconds: null}, {seconds: 0}, {seconds: 7200}, {seconds: 90},
                                            {seconds: 3 * 86400}, {seconds: 12}].map(forecastText)""")
        wholes = page.evaluate("""() => [undefined, {}, {pca: {p_value: null}, classifier: {rows: 0, p_value: null}},
                                         {pca: {p_value: 1e-12, error_ratio: 3.1416, rows: 1000, severity: "warning"}},
                                         {pca: {p_value: 0.42, error_ratio: 1.01, rows: 800, severity: "none"},
                                          classifier: {p_value: 1e-7, auc: 0.712, rows: 1000, severity: "warning"}},
                                        ].map(multivariateText)""")
        estimates = page.evaluate("""() => [undefined, {note: "no numeric 'prediction'"},
            {method: "cbpe", rows: 800, metrics: {accuracy: {value: 0.7123, low: 0.69, high: 0.735, reference: 0.81,
                                                             relative_change: -0.1206, severity: "critical"},
                                                  f1: {value: 0.7, low: 0.68, high: 0.72, reference: 0.7, severity: "none"},
                                                  roc_auc: {value: null}}}].map(estimatedText)""")
        causes = page.evaluate("""() => [undefined, [], [{text: "income drifted (PSI 0.22, 26 % of attribution)"},
                                                          {text: "segment region=west accuracy -12 points"}]].map(causesText)""")
        rows, shown = page.evaluate(DRIFT_ROWS)
        states = {name: page.inner_text(f"#{name}") for name in ("monitor-state", "model-state", "model-alerts")}
        issues, model_issues = page.inner_text("#issues"), page.inner_text("#model-issues")
        degraded = page.evaluate(MONITOR_DEGRADED, f"3 {DROPS['queue_full']}")
    finally:
        page.close()

    assert problems == [], problems
    assert widths[1024] <= 1024 and widths[1440] <= 1440, f"page widths in 1024 and 1440 px viewports: {widths}"
    assert tick_chars == 10 and labels["ticks"], labels
    assert [t for t in labels["ticks"] if len(t) > tick_chars or "…" in t] == [], labels["ticks"]
    assert labels["outside"] == [], labels["outside"]
    assert ticks == ["10.9k", "12.3k", "1.23e-4", "-0.5", "1k", "1.23M", "-2.5e20", "4.94e-324", "0", "42"]
    assert all(len(t) <= tick_chars for t in ticks)
    # categories too long for their bars are numbered under them, named in full in a key below
    assert categorical[0][2:] == [str(i) for i in range(1, 9)], categorical[0]
    assert "8 category number 7 with a long name" in categorical[1]

    ks, chi2 = headers.index("KS"), headers.index("χ²")  # a column each, named
    assert sorted(rows) == sorted(shown["features"])
    for name, stats in shown["features"].items():
        if stats["kind"] == "numeric":
            assert (rows[name][ks], rows[name][chi2]) == (f"{stats['ks']:.3f}", "–"), (name, rows[name])
        else:
            assert (rows[name][ks], rows[name][chi2]) == ("–", f"{stats['chi2']:.2f}"), (name, rows[name])
    forecast = headers.index("forecast")  # the drift forecast (docs/insight.md): "–" until a trend has its points
    assert forecasts == ["–", "none", "now", "in 2 h", "in 1.5 min", "in 3 d", "in 12 s"]
    assert causes == ["", "", "Likely causes: 1. income drifted (PSI 0.22, 26 % of attribution); "
                              "2. segment region=west accuracy -12 points"], causes
    assert estimates[:2] == ["", "Estimated without labels: no numeric 'prediction'"], estimates
    assert estimates[2] == ("Estimated without labels (CBPE, 800 rows): accuracy 0.712 (0.690–0.735; -12.1 % against "
                            "0.810, critical), f1 0.700 (0.680–0.720)"), estimates
    assert wholes[:3] == ["", "", ""] and "moved by reconstruction error ×3.14" in wholes[3], wholes
    assert wholes[4] == ("; the rows as a whole: alike by reconstruction error ×1.01 (p 0.420, 800 rows), "
                         "moved by classifier AUC 0.712 (p 1.00e-7, 1000 rows)"), wholes
    assert all(cells[forecast] == ("–" if name not in shown.get("forecast", {}) else cells[forecast])
               for name, cells in rows.items()), rows
    psi = headers.index("PSI")
    assert all(len(cells[psi].split(".")[1]) == 3 for cells in rows.values()), rows

    # health says "degraded" only because the drifted model's alerts fire: mlmon itself is fine
    assert health["status"] == "degraded" and health["monitor_errors"] == {}
    assert all(" alert(s) firing (" in issue or "alerts are being ignored" in issue  # none acknowledged yet
               for issue in health["issues"]), health["issues"]
    assert states["monitor-state"] == "monitor healthy"
    assert states["model-state"] == "model drifted"
    firing = re.fullmatch(r"(\d+) alerts firing", states["model-alerts"])  # FeatureDrift, DatasetDrift and more
    assert firing and int(firing[1]) >= 2, states
    assert "no issues with mlmon itself" in issues and "alert(s) firing" in model_issues
    text, state, title, model_state = degraded
    assert (text, state, model_state) == ("monitor degraded", "degraded", "model drifted")
    assert DROPS["queue_full"] in title and "alert(s) firing" not in title


def test_a_firing_alert_is_acknowledged_with_its_button(service, browser):
    """The button next to a firing alert posts the acknowledgement (with the name typed above it);
    the row then says who acknowledged it, and so do the alerts route and health."""
    url = service[0]
    page, problems = open_page(browser, url, "/mlmon/")
    try:
        page.wait_for_selector("#alerts-active [data-role=ack]", timeout=30_000)
        alert_id = page.get_attribute("#alerts-active [data-role=ack] >> nth=0", "data-alert-id")
        page.fill("#ack-actor", "oncall@example.com")
        page.click(f"#alerts-active tr[data-alert-id='{alert_id}'] [data-role=ack]")
        page.wait_for_selector(f"#alerts-active tr[data-alert-id='{alert_id}'] [data-role=acknowledged]", timeout=15_000)
        shown = page.inner_text(f"#alerts-active tr[data-alert-id='{alert_id}'] [data-role=acknowledged]")
        error = page.inner_text("#ack-error")
    finally:
        page.close()
    with httpx.Client(base_url=url, timeout=30) as client:
        alerts = client.get("/mlmon/alerts").json()["credit-risk"]
        issues = client.get("/mlmon/health").json()["issues"]
    assert problems == [] and error == "", (problems, error)
    assert shown.startswith("by oncall@example.com, "), shown
    assert alerts["acknowledged"][alert_id]["actor"] == "oncall@example.com"
    assert [a["acknowledged"]["actor"] for a in alerts["active"] if a["id"] == alert_id] == ["oncall@example.com"]
    assert not any("alerts are being ignored" in issue for issue in issues), issues


def test_two_models_a_token_and_no_baseline_yet(tmp_path, browser):
    """Another service: two models still warming up, and an API token guarding the reports and
    the log. The page asks for the token instead of drawing a 401, then switches models and looks
    a prediction up."""
    port = free_port(0)
    proc = start_service(tmp_path, port, tmp_path / "service.log", app="two_models_app:app", app_dir=HERE,
                         env={"MLMON_CHECK_INTERVAL": "0", "MLMON_STORE_DIR": str(tmp_path / "log"),
                              "MLMON_API_TOKEN": "s3cret"})
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            for x in range(-20, 20):
                client.post("/alpha", json={"x": x})
            beta = client.post("/beta", json={"x": 1.5}).headers["x-prediction-id"]
        page, problems = open_page(browser, url, "/mlmon/", loaded=False)
        try:
            # health without the token is the status only: the page asks for the token first
            page.wait_for_selector("#token-box:not([hidden])")
            asks = "API token" in page.inner_text("#load-error")
            page.fill("#token", "s3cret")
            page.press("#token", "Enter")
            page.wait_for_selector("body[data-loaded=true]", timeout=30_000)
            first = page.input_value("#model")
            models = page.eval_on_selector_all("#model option", "options => options.map(o => o.value)")
            warming = page.inner_text("#drift-summary")
            page.select_option("#model", "beta")
            page.wait_for_function("document.querySelector('#models tr.selected')?.dataset.model === 'beta'")
            beta_summary = page.inner_text("#drift-summary")
            hidden_attributions = page.is_hidden("#attributions-section")
            page.fill("#prediction-id", beta)
            page.click("#explain-form button[type=submit]")
            page.wait_for_selector("#explanation table.pairs")
            shown = page.inner_text("#explanation")
            page.wait_for_selector("#recent-explained")
        finally:
            page.close()
        # a link with the token in its fragment (never sent to the server) opens the page at once
        linked, linked_problems = open_page(browser, url, "/mlmon/#token=s3cret")
        try:
            linked_models = linked.eval_on_selector_all("#model option", "options => options.map(o => o.value)")
            linked_url = linked.url
        finally:
            linked.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert problems == [] and linked_problems == [], problems + linked_problems
    assert models == ["alpha", "beta"] and first == "alpha"
    assert linked_models == ["alpha", "beta"] and "s3cret" not in linked_url
    assert "warming up: building a baseline from the first 1000 rows (40 so far)" in warming
    assert asks
    assert "(1 so far)" in beta_summary
    assert hidden_attributions  # no explainer configured: the section stays out of the way
    assert beta in shown and '"prediction":1' in shown.replace(" ", "") and "not explained" in shown
