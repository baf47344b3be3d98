"""A small service with two models and no baselines, for the dashboard page test: served by
uvicorn in its own process (``uvicorn two_models_app:app --app-dir tests``)."""

from fastapi import FastAPI

from mlmon_fastapi import instrument_app
from mlmon_middleware import monitor

app = FastAPI()


@app.post("/alpha")
@monitor(model="alpha", version="1")
def alpha(row: dict) -> dict:
    return {"prediction": 2.0 * row["x"]}


@app.post("/beta")
@monitor(model="beta", version="3")
def beta(row: dict) -> dict:
    return {"prediction": 1.0 if row["x"] > 0 else 0.0}


instrument_app(app)
