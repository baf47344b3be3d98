"""WebhookNotifier: alert events to a webhook (Slack-compatible JSON), never blocking serving.

Pass it as ``on_alert``: ``@monitor(..., on_alert=WebhookNotifier(url))``. Events are queued
(bounded: past ``max_queue`` they are dropped and counted) and posted by a thread of its own with
retries and exponential backoff; at most ``per_minute`` posts a minute (the rest are counted as
rate-limited); the same alert in the same state is not posted twice within ``dedupe_seconds``.
Only events at or above ``min_severity`` are sent. The standard library posts, so the core needs
no HTTP client.

>>> n = WebhookNotifier("http://127.0.0.1:9/hook", start=False)
>>> n.payload({"alertname": "FeatureDrift", "subject": "income", "state": "firing", "severity": "critical",
...            "model": "fraud", "version": "2"})["text"]
':rotating_light: FeatureDrift income firing (critical), model fraud 2'
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import urllib.request
from typing import Any

import orjson

from mlmon_middleware.drift.policy import RANK

logger = logging.getLogger("mlmon_middleware.notify")
ICON = {"firing": ":rotating_light:", "severity_changed": ":warning:", "resolved": ":white_check_mark:"}


class WebhookNotifier:
    """See the module docstring; ``stats`` counts sent, failed, rate_limited, deduplicated, dropped."""

    def __init__(self, url: str, *, min_severity: str = "warning", per_minute: int = 10, retries: int = 3,
                 backoff: float = 0.5, timeout: float = 5.0, dedupe_seconds: float = 600.0, max_queue: int = 1000,
                 start: bool = True) -> None:
        self.url = url
        self.min_severity = min_severity
        self.per_minute = per_minute
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.dedupe_seconds = dedupe_seconds
        self.stats: collections.Counter[str] = collections.Counter()
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._max_queue = max_queue
        self._wake = threading.Event()
        self._sent_times: collections.deque[float] = collections.deque()
        self._last_sent: dict[tuple[Any, ...], float] = {}
        self._thread = threading.Thread(target=self._run, name="mlmon-notify", daemon=True)
        if start:
            self._thread.start()

    def __call__(self, event: dict[str, Any]) -> None:
        """Queue an event (the alert policy's callback): O(1), never blocks, never raises."""
        if RANK.get(event.get("severity", ""), 0) < RANK.get(self.min_severity, 2):
            return
        if len(self._queue) >= self._max_queue:
            self.stats["dropped"] += 1
            return
        self._queue.append(event)
        self._wake.set()

    @staticmethod
    def payload(event: dict[str, Any]) -> dict[str, Any]:
        text = (f"{ICON.get(event['state'], '')} {event['alertname']} {event['subject']} {event['state']} "
                f"({event['severity']}), model {event.get('model', '?')} {event.get('version', '?')}").strip()
        if event.get("cause"):  # dataset drift and performance drops: the check's likely causes
            text += f" — {event['cause']}"
        return {"text": text, "mlmon": event}

    def _run(self) -> None:
        while True:
            self._wake.wait(1.0)
            self._wake.clear()
            while self._queue:
                self._deliver(self._queue.popleft())

    def _deliver(self, event: dict[str, Any]) -> None:
        now = time.monotonic()
        key = (event.get("model"), event["alertname"], event["subject"], event["state"], event["severity"])
        if now - self._last_sent.get(key, -1e18) < self.dedupe_seconds:
            self.stats["deduplicated"] += 1
            return
        while self._sent_times and now - self._sent_times[0] > 60:
            self._sent_times.popleft()
        if len(self._sent_times) >= self.per_minute:
            self.stats["rate_limited"] += 1
            return
        body = orjson.dumps(self.payload(event))
        error: object = "no 2xx answer"
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                request = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 - the user's URL
                    if 200 <= response.status < 300:
                        self.stats["sent"] += 1
                        self._sent_times.append(time.monotonic())
                        self._last_sent[key] = time.monotonic()
                        return
                    error = f"HTTP {response.status}"
            except Exception as exc:  # a failing webhook is retried, then counted; serving never sees it
                error = exc
        self.stats["failed"] += 1
        logger.warning("mlmon: webhook %s failed after %d attempts (%s)", self.url, self.retries + 1, error)
