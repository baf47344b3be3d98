"""BentoML adapter: ``@monitored(...)`` on a ``@bentoml.service`` class.

    import bentoml
    from mlmon_bentoml import monitored

    @monitored(model="iris", version="1.0.0", baseline="baseline.json")
    @bentoml.service(workers=2)
    class IrisClassifier:
        @bentoml.api
        def predict(self, input_data: np.ndarray) -> np.ndarray: ...

Each API method (or those named by ``apis=``) is wrapped with :func:`mlmon_middleware.monitor`
*under* ``@bentoml.api``, so it sees the decoded arguments (arrays, pydantic models, DataFrames;
a batchable API's whole batch, recorded row by row) and BentoML's input and output schemas are
unchanged. :class:`~mlmon_middleware.MLMonitorMiddleware` is added with
``Service.add_asgi_middleware`` (for ``X-Prediction-ID``, the status code and explanations), and
mlmon's routes are mounted under ``/mlmon`` (``/mlmon/metrics``, ``/mlmon/health``, ..., and the
dashboard page at ``/mlmon/``): BentoML
keeps ``/metrics`` and its global ``prometheus_client`` registry; mlmon uses neither, nor sets
global OpenTelemetry providers.

Traces: in each worker, mlmon's ``mlmon.inference {model}`` spans go through BentoML's own tracer
provider (:mod:`mlmon_bentoml.worker`), unless the monitor's config gives one: they are children
of BentoML's HTTP server spans, sampled with BentoML's ``tracing.sample_rate`` and exported by
its ``tracing`` exporter under its ``service.name``, and mlmon's metrics carry that resource.

Workers: ``workers=N`` are N processes; each starts its own monitor when BentoML starts it and
shuts it down (queue and log written) when BentoML stops it, through the app's lifespan that
:class:`~mlmon_middleware.MLMonitorMiddleware` sees, with its own ``service.instance.id``. The
adapter names the service to mlmon, so its workers share (``docs/deployment.md``):
``/mlmon/metrics`` on the shared socket, whichever worker the kernel picks, answers with every
worker's counters summed, one worker checks every worker's rows, and all answer alike. With
``MLMON_PROMETHEUS_PORT=P`` worker ``i`` (from 1) also serves ``P + i - 1`` (or the next free
port), each for the whole service: scrape one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import bentoml
from starlette.applications import Starlette
from starlette.types import Receive, Scope, Send

from mlmon_bentoml.worker import lend_tracer_provider, worker_index
from mlmon_middleware import MLMonitorMiddleware, Monitor
from mlmon_middleware import monitor as monitor_call
from mlmon_middleware.routes import routes

__all__ = ["monitored", "worker_index"]

S = TypeVar("S")


class _WorkerMiddleware(MLMonitorMiddleware):
    """:class:`~mlmon_middleware.MLMonitorMiddleware` that, when the worker's lifespan starts and
    before it starts monitoring, lends BentoML's tracer provider to the monitor
    (:func:`~mlmon_bentoml.worker.lend_tracer_provider`)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            lend_tracer_provider(self.registry)
        await super().__call__(scope, receive, send)


def monitored(model: str, version: str = "unknown", *, apis: Sequence[str] | None = None,
              registry: Monitor | None = None, **options: Any) -> Callable[[S], S]:
    """Monitor a BentoML service's APIs as inferences of ``model``; ``options`` are those of
    :func:`mlmon_middleware.monitor` (``features``, ``baseline``, ``explain``, ...)."""
    def decorate(service: S) -> S:
        if not isinstance(service, bentoml.Service):
            raise TypeError("@monitored goes above @bentoml.service: it takes the service it makes")
        mon = registry or Monitor.get()
        mon.port_offset = lambda: max(worker_index() - 1, 0)
        # the service's workers share their rows and counts (their command lines differ by worker id)
        mon.worker_group = lambda: f"bentoml:{service.name}" if worker_index() > 0 else None
        names = list(apis) if apis is not None else list(service.apis)
        unknown = [n for n in names if n not in service.apis]
        if unknown:
            raise ValueError(f"apis {unknown} are not APIs of {service.name}; its APIs: {sorted(service.apis)}")
        for name in names:
            method = service.apis[name]
            method.func = monitor_call(model=model, version=version, route=method.route, registry=mon,
                                       **options)(method.func)
        service.add_asgi_middleware(_WorkerMiddleware, registry=mon)
        # the middleware sees the app's lifespan (BentoML passes it through its middleware stack):
        # it starts monitoring at each worker's start, with BentoML's tracer provider, and shuts
        # it down at its stop
        service.mount_asgi_app(Starlette(routes=routes(mon, metrics="/metrics", health="/health", drift="/drift",
                                                       feedback="/feedback", performance="/performance",
                                                       alerts="/alerts", predictions="/predictions", dashboard="/",
                                                       registry="/registry", mounted_at="/mlmon")),
                               path="/mlmon", name="mlmon")
        return service

    return decorate
