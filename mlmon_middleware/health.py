"""The monitoring's own health, in words: what ``/mlmon/health`` lists under ``issues``.

A monitor that silently stopped watching is worse than none, so these checks look at the
monitoring itself: checks that stopped running, an old baseline, input fields nobody monitors,
alerts left firing or ignored (none acknowledged or acted on), captures dropped because a queue was full,
internal errors.

>>> monitor_issues({}, {"queue_full": 3, "ingest": 1}, check_interval=60.0, now=0.0, last={"ingest": "KeyError"})
['3 captured inference(s) dropped: the pipeline queue was full', 'internal errors: ingest ×1 (last: KeyError)']
"""

from __future__ import annotations

from collections.abc import Mapping

from mlmon_middleware.alerts import Attention
from mlmon_middleware.model import ModelMonitor

BASELINE_MAX_AGE_DAYS = 90
DROPS = {"queue_full": "captured inference(s) dropped: the pipeline queue was full",
         "store_queue_full": "logged prediction(s) dropped: the log writer's queue was full"}


def monitor_issues(models: Mapping[str, ModelMonitor], errors: Mapping[str, int], *, check_interval: float,
                   now: float, last: Mapping[str, str] | None = None, ack_max_age: float = 86_400.0,
                   recorded: Mapping[str, Attention] | None = None) -> list[str]:
    """What is wrong with the monitoring of ``models`` at ``now``, given the error counts and
    (``last``) the kind of each stage's last failure; ``ack_max_age``: seconds a critical alert
    may fire unacknowledged; ``recorded``: per model, what the audit log records of its alerts."""
    issues = []
    for name, model in models.items():
        checker = model.checker
        if check_interval > 0 and checker.last_run and now - checker.last_run > 3 * check_interval:
            issues.append(f"{name}: no drift check for {now - checker.last_run:.0f} s (one every {check_interval:g} s expected)")
        if model.baseline is not None and model.baseline.age_seconds() > BASELINE_MAX_AGE_DAYS * 86400:
            issues.append(f"{name}: the baseline is {model.baseline.age_seconds() / 86400:.0f} days old")
        coverage = model.coverage()
        if coverage and coverage["unmonitored_fields"]:
            fields = list(coverage["unmonitored_fields"])
            listed = ", ".join(fields[:5]) + (f" and {len(fields) - 5} more" if len(fields) > 5 else "")
            issues.append(f"{name}: monitors {coverage['monitored']} of the {coverage['received']} fields it receives "
                          f"(coverage {coverage['ratio']:.0%}); not monitored: {listed}")
        if model.explainer is not None and model.explainer.problem:
            issues.append(f"{name}: explanations are off: {model.explainer.problem}")
        fired, resolved = (sum(n for (_, state), n in checker.alerts.events.items() if state == s)
                           for s in ("firing", "resolved"))
        if fired > resolved:
            issues.append(f"{name}: {fired - resolved} alert(s) firing ({fired} fired, {resolved} resolved so far)")
        issues += [f"{name}: {issue}" for issue in checker.alerts.ack_issues(now, ack_max_age, (recorded or {}).get(name))]
    for stage, words in DROPS.items():
        if errors.get(stage):
            issues.append(f"{errors[stage]} {words}")
    other = {k: v for k, v in errors.items() if k not in DROPS}
    if other:
        last = last or {}
        issues.append("internal errors: " + ", ".join(f"{k} ×{v}" + (f" (last: {last[k]})" if k in last else "")
                                                      for k, v in sorted(other.items())))
    return issues
