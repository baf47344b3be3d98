"""A small service for the fleet tests: one numeric and one categorical feature, a baseline from
a fixed seed, alerts after one drifting check, and a webhook when ``FLEET_WEBHOOK`` is set.
Served by real uvicorn / gunicorn processes (``uvicorn fleet_app:app --app-dir tests``)."""

import os

import numpy as np
from fastapi import FastAPI

from mlmon_fastapi import instrument_app
from mlmon_middleware import Baseline, DriftPolicy, WebhookNotifier, monitor

rng = np.random.default_rng(20261206)
BASELINE = Baseline.from_data([{"x": float(x), "color": str(c)}
                               for x, c in zip(rng.normal(size=3000), rng.choice(["red", "green", "blue"], 3000))],
                              model="fleet")
WEBHOOK = os.environ.get("FLEET_WEBHOOK")

app = FastAPI()


@app.post("/predict")
@monitor(model="fleet", version="1", baseline=BASELINE, drift_policy=DriftPolicy(fire_after=1, resolve_after=1),
         on_alert=WebhookNotifier(WEBHOOK, dedupe_seconds=0) if WEBHOOK else None)
def predict(row: dict) -> dict:
    return {"prediction": float(row["x"] > 0)}


instrument_app(app)
