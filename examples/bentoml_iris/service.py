"""An iris classifier served by BentoML and monitored by mlmon with one decorator.

    bentoml serve service:IrisClassifier --working-dir examples/bentoml_iris --host 127.0.0.1

Trains on scikit-learn's bundled iris data at start-up (no downloads). Try:

    curl -X POST 127.0.0.1:3000/predict -H 'content-type: application/json' \\
         -d '{"input_data": [[5.1, 3.5, 1.4, 0.2]]}'
    curl 127.0.0.1:3000/mlmon/metrics

Traces (BentoML's server span with mlmon's span as its child, one service name): BentoML's own
``tracing`` configuration, in ``BENTOML_CONFIG``, as docs/bentoml.md#traces shows.
"""

from __future__ import annotations

import bentoml
import numpy as np
from mlmon_bentoml import monitored
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@monitored(model="iris", version="1.0.0", features=FEATURES, class_names=["setosa", "versicolor", "virginica"])
@bentoml.service(workers=2)
class IrisClassifier:
    def __init__(self) -> None:
        data = load_iris()
        self.model = LogisticRegression(max_iter=500).fit(data.data, data.target)

    @bentoml.api
    def predict(self, input_data: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(input_data)

    @bentoml.api(batchable=True)
    def classify(self, input_data: np.ndarray) -> np.ndarray:
        return self.model.predict(input_data)
