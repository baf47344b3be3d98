"""A governance document's HTML in headless Chromium (Debian's /usr/bin/chromium, driven by
Playwright, as tests/test_dashboard_page.py does): one page load, with every request the page
would make aborted and reported, console messages and script errors collected, and any dialog
(an escaped ``<script>alert(1)</script>`` that ran) reported."""

from __future__ import annotations

from dataclasses import dataclass, field

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@dataclass
class LoadedPage:
    text: str  # what a reader sees (the body's innerText)
    headings: list[str]
    tables: int
    problems: list[str] = field(default_factory=list)


def load_document(html: str) -> LoadedPage:
    """Load ``html`` as a page of its own and read what it shows."""
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}"))
            page.on("pageerror", lambda exc: problems.append(f"script error: {exc}"))
            page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))

            def outside(route):
                problems.append(f"request: {route.request.url}")
                route.abort()

            page.route("**/*", outside)
            page.set_content(html, wait_until="load")
            loaded = LoadedPage(page.inner_text("body"), page.eval_on_selector_all("h2", "hs => hs.map(h => h.textContent)"),
                                page.eval_on_selector_all("table", "ts => ts.length"), problems)
        finally:
            browser.close()
    return loaded
