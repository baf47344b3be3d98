"""What the adapter reads of the BentoML worker it runs in: its number, and its tracer provider.

The number comes from BentoML's public ``bentoml.server_context``. The tracer provider has no
public API: BentoML builds it from its ``tracing`` configuration in
``BentoMLContainer.tracer_provider`` (sampler, resource named after the service, exporter) and
hands it to its own HTTP instrumentation only, never installing it globally. mlmon's spans must go
through it to be children of BentoML's server spans that are exported with them, under one
``service.name``. :func:`bentoml_tracer_provider` is the one place that reaches into BentoML's
private modules, and only in the BentoML releases it was checked against (:data:`CHECKED`, the
range ``pyproject.toml`` pins); elsewhere, or when that private path is gone, it logs a warning
(once per worker: it is called at the worker's start) and gives None, and mlmon's spans go where
they would without BentoML (the app's global SDK tracer provider, else mlmon's own OTLP exporter:
``docs/metrics.md``), not joined to BentoML's.

>>> checked("1.4.39"), checked("1.4.0rc1"), checked("1.5.0"), checked("2.4.1")
(True, True, False, False)
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any

import bentoml

from mlmon_middleware import Monitor

__all__ = ["CHECKED", "bentoml_tracer_provider", "checked", "lend_tracer_provider", "samples", "worker_index"]

logger = logging.getLogger("mlmon_middleware")

#: the BentoML (major, minor) whose private ``BentoMLContainer.tracer_provider`` is read; keep
#: equal to the ``bentoml>=1.4,<1.5`` pin of ``pyproject.toml``
CHECKED = (1, 4)


def worker_index() -> int:
    """This process's BentoML worker number (1, 2, ...), or 0 outside a BentoML worker."""
    return int(getattr(bentoml.server_context, "worker_index", None) or 0)


def checked(version: str) -> bool:
    """Whether BentoML ``version`` is a release of :data:`CHECKED`."""
    return tuple(int(part) for part in re.findall(r"\d+", version)[:2]) == CHECKED


def bentoml_tracer_provider() -> Any | None:
    """BentoML's tracer provider in this worker: the one its HTTP server spans go through, built
    from its ``tracing`` configuration; None, with a warning, outside :data:`CHECKED` or when the
    private path to it is gone.

    Call it in a worker once BentoML has named the service (at the app's lifespan start, not
    while the service module is imported): BentoML builds the provider once, on first use, and
    names its resource after the service then."""
    if not checked(bentoml.__version__):
        logger.warning("mlmon: BentoML %s is not %d.%d: mlmon's spans do not go through BentoML's tracer provider "
                       "(they are not joined to BentoML's traces)", bentoml.__version__, *CHECKED)
        return None
    try:
        from bentoml._internal.configuration.containers import BentoMLContainer

        return BentoMLContainer.tracer_provider.get()
    except (ImportError, AttributeError) as exc:
        logger.warning("mlmon: BentoML's tracer provider cannot be read (%s: %s): mlmon's spans are not joined "
                       "to BentoML's traces", type(exc).__name__, exc)
        return None


def samples(provider: Any) -> bool:
    """Whether ``provider``'s sampler keeps any span it starts itself: a root span of trace id 0,
    which every ratio sampler above 0 keeps, is sampled. BentoML's default ``sample_rate`` is 0:
    then no span of BentoML's is recorded, and mlmon's would cost its pipeline about 5 µs each
    for nothing (measured: a dropped span of the SDK).

    >>> from opentelemetry.sdk.trace import TracerProvider
    >>> from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio
    >>> [samples(TracerProvider(sampler=ParentBasedTraceIdRatio(rate))) for rate in (0.0, 0.001)]
    [False, True]
    """
    sampler = getattr(provider, "sampler", None)
    return sampler is None or sampler.should_sample(None, 0, "mlmon.inference").decision.is_sampled()


def lend_tracer_provider(registry: Monitor) -> None:
    """In a BentoML worker, before ``registry`` starts its telemetry: have mlmon's spans (and the
    resource of its metrics) go through BentoML's tracer provider when BentoML traces (its
    ``sample_rate`` above 0), unless the monitor's config names a provider of its own. Outside a
    worker (``Service.to_asgi()`` in a test) nothing changes."""
    if registry.config.tracer_provider is not None or worker_index() == 0:
        return
    provider = bentoml_tracer_provider()
    if provider is not None and samples(provider):
        registry.config = dataclasses.replace(registry.config, tracer_provider=provider)
    elif registry.config.service_name is None and getattr(bentoml.server_context, "service_name", None):
        # not tracing: mlmon's metrics still carry the service's name (BentoML's public context)
        registry.config = dataclasses.replace(registry.config, service_name=bentoml.server_context.service_name)
