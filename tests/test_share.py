"""The workers' shared folder without servers: election, counts folded when a worker exits,
summing rules, merged windows, and two real processes sharing one folder."""

import multiprocessing
import os
import threading
import time

import numpy as np
import pytest

from mlmon_middleware import Monitor, MonitorConfig
from mlmon_middleware.exchange import Exchange
from mlmon_middleware.host import newest
from mlmon_middleware.merge import fold_counters, merged_counts, merged_families
from mlmon_middleware.workers import LeaderLock, Worker, shared_folder

COUNTER = ["c", "", "counter", "", [["c_total", {"route": "/p"}, 0.0]]]


def state(count: float, gauge: float, rows: int = 0) -> dict:
    counter = [COUNTER[0], "", "counter", "", [["c_total", {"route": "/p"}, count], ["c_created", {"route": "/p"}, 1.0]]]
    hist = ["h", "", "histogram", "", [["h_bucket", {"le": "1.0"}, count], ["h_bucket", {"le": "+Inf"}, count],
                                       ["h_count", {}, count], ["h_sum", {}, count / 2]]]
    return {"metrics": [counter, hist, ["g", "", "gauge", "", [["g", {}, gauge]]],
                        ["mlmon_reservoir_size", "", "gauge", "", [["mlmon_reservoir_size", {}, float(rows)]]]],
            "models": {"m": {"predictions": {"ok": int(count)}, "labels": {"labelled": 1},
                             "feature_errors": {"x": {"non_finite": 1}}, "rows": rows}}}


def samples(families) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def test_counters_sum_gauges_are_the_leaders_and_exited_workers_still_count():
    exited = fold_counters({}, state(5, gauge=100, rows=9))
    live = {"1-a": state(2, gauge=7, rows=3), "2-b": state(3, gauge=8, rows=4)}
    got = samples(merged_families(live, exited, leader="2-b", per_worker=False))
    assert got[("c_total", (("route", "/p"),))] == 10
    assert got[("h_bucket", (("le", "+Inf"),))] == 10 and got[("h_sum", ())] == 5
    assert got[("g", ())] == 8  # the leader's
    assert got[("mlmon_reservoir_size", ())] == 7  # each worker's own rows, summed over running ones
    assert not any(name.endswith("_created") for name, _ in got)
    per = samples(merged_families(live, exited, leader="2-b", per_worker=True))
    assert {dict(k).get("worker"): v for (n, k), v in per.items() if n == "c_total"} == {"exited": 5, "1": 2, "2": 3}
    counts = merged_counts(live, exited, "m")
    assert counts["predictions"] == {"ok": 10} and counts["labels"] == {"labelled": 3}
    assert counts["feature_errors"] == {"x": {"non_finite": 3}} and counts["rows"] == 7


def _publish_and_exit(folder: str, count: float) -> None:
    Exchange(folder, Worker.current()).publish_state(state(count, gauge=1))


