"""Shared fixtures: a Monitor wired to the OTel SDK's in-memory reader and span exporter; a real
PostgreSQL server for the run, and a fresh database in it per test."""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mlmon_middleware import Monitor, MonitorConfig

from postgres_server import PostgresServer

# served by uvicorn in its own process; importing it here would register its models in this one
collect_ignore = ["two_models_app.py", "fuzz_app.py"]

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "fastapi_sklearn"
sys.path.insert(0, str(EXAMPLE))


class Harness:
    """A Monitor plus the in-memory reader and exporter that see everything it exports."""

    def __init__(self, tracing: bool = True, **config: Any) -> None:
        self.reader = InMemoryMetricReader()
        self.spans = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.tracer_provider = provider
        self.monitor = Monitor(MonitorConfig(metric_readers=(self.reader,),
                                             tracer_provider=provider if tracing else None,
                                             tracing=tracing, **config))

    def points(self, name: str) -> list[tuple[dict, Any]]:
        """(attributes, data point) of every point of metric ``name``, after a flush."""
        self.monitor.flush()
        data = self.reader.get_metrics_data()
        found = []
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == name:
                        found.extend((dict(p.attributes), p) for p in metric.data.data_points)
        return found

    def total(self, name: str, **attrs: Any) -> float:
        """Sum of counter values (or histogram counts) of ``name`` whose attributes include ``attrs``."""
        total = 0.0
        for point_attrs, point in self.points(name):
            if all(point_attrs.get(k) == v for k, v in attrs.items()):
                total += point.value if hasattr(point, "value") else point.count
        return total

    def finished_spans(self) -> list:
        self.monitor.flush()
        return list(self.spans.get_finished_spans())


@pytest.fixture
def harness() -> Iterator[Harness]:
    h = Harness()
    yield h
    h.monitor.shutdown()


@pytest.fixture
def harness_factory() -> Iterator[Any]:
    made: list[Harness] = []

    def make(**kwargs: Any) -> Harness:
        made.append(Harness(**kwargs))
        return made[-1]

    yield make
    for h in made:
        h.monitor.shutdown()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole run (no fsync: nothing here needs to survive a power
    cut), stopped and removed at its end. A machine without PostgreSQL fails, not skips: `make
    tools` installs it, and a skipped backend would pass unseen."""
    server = None
    try:
        server = PostgresServer({"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"})
        server.start()
    except Exception as exc:
        if server is not None:
            server.close()
        pytest.fail(f"PostgreSQL cannot be started for the tests: {exc} (`make tools` installs Debian's postgresql)")
    yield server
    server.close()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of a new, empty database: no test sees another's rows."""
    return postgres_server.create_database()
