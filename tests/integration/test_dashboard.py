"""The live dashboard in a real headless browser: Debian's chromium driven by Playwright (no browser download).

Skipped, with the reason, when chromium or the playwright package is missing (.ci/run installs both). The
screenshot is kept under the test's tmp_path; with ``GWANMUN_SCREENSHOT_DIR`` set it is also copied there (this is
how docs/dashboard.png is made).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests.fixtures.gateway import service

CHROMIUM = os.environ.get("GWANMUN_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]

pytestmark = pytest.mark.timeout(90)


def _browser_or_skip():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"chromium not installed at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install playwright; no `playwright install`)")
    return sync_playwright


def test_dashboard_shows_live_traffic_health_circuits_and_config(gateway, httpbin, refusing_port, tmp_path):
    sync_playwright = _browser_or_skip()
    cfg = {
        "gateway": {"workers": 2},
        "upstreams": [{"name": "catalog.up", "targets": [{"target": httpbin.hostport},
                                                         {"target": f"127.0.0.1:{refusing_port.port}"}],
                       "healthchecks": {"passive": {"unhealthy": {"tcp_failures": 1}}}}],
        "consumers": [{"username": "alice", "keyauth_credentials": [{"key": "alice-key"}]}],
        "services": [
            service("orders", httpbin.url, [{"name": "orders-api", "paths": ["/orders"]}],
                    circuit_breaker={"minimum_number_of_calls": 50}),
            service("catalog", "http://catalog.up", [{"name": "catalog-api", "paths": ["/catalog"]}]),
            service("billing", httpbin.url, [{"name": "billing-api", "paths": ["/billing"],
                                              "plugins": [{"name": "key-auth"}]}]),
        ],
    }
    gw = gateway(cfg, workers=2)
    url = gw.status_url
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1300})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(url + "/?interval=0.5")
            page.wait_for_selector("body[data-ready='1']", timeout=15000)
            # traffic while the page polls: successes, 5xx, 4xx, a consumer, a failing target
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline:
                for _ in range(5):
                    gw.request("GET", "/orders/get")
                gw.request("GET", "/orders/status/500")
                gw.request("GET", "/catalog/get")
                gw.request("GET", "/billing/get", headers={"apikey": "alice-key"})
                gw.request("GET", "/billing/get")  # 401: no key
            page.wait_for_function("document.querySelector('#rps').textContent !== '–' && "
                                   "parseFloat(document.querySelector('#rps').textContent) > 0", timeout=15000)
            page.wait_for_function("document.querySelector('#consumers').textContent.includes('alice')",
                                   timeout=15000)
            page.wait_for_function("document.querySelector('#upstreams').textContent.includes('unhealthy') || "
                                   "document.querySelector('#upstreams').textContent.includes('mixed')",
                                   timeout=15000)
            services = page.inner_text("#services")
            assert "orders" in services and "catalog" in services and "billing" in services
            assert "orders-api" in page.inner_text("#routes")
            assert "127.0.0.1" in page.inner_text("#clients")
            assert "orders" in page.inner_text("#breakers") and "closed" in page.inner_text("#breakers")
            latency = page.inner_text("#latency")
            assert latency.count("/") == 2 and "–" not in latency, latency
            assert page.inner_text("#errors").endswith("%")
            assert page.inner_text("#workers").startswith("2 / 2")
            config_hash = page.inner_text("#config")
            assert len(config_hash) == 12 and config_hash in page.inner_text("#configs")
            assert "live" in page.inner_text("#conn")
            page.wait_for_timeout(1200)  # a few more polls for the chart
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            out = os.environ.get("GWANMUN_SCREENSHOT_DIR")
            if out:
                Path(out).mkdir(parents=True, exist_ok=True)
                shutil.copy(shot, Path(out) / "dashboard.png")
            assert not errors, errors
        finally:
            browser.close()