def test_an_exited_workers_counts_are_folded_and_totals_never_fall(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    ex = Exchange(str(tmp_path), Worker.current())
    ex.publish_state(state(1, gauge=0))
    child = ctx.Process(target=_publish_and_exit, args=(str(tmp_path), 4.0))
    child.start()
    child.join(30)
    shared = ex.states()  # the child has exited: its state is folded
    assert list(shared.live) == [Worker.current().key]
    assert shared.exited["models"]["m"]["predictions"] == {"ok": 4}
    me = Worker.current().key  # the exited worker's files are gone; this one's remain
    assert sorted(os.listdir(tmp_path)) == [f"answered-{me}", "exited.json", f"state-{me}.json", "states.lock"]
    total = samples(merged_families(shared.live, shared.exited, leader=None, per_worker=False))
    assert total[("c_total", (("route", "/p"),))] == 5


def _hold_the_lead(folder: str, ready, release) -> None:
    lock = LeaderLock(folder)
    assert lock.try_acquire()
    ready.set()
    release.wait(30)
    os._exit(0)  # no clean-up: the kernel releases the lock


def test_the_lead_passes_when_its_holder_dies(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_the_lead, args=(str(tmp_path), ready, release))
    holder.start()
    assert ready.wait(30)
    mine = LeaderLock(str(tmp_path))
    assert not mine.try_acquire()
    assert mine.leader_key() == Worker(holder.pid, Worker.current().start and Worker.from_key(mine.leader_key()).start).key
    release.set()
    holder.join(30)
    assert mine.try_acquire() and mine.leader_key() == Worker.current().key


def test_newest_rows_of_several_windows_are_the_servers_newest():
    rng = np.random.default_rng(3)
    times = rng.permutation(100).astype(float)
    windows = []
    for worker in range(3):  # each worker keeps its own newest 10 rows
        mine = np.sort(times[worker::3])[-10:]
        categorical = np.array([[str(t)] for t in mine], dtype=object)
        windows.append({"time": mine, "numeric": mine[:, None] * 2, "categorical": categorical})
    merged = newest(windows, capacity=10)
    assert merged["time"].tolist() == list(range(90, 100))
    assert merged["numeric"][:, 0].tolist() == [2.0 * t for t in range(90, 100)]
    assert merged["categorical"][:, 0].tolist() == [str(float(t)) for t in range(90, 100)]


def test_windows_travel_with_missing_categories_and_schemas(tmp_path):
    ex = Exchange(str(tmp_path), Worker.current())
    window = {"time": np.array([1.0, 2.0]), "numeric": np.array([[np.nan], [1.5]]),
              "categorical": np.array([[None], ["é"]], dtype=object)}
    ex.publish_windows(7, {"m": {"features": window, "outputs": {}, "schema": {"x": "numeric", "c": "categorical"},
                                 "attributions": {}}})
    me = {Worker.current().key}
    got = ex.windows(7, timeout=1.0, workers=me)[Worker.current().key]["m"]
    assert got["fresh"] and got["schema"] == {"x": "numeric", "c": "categorical"}
    assert np.isnan(got["features"]["numeric"][0, 0]) and got["features"]["numeric"][1, 0] == 1.5
    assert got["features"]["categorical"].tolist() == [[None], ["é"]]
    stale = ex.windows(8, timeout=0.1, workers=me)[Worker.current().key]["m"]  # nobody answered request 8 in time
    assert not stale["fresh"] and stale["features"]["time"].tolist() == [1.0, 2.0]


def test_a_process_alone_shares_nothing_unless_told(tmp_path):
    assert shared_folder(MonitorConfig()) is None  # pytest is no process manager's worker
    assert shared_folder(MonitorConfig(multiprocess_dir="off"), group="x") is None
    assert shared_folder(MonitorConfig(multiprocess_dir=str(tmp_path / "s"))) == str(tmp_path / "s")
    assert os.stat(tmp_path / "s").st_mode & 0o777 == 0o700
    open_folder = tmp_path / "open"
    open_folder.mkdir(mode=0o777)
    os.chmod(open_folder, 0o777)  # anyone could plant files here: not shared through
    with pytest.raises(PermissionError, match="not a private folder"):
        shared_folder(MonitorConfig(multiprocess_dir=str(open_folder)))
    (tmp_path / "link").symlink_to(tmp_path / "s")
    with pytest.raises(PermissionError, match="not a private folder"):
        shared_folder(MonitorConfig(multiprocess_dir=str(tmp_path / "link")))
    mon = Monitor(MonitorConfig(tracing=False, check_interval=0))
    mon.start()
    try:
        assert mon.host is None and mon.health()["workers"] is None
    finally:
        mon.shutdown()


def _serve_one_worker(folder: str, n: int, done) -> None:
    mon = Monitor(MonitorConfig(tracing=False, check_interval=0, multiprocess_dir=folder, share_interval=0.1))
    model = mon.model("m", version="1")
    for i in range(n):
        model.record({"x": float(i)}, {"prediction": 1.0})
    mon.flush()
    done.set()
    time.sleep(30)


@pytest.mark.parametrize("others", [1, 2])
def test_workers_sharing_a_folder_check_every_row(tmp_path, others):
    ctx = multiprocessing.get_context("spawn")
    events = [ctx.Event() for _ in range(others)]
    procs = [ctx.Process(target=_serve_one_worker, args=(str(tmp_path), 50 * (i + 1), e), daemon=True)
             for i, e in enumerate(events)]
    for p in procs:
        p.start()
    mon = Monitor(MonitorConfig(tracing=False, check_interval=0, multiprocess_dir=str(tmp_path), share_interval=0.1))
    try:
        assert all(e.wait(60) for e in events)
        model = mon.model("m", version="1")
        model.record({"x": -1.0}, {"prediction": 0.0})
        expected = 1 + sum(50 * (i + 1) for i in range(others))
        deadline = time.monotonic() + 30
        while mon.health()["models"]["m"]["predictions"]["ok"] < expected and time.monotonic() < deadline:
            time.sleep(0.1)
        assert mon.health()["models"]["m"]["predictions"] == {"ok": expected, "error": 0}
        report = model.check_now(scheduled=False)
        assert report["rows"] == expected and report["workers"] == {"merged": 1 + others, "stale": 0}  # every worker's rows
        mon.start()
        mine = Worker.current().key
        Exchange(str(tmp_path), Worker.current()).publish_windows(1, {})  # as when asked
    finally:
        mon.shutdown()
        for p in procs:
            p.kill()
            p.join(10)
    assert not (tmp_path / f"windows-{mine}.npz").exists()  # recent inputs do not outlive the worker
    assert (tmp_path / f"state-{mine}.json").exists()  # its counts stay in the totals


def test_an_unusable_folder_leaves_the_worker_alone_and_says_so(tmp_path):
    folder = tmp_path / "open"
    folder.mkdir()
    os.chmod(folder, 0o777)
    mon = Monitor(MonitorConfig(tracing=False, check_interval=0, multiprocess_dir=str(folder)))
    try:
        mon.model("m").record({"x": 1.0}, {"prediction": 1})
        mon.flush()
        health = mon.health()
        assert health["workers"] is None and health["monitor_errors"] == {"share": 1}
        assert health["status"] == "degraded" and health["models"]["m"]["predictions"]["ok"] == 1  # serving went on
    finally:
        mon.shutdown()


def test_a_scrape_and_the_share_thread_publishing_at_once_never_hide_a_worker(tmp_path):
    ex = Exchange(str(tmp_path), Worker.current())
    ex.publish_state(state(0, gauge=0))
    errors, seen, stop = [], [], threading.Event()

    def publish() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                ex.publish_state(state(n, gauge=0))
            except Exception as exc:  # noqa: BLE001 - any failure is the finding
                errors.append(exc)

    threads = [threading.Thread(target=publish) for _ in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        seen.append(list(ex.states().live))
    stop.set()
    for t in threads:
        t.join()
    assert errors == [] and seen and all(keys == [Worker.current().key] for keys in seen)


def test_a_warmup_baseline_and_alert_states_pass_from_the_leader_to_the_others(tmp_path):
    """Through the exchange folder, as the workers of a server: the baseline is published once,
    beside the results, which only name it (it holds the reference rows of the multivariate
    detectors: resending it with every check would cost more than the check's report)."""
    from mlmon_middleware.host import HostShare

    def host(model):
        return HostShare(str(tmp_path), models=lambda: [model], errors=model.registry.errors, generation=lambda: 0,
                         flush=lambda: None, share_interval=1.0, capacity=1000, per_worker=False)

    leader = Monitor(MonitorConfig(tracing=False, check_interval=0)).model("m", warmup_rows=1200)
    rng = np.random.default_rng(5)
    for x, y in rng.normal(size=(1300, 2)):
        leader.record({"x": float(x), "y": float(y)}, {"prediction": 1.0})
    leader.check_now()  # a scheduled check adopts a warm-up baseline from the first rows
    assert leader.baseline is not None and leader.baseline.warmup and leader.baseline.classifier is not None
    leading = host(leader)
    leading.publish_results()
    [result] = tmp_path.glob("result-*.json")
    [baseline] = tmp_path.glob("baseline-*.json")
    assert result.stat().st_size < baseline.stat().st_size / 5
    published = baseline.stat().st_mtime_ns
    follower = Monitor(MonitorConfig(tracing=False, check_interval=0)).model("m")
    host(follower).adopt()
    assert follower.baseline is not None and follower.baseline.to_json() == leader.baseline.to_json()
    assert follower.drift_report() == leader.checker.report
    leader.check_now()
    leading.publish_results()
    assert baseline.stat().st_mtime_ns == published  # the same baseline is not written again


def test_fleet_bin_counters_cover_categorical_features_with_the_in_process_shares_and_dof():
    from scipy import stats as sps

    from mlmon_middleware.baseline import Baseline
    from mlmon_middleware.counters import BinCounter
    from mlmon_middleware.drift import stats

    rng = np.random.default_rng(11)
    rows = [{"x": float(x), "c": str(c)} for x, c in zip(rng.normal(size=2000), rng.choice(["a", "b", "c"], 2000, p=[.5, .3, .2]))]
    baseline = Baseline.from_data(rows)
    bins = BinCounter(baseline, alpha=0.01)
    assert bins.critical["c"] == pytest.approx(sps.chi2.isf(0.01 / 2, 2), abs=1e-12)  # 3 categories: 2 dof
    assert bins.critical["x"] == pytest.approx(sps.chi2.isf(0.01 / 2, len(baseline.features["x"]["bin_edges"]) - 2), abs=1e-12)
    current = np.array([[v] for v in rng.choice(["a", "b", "c", "new", None], 500)], dtype=object)
    bins.add(rng.normal(size=(500, 1)), current)
    counts = np.array([n for f, _, n in bins.items() if f == "c"], dtype=float)
    shares = np.array([s for f, _, s in bins.reference_shares() if f == "c"])
    profile = baseline.features["c"]
    names, ref, cur = stats.category_counts(profile["frequencies"], stats.reference_rows(profile), list(current[:, 0]))
    assert counts.tolist() == cur.tolist() and shares[:3] == pytest.approx(ref[:3] / ref.sum(), abs=1e-12)
    assert stats.psi(shares, counts / counts.sum()) == pytest.approx(stats.psi(ref / ref.sum(), cur / cur.sum()), abs=1e-12)


def test_a_published_state_counts_the_records_its_metrics_count(tmp_path):
    mon = Monitor(MonitorConfig(tracing=False, check_interval=0, multiprocess_dir=str(tmp_path), flush_interval=3600))
    try:
        model = mon.model("m")
        for i in range(3):
            model.record({"x": float(i)}, {"prediction": 1.0})  # still queued: collecting runs the pipeline
        state = mon.host.own_state()
        predictions = sum(v for n, _, kind, _, samples in state["metrics"] if n == "mlmon_predictions"
                          for s, _, v in samples if s == "mlmon_predictions_total")
        assert predictions == 3 and state["models"]["m"]["predictions"] == {"ok": 3, "error": 0}
    finally:
        mon.shutdown()


def test_a_worker_is_folded_once_even_if_its_file_survives_the_fold(tmp_path):
    gone = Worker(2**22 + 12345, "not-a-start-time")  # no such process
    Exchange(str(tmp_path), gone).publish_state(state(4, gauge=0))
    ex = Exchange(str(tmp_path), Worker.current())
    assert ex.states().exited["models"]["m"]["predictions"] == {"ok": 4}
    Exchange(str(tmp_path), gone).publish_state(state(4, gauge=0))  # as if a crash had left the file
    assert ex.states().exited["models"]["m"]["predictions"] == {"ok": 4}
    assert not (tmp_path / f"state-{gone.key}.json").exists()


def _stay_alive(folder: str, token_seen, stop, stopped: bool) -> None:
    """A worker (this child process) that published once and then answers no request: stopped
    (its monitor shut down while the process lives on), or stuck."""
    ex = Exchange(folder, Worker.current())
    ex.publish_state(state(1, gauge=0))
    if stopped:
        from mlmon_middleware.exchange import STOPPED

        ex.answer(STOPPED)
    token_seen.set()
    stop.wait(30)


@pytest.mark.parametrize("stopped", [True, False])
def test_a_scrape_waits_for_a_stuck_worker_only_up_to_its_limit_and_never_for_a_stopped_one(tmp_path, stopped):
    ctx = multiprocessing.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_stay_alive, args=(str(tmp_path), ready, stop, stopped))
    child.start()
    try:
        assert ready.wait(30)
        ex = Exchange(str(tmp_path), Worker.current())
        token = ex.ask("states")
        started = time.monotonic()
        shared = ex.states(token, timeout=1.0)
        waited = time.monotonic() - started
        assert len(shared.live) == 1  # the other worker's last state counts either way
        assert (waited < 0.5) if stopped else (waited >= 1.0)
    finally:
        stop.set()
        child.join(30)
