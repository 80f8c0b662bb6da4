"""The chat page at / in headless Chromium (Debian's chromium driven by Playwright): a streamed reply appears."""

from __future__ import annotations

import os

import pytest

from tests.server.conftest import API_KEY

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def test_chat_page_streams_a_reply(server, tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is absent: install it with `apt-get update && apt-get install -y chromium`")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page()
            page.goto(f"{server.url}/", timeout=30_000)
            page.fill("#api-key", API_KEY)
            page.dispatch_event("#api-key", "change")
            page.fill("#system", "You are a helpful assistant.")
            page.fill("#temperature", "0")
            page.fill("#max-tokens", "24")
            page.fill("#input", "What is the capital of France?")
            page.click("#send")
            page.wait_for_selector(".msg.assistant[data-state='done']", timeout=60_000)
            reply = page.inner_text(".msg.assistant")
            status = page.inner_text("#status")
            errors = page.locator(".msg.error").count()
            shot = tmp_path / "chat-page.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot: {shot}")
        finally:
            browser.close()
    assert errors == 0
    assert "Paris" in reply
    assert "completion tokens" in status  # the usage chunk of the stream arrived
