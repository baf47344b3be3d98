"""A bounded traffic generator for the demo service: live requests whose inputs drift.

    python examples/fastapi_sklearn/traffic.py --url http://127.0.0.1:8000 --duration 60 --drift-after 20

Sends single and batch predictions at ``--rate`` requests/s to a service on this machine (every
``explain_every``-th single one asks for its explanation);
after ``--drift-after`` seconds the applicant population starts moving (``data.make_rows``'s
drift ramps to 1 over ``--drift-ramp`` seconds). Stops after ``--duration`` seconds or
``--max-requests`` requests, whichever comes first, or on Ctrl-C.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import httpx
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from data import default_risk, make_rows  # noqa: E402


def drive(url: str, duration: float, rate: float, drift_after: float, drift_ramp: float = 30.0,
          max_requests: int = 1_000_000, batch_every: int = 10, seed: int = 11,
          report_every: float = 10.0, label_delay: float | None = None, explain_every: int = 10,
          token: str | None = None) -> dict[str, int]:
    """Send the traffic; return counts of requests by status code ("error" for failed connections).

    With ``label_delay``, the ground truth of single predictions is posted to ``/mlmon/feedback``
    that many seconds later (the delayed labels of a real service), for about half of them, with
    the service's API ``token`` (posting labels needs it)."""
    if not url.startswith(("http://127.", "http://localhost")):
        raise SystemExit("traffic.py only sends to this machine (127.0.0.0/8 or localhost)")
    rng = np.random.default_rng(seed)
    counts: dict[str, int] = {}
    start = last_report = time.monotonic()
    sent = 0
    pending: list[tuple[float, str, int]] = []  # (when, prediction id, label)
    with httpx.Client(base_url=url, timeout=10.0) as client:
        while sent < max_requests:
            elapsed = time.monotonic() - start
            if elapsed >= duration:
                break
            drift = float(np.clip((elapsed - drift_after) / drift_ramp, 0.0, 1.0))
            try:
                if sent % batch_every == batch_every - 1:
                    response = client.post("/predict/batch", json=make_rows(8, rng, drift))
                else:
                    row = make_rows(1, rng, drift)[0]
                    explain = {"X-MLMon-Explain": "true"} if explain_every and sent % explain_every == 0 else {}
                    response = client.post("/predict", json=row, headers=explain)
                    if label_delay is not None and response.status_code == 200 and rng.random() < 0.5:
                        truth = int(default_risk([row], rng)[0])
                        pending.append((time.monotonic() + label_delay, response.headers["x-prediction-id"], truth))
                key = str(response.status_code)
            except httpx.HTTPError:
                key = "error"
            counts[key] = counts.get(key, 0) + 1
            sent += 1
            due = [p for p in pending if p[0] <= time.monotonic()]
            if due:
                pending = [p for p in pending if p[0] > time.monotonic()]
                labels = [{"prediction_id": pid, "actual": truth} for _, pid, truth in due]
                try:
                    client.post("/mlmon/feedback", json=labels,
                                headers={"Authorization": f"Bearer {token}"} if token else {})
                except httpx.HTTPError:
                    counts["feedback_error"] = counts.get("feedback_error", 0) + 1
            if report_every and time.monotonic() - last_report >= report_every:
                last_report = time.monotonic()
                print(f"  t={elapsed:5.0f}s  sent={sent:6d}  drift={drift:.2f}  status={counts}", flush=True)
            pause = start + sent / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--drift-after", type=float, default=20.0)
    parser.add_argument("--drift-ramp", type=float, default=30.0)
    parser.add_argument("--max-requests", type=int, default=1_000_000)
    args = parser.parse_args()
    try:
        print(drive(args.url, args.duration, args.rate, args.drift_after, args.drift_ramp, args.max_requests))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
