"""A nightly batch job, monitored, whose predictions are labelled weeks later.

No web server here: ``@monitor`` on the scoring function records each call (inputs, outputs,
drift windows, the prediction log), and ``current_prediction_id()`` right after a call gives the
id the log holds, to be stored beside the score. When the outcomes arrive, labelling is one call
per id, no lookup in the log.

    python examples/batch_scoring/score.py [--store DIR]

(``DIR`` defaults to a new temporary folder; it holds the SQLite prediction log.)
"""

from __future__ import annotations

import argparse
import random
import tempfile

from mlmon_middleware import Monitor, MonitorConfig, current_prediction_id, monitor


def run(store_dir: str, customers: int = 200, seed: int = 7) -> dict[str, int]:
    """Score ``customers`` made-up customers, then label them; returns what the log says."""
    mon = Monitor(MonitorConfig(tracing=False, store_dir=store_dir, service_name="churn-batch"))
    mon.start()

    @monitor(model="churn", version="3.1", registry=mon)
    def score(customer: dict) -> float:
        """The model: short tenure and many support calls mean churn."""
        return min(1.0, 0.05 * customer["support_calls"] + (0.5 if customer["tenure_months"] < 6 else 0.1))

    rng = random.Random(seed)
    scored = []  # what the job writes out: (customer id, prediction id, score)
    for n in range(customers):
        customer = {"tenure_months": rng.randint(0, 60), "support_calls": rng.randint(0, 10),
                    "plan": rng.choice(["basic", "pro"])}
        churn = score(customer)
        scored.append((n, current_prediction_id(), churn))

    # weeks later: who actually left (here: made up from the score)
    mm = mon.model("churn")
    mon.flush()
    outcomes = [(pid, int(rng.random() < churn), None) for _, pid, churn in scored]
    result = mm.record_outcomes(outcomes)
    mon.shutdown()
    return {"scored": len(scored), "labelled": result["labelled"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=None, help="folder of the prediction log (default: a temporary one)")
    args = parser.parse_args()
    store = args.store or tempfile.mkdtemp(prefix="mlmon-batch-")
    summary = run(store)
    print(f"scored {summary['scored']} customers, labelled {summary['labelled']}; prediction log in {store}")


if __name__ == "__main__":
    main()
