import re

import pytest

from mlmon_middleware import ConfigError, Endpoint, Monitor, MonitorConfig, PerformanceOptions, monitor


@pytest.mark.parametrize("field, value, message", [
    ("reservoir_size", 0, "reservoir_size must be an integer >= 1"),
    ("reservoir_size", 1.5, "reservoir_size must be an integer >= 1"),
    ("max_body_bytes", -1, "max_body_bytes must be an integer >= 0"),
    ("queue_size", True, "queue_size must be an integer >= 1"),
    ("flush_interval", 0, "flush_interval must be a number of seconds in (0, 3600]"),
    ("tracing", "yes", "tracing must be True, False or None"),
    ("trace_features", "age", "trace_features must be a sequence of feature names"),
    ("prometheus_port", 70000, "prometheus_port must be an integer in [0, 65535]"),
    ("switch_interval", -1e-4, "switch_interval must be a number of seconds in [0, 0.005]"),
    ("switch_interval", 0.01, "switch_interval must be a number of seconds in [0, 0.005]"),
    ("switch_interval", True, "switch_interval must be a number of seconds in [0, 0.005]"),
    ("switch_interval", float("nan"), "switch_interval must be a number of seconds in [0, 0.005]"),
])
def test_invalid_values_name_the_field(field, value, message):
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        MonitorConfig(**{field: value})


def test_env_fills_what_code_left_unset_and_code_wins():
    env = {"MLMON_RESERVOIR_SIZE": "123", "MLMON_TRACING": "off", "MLMON_TRACE_FEATURES": "age, income",
           "MLMON_PROMETHEUS_PORT": "9464", "MLMON_SERVICE_NAME": "scoring", "UNRELATED": "x"}
    config = MonitorConfig().with_env(env)
    assert (config.reservoir_size, config.tracing, config.trace_features, config.prometheus_port,
            config.service_name) == (123, False, ("age", "income"), 9464, "scoring")
    given = MonitorConfig(reservoir_size=10, tracing=True, prometheus_port=1).with_env(env)
    assert (given.reservoir_size, given.tracing, given.prometheus_port, given.service_name) == (10, True, 1, "scoring")
    assert MonitorConfig().with_env({"MLMON_TRACING": "auto"}).tracing is None
    assert MonitorConfig().with_env({"MLMON_SWITCH_INTERVAL": "0"}).switch_interval == 0


@pytest.mark.parametrize("var, value, message", [
    ("MLMON_RESERVOIR_SIZE", "lots", "MLMON_RESERVOIR_SIZE='lots' is not a valid reservoir_size"),
    ("MLMON_TRACING", "maybe", "MLMON_TRACING='maybe' is not a valid tracing"),
    ("MLMON_RESERVOIR_SIZE", "-5", "reservoir_size must be an integer >= 1, got -5"),
    ("MLMON_SWITCH_INTERVAL", "5", "switch_interval must be a number of seconds in \\[0, 0.005\\], got 5.0"),
])
def test_invalid_env_is_a_clear_error(var, value, message):
    with pytest.raises(ConfigError, match=message):
        MonitorConfig().with_env({var: value})


def test_monitor_applies_env_at_start_up(monkeypatch):
    monkeypatch.setenv("MLMON_RESERVOIR_SIZE", "77")
    assert Monitor(MonitorConfig()).config.reservoir_size == 77
    monkeypatch.setenv("MLMON_MAX_BODY_BYTES", "nope")
    with pytest.raises(ConfigError, match="MLMON_MAX_BODY_BYTES"):
        Monitor()


def test_model_options_are_checked_at_decoration_time():
    mon = Monitor(MonitorConfig(tracing=False))
    with pytest.raises(ConfigError, match="model name must be a non-empty string"):
        monitor(model="")(lambda x: x)
    with pytest.raises(ConfigError, match="kinds must be in"):
        monitor(model="m", features={"age": "ordinal"}, registry=mon)(lambda x: x)
    monitor(model="m2", version="1", registry=mon)(lambda x: x)
    with pytest.raises(ConfigError, match="already monitored as version '1'"):
        monitor(model="m2", version="2", registry=mon)(lambda x: x)
    with pytest.raises(ConfigError, match=r"Explain\(method=.auto.\) needs model="):
        monitor(model="m3", explain="auto", registry=mon)(lambda x: x)


def test_misspelt_options_are_config_errors_naming_the_valid_ones():
    mon = Monitor(MonitorConfig(tracing=False))
    with pytest.raises(ConfigError, match=r"unknown model option 'segment'; valid options: .*segments"):
        monitor(model="m", segment=["region"], registry=mon)(lambda x: x)
    with pytest.raises(ConfigError, match=r"performance: unknown option 'treshold'; valid options: .*threshold"):
        monitor(model="m", performance={"treshold": 0.3}, registry=mon)(lambda x: x)
    with pytest.raises(ConfigError, match=r"unknown model option 'segment'"):
        Endpoint("/score", "m", segment=["region"])
    with pytest.raises(ConfigError, match="protected='region' must be one of the model's segments"):
        mon.model("fair", performance=PerformanceOptions(protected="region"))
    with pytest.raises(ConfigError, match="count_window must be an integer >= 1"):
        PerformanceOptions(count_window=0)
    with pytest.raises(ConfigError, match="drift_policy must be a DriftPolicy"):
        mon.model("p", drift_policy={"alpha": 0.01})


def test_one_options_type_for_every_entry_point():
    mon = Monitor(MonitorConfig(tracing=False))
    typed = mon.model("typed", segments=["region"], performance=PerformanceOptions(task="binary", protected="region"))
    as_dict = mon.model("as_dict", segments=["region"], performance={"task": "binary", "protected": "region"})
    assert typed.options.performance == as_dict.options.performance == PerformanceOptions(task="binary", protected="region")
    assert typed.checker.performance.options.protected == "region"
    assert Endpoint("/score", "e", segments=["region"]).options.segments == ("region",)
    mon.shutdown()
