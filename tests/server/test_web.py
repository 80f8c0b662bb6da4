"""The chat page at / in headless Chromium (Debian's chromium driven by Playwright), against real servers.

A streamed reply with usage; settings that start from the server's defaults; markdown and code rendered (and
sanitised); Stop; tokens/s; tools with a forced call and the observation turn; the reasoning of a thinking
template shown apart; image upload to an image model. Screenshots land in the test's tmp_path (printed).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from chatplex import ChatModel
from chatplex.server.app import create_app
from chatplex.server.settings import ServerSettings
from tests.engines.hf.multimodal_testing import served_model_fixture
from tests.engines.hf.test_multimodal_gemma3 import _build as build_gemma3
from tests.server.conftest import API_KEY, serving_in_thread

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
WEATHER = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city.",
                                             "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                            "required": ["city"]}}}]

gemma_server = served_model_fixture("gemma3-web", build_gemma3)


@contextmanager
def page_at(url: str, tmp_path, api_key: str | None = None) -> Iterator:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is absent: install it with `apt-get update && apt-get install -y chromium`")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(f"{url}/", timeout=30_000)
            if api_key:
                page.fill("#api-key", api_key)
                page.dispatch_event("#api-key", "change")
            page.wait_for_selector("body[data-ready='1']", timeout=30_000)  # the server's settings are in
            yield page
            shot = tmp_path / "chat-page.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot: {shot}")
        finally:
            browser.close()


def send(page, text: str, state: str = "done", nth: int = 0) -> None:
    page.fill("#input", text)
    page.click("#send")
    page.wait_for_selector(f".msg.assistant >> nth={nth}", timeout=60_000)
    page.locator(".msg.assistant").nth(nth).wait_for(timeout=60_000)
    page.wait_for_function(
        f"document.querySelectorAll('.msg.assistant')[{nth}]?.dataset.state === '{state}'", timeout=120_000)


def test_chat_page_streams_a_reply(server, tmp_path):
    with page_at(server.url, tmp_path, API_KEY) as page:
        page.fill("#system", "You are a helpful assistant.")
        page.fill("#temperature", "0")
        page.fill("#max-tokens", "24")
        send(page, "What is the capital of France?")
        reply = page.inner_text(".msg.assistant .content")
        status = page.inner_text("#status")
        assert page.locator(".msg.error").count() == 0
    assert "Paris" in reply
    assert "completion tokens" in status  # the usage chunk of the stream arrived


def test_settings_start_from_the_servers_defaults_and_markdown_renders(chat_model, tmp_path):
    model = ChatModel({"infer_dtype": "float32", "temperature": 0.3, "top_p": 0.85, "max_new_tokens": 96,
                       "do_sample": False, "template": "smollm2"})
    try:
        with serving_in_thread(create_app(model, ServerSettings(served_model_name="smol"))) as url:
            with page_at(url, tmp_path) as page:
                info = page.inner_text("#model-info")
                fields = [page.input_value(f"#{f}") for f in ("temperature", "top-p", "max-tokens")]
                sampling = page.is_checked("#do-sample")
                send(page, "Write a Python function that adds two numbers.")
                code = page.locator(".msg.assistant .content pre code").count()
                html = page.inner_html(".msg.assistant .content")
                meta = page.inner_text(".msg.assistant .meta")
    finally:
        model.close()
    assert "model: smol" in info and "template: smollm2" in info
    assert fields == ["0.3", "0.85", "96"] and sampling is False
    assert code >= 1 and "def " in html  # the fenced code block became <pre><code>
    assert "tokens/s" in meta


def test_stop_keeps_the_partial_reply(server, tmp_path):
    with page_at(server.url, tmp_path, API_KEY) as page:
        page.fill("#temperature", "0")
        page.fill("#max-tokens", "600")
        page.fill("#input", "Write a long story about a dragon who learns to cook.")
        page.click("#send")
        page.wait_for_function("document.querySelector('.msg.assistant .content')?.textContent.length > 20",
                               timeout=60_000)
        page.click("#stop")
        page.wait_for_selector(".msg.assistant[data-state='stopped']", timeout=30_000)
        meta = page.inner_text(".msg.assistant .meta")
        partial = page.inner_text(".msg.assistant .content")
        send(page, "Thanks.", nth=1)  # the conversation goes on after a stop
        assert page.locator(".msg.error").count() == 0
    assert "stopped" in meta and len(partial.strip()) > 10  # what had streamed stays


def test_tools_with_a_forced_call_and_the_observation_turn(server, tmp_path):
    with page_at(server.url, tmp_path, API_KEY) as page:
        page.fill("#temperature", "0")
        page.fill("#max-tokens", "64")
        page.click("details > summary >> text=Tools")
        page.fill("#tools", json.dumps(WEATHER))
        page.select_option("#tool-choice", "required")
        send(page, "What is the weather in Paris?")
        call = page.locator(".msg.assistant .calls").first.inner_text()
        page.select_option("#tool-choice", "auto")
        calls = page.locator(".msg.assistant .calls").count()
        for _ in range(calls):  # one result per call (the model may call more than once); the last one sends
            page.locator(".observation textarea").first.fill('{"temperature_c": 21, "sky": "clear"}')
            page.locator(".observation button").first.click()
        page.wait_for_function("document.querySelectorAll('.msg.assistant').length === 2 && "
                               "document.querySelectorAll('.msg.assistant')[1].dataset.state === 'done'",
                               timeout=120_000)
        tool_bubbles = page.locator(".msg.tool").count()
        second = page.inner_text(".msg.assistant >> nth=1")
        assert page.locator(".msg.error").count() == 0
    assert call.startswith("get_weather(") and '"city"' in call
    assert tool_bubbles == calls >= 1 and second.strip()


# SmolLM2's ChatML with the generation prompt opened inside a thought, as DeepSeek-R1's and Qwen3's thinking
# templates do: what the model writes until </think> is its reasoning.
# (Past replies lose their thoughts, as in those templates.)
THINKING_CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n"
                   "{{ m.content.split('</think>')[-1] if m.role == 'assistant' else m.content }}<|im_end|>\n"
                   "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}")


def test_reasoning_is_shown_apart_with_a_thinking_template(tmp_path):
    model = ChatModel({"infer_dtype": "float32", "chat_template": THINKING_CHATML, "do_sample": False,
                       "max_new_tokens": 24})
    try:
        with serving_in_thread(create_app(model, ServerSettings())) as url:
            with page_at(url, tmp_path) as page:
                toggle_shown = page.is_visible("#thinking-row")
                send(page, "Why is the sky blue?")
                reasoning = page.locator(".msg.assistant details.reasoning")
                shown, folded = reasoning.is_visible(), reasoning.get_attribute("open") is None
                reasoning.locator("summary").click()  # unfolds on a click
                text = reasoning.inner_text()
    finally:
        model.close()
    assert toggle_shown
    assert shown and folded and "sky" in text.lower()


def test_image_upload_to_an_image_model(gemma_server, tmp_path):
    from tests.engines.hf.multimodal_testing import noise_image

    image = tmp_path / "noise.png"
    noise_image((64, 48), 3).save(image)
    url = str(gemma_server.client.base_url).removesuffix("/v1/").removesuffix("/v1")
    with page_at(url, tmp_path) as page:
        assert page.is_visible("#attach")
        page.set_input_files("#files", str(image))
        page.wait_for_function("document.getElementById('attachments').textContent.includes('noise.png')")
        page.fill("#max-tokens", "4")
        send(page, "Describe.")
        shown = page.locator(".msg.user img").count()
        assert page.locator(".msg.error").count() == 0
    assert shown == 1
