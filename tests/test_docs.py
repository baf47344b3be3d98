"""The docs say what the code does: every code block of README.md and docs/*.md is compiled or
run, and every metric, recording rule and alert the docs name exists in the code's tables (and
the reverse: none the code exports goes undocumented).

Code blocks by language: ``python`` is compiled (the README's quick start also runs, in a fresh
venv: ``test_quickstart.py``); ``sh``/``bash`` pass ``bash -n``; ``yaml`` and ``json`` parse;
``prometheus`` (an exposition sample) parses with prometheus_client and names only metrics that
exist; a block with no language, or ``text``, is prose.
"""

from __future__ import annotations

import json
import re
import subprocess
import textwrap

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from mlmon_middleware.instruments import INSTRUMENTS, MODEL_NAME, MODEL_VERSION, PREDICTION_ID
from mlmon_middleware.rules import RuleConfig, alerts, recording

from conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^( *)```([\w-]*)[^\n]*\n(.*?)^ *```\s*$", re.M | re.S)  # also in list items
LANGUAGES = {"python", "sh", "bash", "yaml", "json", "prometheus", "text", ""}
# names that look like metrics but are not: the packages, the labels (attribute keys with their
# dots as underscores), the alert log record's key; a name ending in "_" is a wildcard's stem
NOT_METRICS = {"mlmon_middleware", "mlmon_fastapi", "mlmon_bentoml", "mlmon_alert",
               *(key.replace(".", "_") for key in (MODEL_NAME, MODEL_VERSION, PREDICTION_ID))}
# what the Prometheus exposition adds to a metric's name
SUFFIXES = ("_bucket", "_count", "_sum", "_created", "_total")


def blocks() -> list[tuple[str, int, str, str]]:
    """(file, line, language, code) of every fenced block in the docs."""
    found = []
    for path in DOCS:
        text = path.read_text()
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            code = textwrap.dedent(match.group(3)) if match.group(1) else match.group(3)
            found.append((path.relative_to(ROOT).as_posix(), line, match.group(2), code))
    return found


def exported_metrics() -> set[str]:
    """Every Prometheus name the code exports (the instruments' names; target_info)."""
    return {spec.prometheus for spec in INSTRUMENTS.values()} | {"target_info"}


def base_name(name: str) -> str:
    """``mlmon_x_seconds_bucket`` -> ``mlmon_x_seconds``; a counter keeps its ``_total``."""
    for suffix in SUFFIXES[:4]:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def known(name: str, exported: set[str]) -> bool:
    return base_name(name) in exported or name in exported or f"{base_name(name)}_total" in exported


ALL_BLOCKS = blocks()


def test_the_docs_have_code_blocks_and_name_their_languages():
    assert len(ALL_BLOCKS) > 20
    unknown = [(f, line, lang) for f, line, lang, _ in ALL_BLOCKS if lang not in LANGUAGES]
    assert unknown == []


@pytest.mark.parametrize("where,code", [(f"{f}:{line}", code) for f, line, lang, code in ALL_BLOCKS
                                        if lang == "python"])
def test_python_blocks_compile(where, code):
    compile(code, where, "exec")


@pytest.mark.parametrize("where,code", [(f"{f}:{line}", code) for f, line, lang, code in ALL_BLOCKS
                                        if lang in ("sh", "bash")])
def test_shell_blocks_parse(where, code):
    checked = subprocess.run(["bash", "-n"], input=code, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


@pytest.mark.parametrize("where,code,lang", [(f"{f}:{line}", code, lang) for f, line, lang, code in ALL_BLOCKS
                                             if lang in ("yaml", "json")])
def test_data_blocks_parse(where, code, lang):
    if lang == "json":
        json.loads(code)
    else:
        assert list(yaml.safe_load_all(code))


def test_exposition_samples_parse_and_name_real_metrics():
    samples = [(f"{f}:{line}", code) for f, line, lang, code in ALL_BLOCKS if lang == "prometheus"]
    assert samples, "the README shows what /metrics holds"
    exported = exported_metrics()
    for where, code in samples:
        names = {s.name for family in text_string_to_metric_families(code) for s in family.samples}
        assert names and {n for n in names if not known(n, exported)} == set(), where


def test_every_metric_the_docs_name_exists_and_every_metric_is_documented():
    exported = exported_metrics()
    named: dict[str, set[str]] = {}
    for path in DOCS:
        for name in re.findall(r"(?<![\w:])(mlmon_[a-z0-9_]+)", path.read_text()):
            named.setdefault(name, set()).add(path.name)
    named = {n: where for n, where in named.items() if n not in NOT_METRICS and not n.endswith("_")}
    unknown = {n: sorted(w) for n, w in named.items() if not known(n, exported)}
    assert unknown == {}
    metrics_md = (ROOT / "docs" / "metrics.md").read_text()
    assert sorted(n for n in exported - {"target_info"} if n not in metrics_md) == []


def test_every_rule_and_alert_the_docs_name_exists_and_every_alert_is_documented():
    config = RuleConfig()
    records = {r["record"] for r in recording(config)}
    alert_names = {a["alert"] for a in alerts(config)}
    text = {path.name: path.read_text() for path in DOCS}
    named_records = {n for t in text.values() for n in re.findall(r"(?<![\w/])(mlmon:[a-z0-9_]+:[a-z0-9_:]*[a-z0-9])", t)}
    assert sorted(named_records - records) == []
    named_alerts = {n for t in text.values() for n in re.findall(r"\b(MLModel[A-Za-z]+)\b", t)}
    assert sorted(named_alerts - alert_names) == []
    documented = text["alerting.md"] + text["runbooks.md"]
    assert sorted(a for a in alert_names if a not in documented) == []
    assert sorted(r for r in records if r not in text["alerting.md"]) == []


def test_every_curl_that_posts_json_says_so():
    """FastAPI answers 422 to a JSON body sent without its content type (curl's -d sends a form)."""
    posting = [(f"{f}:{line}", command) for f, line, lang, code in ALL_BLOCKS if lang in ("sh", "bash")
               for command in code.replace("\\\n", " ").splitlines() if "curl" in command and " -d " in command]
    assert posting
    assert [where for where, command in posting if "content-type: application/json" not in command.lower()] == []


def test_every_rule_setting_is_documented():
    import dataclasses

    settings = (ROOT / "docs" / "alerting.md").read_text()
    assert [f.name for f in dataclasses.fields(RuleConfig) if f"\n{f.name}: " not in settings] == []


def test_every_setting_read_from_the_environment_is_in_the_guide_and_the_docstring():
    from mlmon_middleware.config import _ENV, MonitorConfig

    rows = [line for line in (ROOT / "docs" / "guide.md").read_text().splitlines() if line.startswith("| `")]
    assert [f for f, (var, _) in _ENV.items() if not any(f"`{f}`" in row and f"`{var}`" in row for row in rows)] == []
    assert [f for f in _ENV if f"\n        {f}: " not in (MonitorConfig.__doc__ or "")] == []
