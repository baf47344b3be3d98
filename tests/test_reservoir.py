import threading

import numpy as np

from mlmon_middleware.reservoir import SlidingWindow


def test_window_matches_a_reference_list_on_random_batches():
    rng = np.random.default_rng(1)
    window = SlidingWindow(50, x=(3, float), c=(1, object))
    reference: list[tuple[float, list, str]] = []
    t = 0.0
    for _ in range(200):
        n = int(rng.integers(0, 80))  # includes batches larger than the window
        times = t + np.arange(n, dtype=float)
        t += n
        x = rng.normal(size=(n, 3))
        c = np.array([[f"k{int(v)}"] for v in rng.integers(0, 5, n)], dtype=object).reshape(n, 1)
        window.extend(times, x=x, c=c)
        reference.extend(zip(times, x.tolist(), c[:, 0].tolist()))
        reference = reference[-50:]
        snap = window.snapshot()
        assert snap["time"].tolist() == [r[0] for r in reference]
        assert snap["x"].tolist() == [r[1] for r in reference]
        assert snap["c"][:, 0].tolist() == [r[2] for r in reference]
    assert window.total == int(t) and len(window) == 50


def test_snapshot_is_a_copy_and_filters_by_time():
    window = SlidingWindow(4, x=(1, float))
    window.extend(np.array([1.0, 2.0, 3.0]), x=np.array([[1.0], [2.0], [3.0]]))
    snap = window.snapshot(since=2.0)
    assert snap["x"][:, 0].tolist() == [2.0, 3.0]
    snap["x"][:] = 99
    assert window.snapshot()["x"][:, 0].tolist() == [1.0, 2.0, 3.0]


def test_concurrent_writers_lose_no_rows():
    window = SlidingWindow(100_000, x=(1, float))

    def write(k: int) -> None:
        for i in range(200):
            window.extend(np.array([float(k)] * 5), x=np.full((5, 1), float(k * 1000 + i)))

    threads = [threading.Thread(target=write, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = window.snapshot()
    assert window.total == len(window) == 8 * 200 * 5
    values, counts = np.unique(snap["x"][:, 0], return_counts=True)
    assert len(values) == 1600 and set(counts) == {5}
