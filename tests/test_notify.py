"""The webhook notifier retries, rate-limits, de-duplicates and never blocks the caller."""

import http.server
import threading
import time

import orjson

from mlmon_middleware.notify import WebhookNotifier


class Hook(http.server.ThreadingHTTPServer):
    """A webhook on 127.0.0.1 that fails the first ``failures`` posts, optionally slowly."""

    def __init__(self, failures=0, delay=0.0):
        self.bodies, self.failures, self.delay = [], failures, delay
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(outer.delay)
                if outer.failures > 0:
                    outer.failures -= 1
                    self.send_response(500)
                else:
                    outer.bodies.append(orjson.loads(body))
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


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
