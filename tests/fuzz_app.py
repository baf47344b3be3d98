"""A service with no declared features, as the guide's ``Endpoint`` proxy example, for the memory
test under hostile input: served by uvicorn in its own process. With ``FUZZ_TWIN=1`` it is the
same app without any monitoring, the twin it is compared with."""

import os

from fastapi import FastAPI

app = FastAPI()
TWIN = os.environ.get("FUZZ_TWIN") == "1"


def predict(row: dict) -> dict:
    return {"prediction": 0.5}


def dynamic(row: dict) -> dict:
    return {"prediction": 0.5}


if TWIN:
    app.post("/predict")(predict)
    app.post("/dynamic")(dynamic)
    app.get("/mlmon/health")(lambda: {"status": "ok"})  # what the test's start-up wait asks for
else:
    from mlmon_fastapi import instrument_app
    from mlmon_middleware import Monitor, monitor

    app.post("/predict")(monitor(model="fuzz", version="1")(predict))

    def dynamic_monitored(row: dict) -> dict:
        """A model name taken from the request, as some multi-tenant services do."""
        answer = dynamic(row)
        Monitor.get().model(str(row.get("model", "m"))[:100]).record(row, answer)
        return answer

    app.post("/dynamic")(dynamic_monitored)
    instrument_app(app)
