"""Synthetic credit-risk applicants: 14 numeric features and 2 categorical ones.

``make_rows(n, rng, drift=d)`` draws applicants; ``drift`` in [0, 1] moves the population
the way a real market moves (incomes fall, debt ratios and utilisation rise, more applicants
from one region and channel) so the demo and the tests have something to detect.
"""

from __future__ import annotations

import numpy as np

REGIONS = ("north", "south", "east", "west")
CHANNELS = ("web", "branch", "partner")
NUMERIC = ("age", "income", "debt_ratio", "credit_score", "employment_years", "num_accounts",
           "num_late_payments", "loan_amount", "loan_term_months", "savings", "monthly_expenses",
           "dependents", "credit_utilization", "years_at_address")
FEATURES = NUMERIC + ("region", "channel")


def make_rows(n: int, rng: np.random.Generator, drift: float = 0.0) -> list[dict]:
    """``n`` applicants as dicts; ``drift`` = 0 is the training population."""
    age = rng.normal(41, 11, n).clip(18, 90)
    income = rng.lognormal(np.log(52_000 * (1 - 0.35 * drift)), 0.45, n)
    debt_ratio = rng.beta(2 + 3 * drift, 5, n)
    cols = {
        "age": age.round(0),
        "income": income.round(2),
        "debt_ratio": debt_ratio.round(4),
        "credit_score": rng.normal(690 - 60 * drift, 55, n).clip(300, 850).round(0),
        "employment_years": rng.gamma(2.0, 3.5, n).round(1),
        "num_accounts": rng.poisson(4, n).astype(float),
        "num_late_payments": rng.poisson(0.6 + 1.5 * drift, n).astype(float),
        "loan_amount": rng.lognormal(np.log(15_000), 0.6, n).round(2),
        "loan_term_months": rng.choice([12.0, 24.0, 36.0, 48.0, 60.0], n),
        "savings": rng.lognormal(np.log(8_000 * (1 - 0.5 * drift)), 0.9, n).round(2),
        "monthly_expenses": (income / 12 * rng.uniform(0.3, 0.7, n)).round(2),
        "dependents": rng.poisson(1.1, n).astype(float),
        "credit_utilization": rng.beta(2 + 4 * drift, 4, n).round(4),
        "years_at_address": rng.gamma(2.0, 2.5, n).round(1),
    }
    region_p = np.array([0.25, 0.25, 0.25, 0.25]) * (1 - drift) + np.array([0.1, 0.1, 0.1, 0.7]) * drift
    channel_p = np.array([0.5, 0.3, 0.2]) * (1 - drift) + np.array([0.2, 0.1, 0.7]) * drift
    region = rng.choice(REGIONS, n, p=region_p)
    channel = rng.choice(CHANNELS, n, p=channel_p)
    return [{**{k: float(v[i]) for k, v in cols.items()}, "region": str(region[i]), "channel": str(channel[i])}
            for i in range(n)]


def default_risk(rows: list[dict], rng: np.random.Generator) -> np.ndarray:
    """Ground truth: 1 when the applicant defaults, from a noisy logistic model of the features."""
    x = np.array([[r["debt_ratio"], r["credit_score"], r["num_late_payments"], r["credit_utilization"],
                   np.log(r["income"]), float(r["channel"] == "partner")] for r in rows])
    logit = -1.0 + 3.0 * (x[:, 0] - 0.3) - 0.012 * (x[:, 1] - 690) + 0.6 * x[:, 2] + 2.0 * (x[:, 3] - 0.35) \
        - 0.8 * (x[:, 4] - np.log(52_000)) + 0.4 * x[:, 5]
    return (rng.random(len(rows)) < 1 / (1 + np.exp(-logit))).astype(int)
