"""The webhook notifier retries, rate-limits, de-duplicates and never blocks the caller."""

import time

import orjson

from mlmon_middleware.notify import WebhookNotifier

from http_helpers import RecordingServer


class Hook(RecordingServer):
    """A webhook that fails the first ``failures`` posts, optionally slowly."""

    @property
    def bodies(self):
        return [orjson.loads(body) for _, body in self.received]

    @property
    def url(self):
        return super().url + "/hook"


def event(subject="income", state="firing", severity="critical"):
    return {"alertname": "FeatureDrift", "subject": subject, "state": state, "severity": severity, "model": "m", "version": "1"}


def wait_for(condition, seconds=10):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not condition():
        time.sleep(0.02)
    return condition()


def test_retries_with_backoff_then_delivers():
    hook = Hook(failures=2)
    notifier = WebhookNotifier(hook.url, backoff=0.01)
    notifier(event())
    assert wait_for(lambda: notifier.stats["sent"] == 1)
    assert hook.bodies[0]["text"].startswith(":rotating_light: FeatureDrift income firing (critical)")
    hook.shutdown()


def test_dedupe_rate_limit_and_severity_filter():
    hook = Hook()
    notifier = WebhookNotifier(hook.url, per_minute=3, backoff=0.01)
    notifier(event(severity="info"))  # below the minimum severity: not even queued
    for _ in range(3):
        notifier(event())  # the same alert in the same state: posted once
    for i in range(5):
        notifier(event(subject=f"f{i}"))
    assert wait_for(lambda: sum(notifier.stats.values()) == 8)
    assert notifier.stats == {"sent": 3, "deduplicated": 2, "rate_limited": 3}
    hook.shutdown()


def test_a_slow_webhook_never_blocks_the_caller():
    hook = Hook(delay=0.5)
    notifier = WebhookNotifier(hook.url, timeout=5)
    start = time.perf_counter()
    notifier(event(subject="first"))
    assert wait_for(lambda: notifier.stats["sent"] == 1)
    one_post = time.perf_counter() - start  # what the caller would wait if posting were inline
    start = time.perf_counter()
    for i in range(50):
        notifier(event(subject=f"f{i}"))
    fifty_calls = time.perf_counter() - start
    assert fifty_calls < one_post / 10  # 50 events queued in a fraction of one post's time
    failed = WebhookNotifier("http://127.0.0.1:9/nothing-listens", retries=1, backoff=0.01, timeout=0.5)
    failed(event())
    assert wait_for(lambda: failed.stats["failed"] == 1)
    hook.shutdown()
