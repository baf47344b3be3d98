"""The demo's model service: FastAPI + scikit-learn, monitored with one decorator per route.

    MLMON_DEMO_DIR=.demo uvicorn service:app --app-dir examples/fastapi_sklearn --host 127.0.0.1

``MLMON_DEMO_DIR`` holds ``model.pkl``, ``explainer.pkl`` and ``baseline.json`` from ``train.py``.
A request with the header ``X-MLMon-Explain: true`` gets the SHAP explanation of its prediction
(numeric features) in the answer's ``explanation`` field.
"""

from __future__ import annotations

import os
import pathlib
import pickle
from typing import Literal

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from mlmon_fastapi import instrument_app
from mlmon_middleware import Explain, monitor

DEMO_DIR = pathlib.Path(os.environ.get("MLMON_DEMO_DIR", ".demo"))
MODEL = pickle.loads((DEMO_DIR / "model.pkl").read_bytes())
BASELINE = DEMO_DIR / "baseline.json"
# one model, served by two routes: the same options on both (the first call creates the model)
MONITORING = {"model": "credit-risk", "version": "1.0.0", "baseline": BASELINE,
              "explain": Explain(pickle.loads((DEMO_DIR / "explainer.pkl").read_bytes()), label="default risk"),
              "segments": ("region", "channel"), "performance": {"protected": "region"}}


class Applicant(BaseModel):
    age: float = Field(ge=0)
    income: float
    debt_ratio: float
    credit_score: float
    employment_years: float
    num_accounts: float
    num_late_payments: float
    loan_amount: float
    loan_term_months: float
    savings: float
    monthly_expenses: float
    dependents: float
    credit_utilization: float
    years_at_address: float
    region: str
    channel: Literal["web", "branch", "partner"]


class Risk(BaseModel):
    prediction: float = Field(description="probability of default")
    decision: Literal["approve", "review"]


def _score(applicants: list[Applicant]) -> list[Risk]:
    import pandas as pd

    frame = pd.DataFrame([a.model_dump() for a in applicants])
    probabilities = MODEL.predict_proba(frame)[:, 1]
    return [Risk(prediction=float(p), decision="review" if p > 0.5 else "approve") for p in probabilities]


app = FastAPI(title="credit-risk (mlmon demo)")


@app.post("/predict", response_model=Risk)
@monitor(**MONITORING)
def predict(applicant: Applicant) -> Risk:
    return _score([applicant])[0]


@app.post("/predict/batch", response_model=list[Risk])
@monitor(**MONITORING)
async def predict_batch(applicants: list[Applicant]) -> list[Risk]:
    if not applicants:
        raise HTTPException(status_code=422, detail="empty batch")
    return _score(applicants)


instrument_app(app)
