"""The chat playground, in a real browser (Debian's chromium driven by
playwright, conftest's ``browser``) on the real engine: served by the local
endpoint, and by ``python -m handler playground``'s proxy in front of it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from conftest import LORA_NAME, serving

from handler import playground
from handler.endpoint import LocalEndpoint
from handler.jobqueue import JobQueue

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
QUESTION = "What is the capital of France?"
# the chat template's own default, so the answer is the one without a system prompt
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
STORY = "Write a very long story about a dragon who learns to cook."
# every piece of text the last answer showed, one entry per change of the page
RECORD_STEPS = """
window.__steps = [];
new MutationObserver(() => {
  const answers = document.querySelectorAll(".msg.assistant .content");
  const text = answers.length ? answers[answers.length - 1].textContent : "";
  const steps = window.__steps;
  if (text && steps[steps.length - 1] !== text) steps.push(text);
}).observe(document, {subtree: true, childList: true, characterData: true});
"""


@asynccontextmanager
async def local_endpoint(worker, api_key=None):
    queue = JobQueue(worker.handle, worker.concurrency())
    queue.start()
    try:
        async with serving(LocalEndpoint(queue).app(api_key)) as url:
            yield url
    finally:
        await queue.stop()


@pytest.fixture(scope="module")
async def endpoint_url(worker):
    async with local_endpoint(worker) as url:
        yield url


@asynccontextmanager
async def open_page(browser, url, *, width=1280, height=800, models=True, **options):
    """A fresh browser context on the page; every request that leaves the
    page's own server is refused and listed in ``page.foreign``."""
    from playwright.async_api import expect

    context = await browser.new_context(viewport={"width": width, "height": height}, **options)
    page = await context.new_page()
    page.set_default_timeout(60_000)
    page.foreign = []
    page.sent = []  # the bodies of the chat requests the page made

    async def only_this_server(route):
        if route.request.url.startswith(url + "/"):
            await route.continue_()
        else:
            page.foreign.append(route.request.url)
            await route.abort()

    await context.route("**/*", only_this_server)
    page.on(
        "request",
        lambda request: request.url.endswith("/v1/chat/completions") and page.sent.append(request.post_data_json),
    )
    await page.add_init_script(RECORD_STEPS)
    await page.goto(url + "/")
    if models:
        await expect(page.get_by_label("Model")).to_have_value(MODEL)
    try:
        yield page
    finally:
        await context.close()


async def ask(page, text: str):
    """Send a message with Enter and wait for the answer (or its error) to
    end; the answer's element."""
    from playwright.async_api import expect

    await page.evaluate("window.__steps = []")
    prompt = page.get_by_label("Message")
    await prompt.fill(text)
    await prompt.press("Enter")
    await expect(page.locator("#log")).to_have_attribute("aria-busy", "false")
    return page.locator(".msg.assistant").last


async def unfinished(engine) -> int:
    return engine.ready.llm.get_num_unfinished_requests()


async def until(condition, timeout: float = 60.0, step: float = 0.02) -> float:
    """Seconds until ``condition()`` (a coroutine function) is true."""
    start = time.monotonic()
    while not await condition():
        assert time.monotonic() - start < timeout, "timed out"
        await asyncio.sleep(step)
    return time.monotonic() - start


async def run_code(args: list[str]) -> str:
    """Run pasted code in a new process, while this event loop serves it."""
    process = await asyncio.create_subprocess_exec(
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()[-3000:]
    return out.decode()


# -- the page itself ---------------------------------------------------------


def test_the_page_fetches_nothing_from_elsewhere():
    """No CDN, no build step: the page is these three files, which refer to
    nothing outside the server that serves them."""
    files = sorted(p.name for p in playground.STATIC_DIR.iterdir())
    assert files == ["playground.css", "playground.html", "playground.js"]
    for path in playground.STATIC_DIR.iterdir():
        text = path.read_text()
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//|url\(\s*["']?(https?:)?//|@import""", text), path
        assert not re.search(r"""fetch\(\s*["'`]https?:""", text), path


async def test_page_routes_and_labelled_controls(browser, endpoint_url):
    async with httpx.AsyncClient(base_url=endpoint_url, timeout=30) as http:
        for path in ("/", "/playground"):
            response = await http.get(path)
            assert response.status_code == 200 and "<title>vLLM playground</title>" in response.text
        assert "javascript" in (await http.get("/playground/static/playground.js")).headers["content-type"]
        config = (await http.get("/playground/config.json")).json()
        assert config["openai"]["base"] == f"{endpoint_url}/v2/local/openai/v1"
        assert config["runpod"] == {
            "url_base": f"{endpoint_url}/v2",
            "endpoint_id": "local",
            "key_env": None,
            "key": "local",
        }
        assert (await http.get("/playground/static/nothing.js")).status_code == 404

    async with open_page(browser, endpoint_url) as page:
        assert await page.title() == "vLLM playground"
        assert "the local endpoint" in await page.locator("#target").inner_text()
        for label in ("Model", "System prompt", "Temperature", "Top-p", "Max tokens", "Message"):
            assert await page.get_by_label(label, exact=True).count() == 1, label
        unlabelled = await page.evaluate("""() => [...document.querySelectorAll("input, select, textarea")]
            .filter((el) => !el.closest("[hidden]") && el.labels.length === 0).map((el) => el.id)""")
        assert unlabelled == []
        nameless = await page.evaluate("""() => [...document.querySelectorAll("button")]
            .filter((el) => !el.textContent.trim()).map((el) => el.outerHTML)""")
        assert nameless == []
        assert await page.get_by_label("Model").evaluate("el => [...el.options].map(o => o.value)") == [
            MODEL,
            LORA_NAME,
        ]
        assert page.foreign == []


async def test_chat_streams_keeps_the_conversation_and_shows_stats(browser, endpoint_url, tmp_path_factory):
    from playwright.async_api import expect

    async with open_page(browser, endpoint_url) as page:
        await page.get_by_label("System prompt").fill(SYSTEM)
        await page.get_by_label("Temperature").fill("0")
        await page.get_by_label("Max tokens").fill("32")

        # Shift+Enter is a new line, not a send
        prompt = page.get_by_label("Message")
        await prompt.fill("first line")
        await prompt.press("Shift+Enter")
        await prompt.type("second line")
        assert await prompt.input_value() == "first line\nsecond line"
        assert page.sent == [] and await page.locator(".msg").count() == 0

        answer = await ask(page, QUESTION)
        text = await answer.locator(".content").inner_text()
        assert "Paris" in text
        steps = await page.evaluate("window.__steps")
        assert len(steps) > 1, "the answer arrived in more than one step"
        assert all(later.startswith(earlier) for earlier, later in zip(steps, steps[1:], strict=False))
        assert "Paris" not in steps[0]

        [request] = page.sent
        assert request["messages"] == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
        assert request["model"] == MODEL and request["temperature"] == 0 and request["max_tokens"] == 32
        assert request["top_p"] == 1 and request["stream"] is True
        assert request["stream_options"] == {"include_usage": True}

        # the stats are the server's usage, and the time to the first token
        async with httpx.AsyncClient(base_url=endpoint_url, timeout=60) as http:
            plain = (
                await http.post("/v1/chat/completions", json={**request, "stream": False, "stream_options": None})
            ).json()
        assert plain["choices"][0]["message"]["content"] == text
        meta = answer.locator(".meta")
        stats = await meta.evaluate("el => ({...el.dataset})")
        assert int(stats["promptTokens"]) == plain["usage"]["prompt_tokens"]
        assert int(stats["completionTokens"]) == plain["usage"]["completion_tokens"]
        assert 0 < float(stats["ttftMs"]) < 30_000 and float(stats["tokensPerS"]) > 0
        shown = await meta.inner_text()
        assert (
            f"{plain['usage']['prompt_tokens']} prompt + {plain['usage']['completion_tokens']} completion tokens"
            in shown
        )
        assert re.search(r"first token \d+(\.\d+)? m?s", shown) and re.search(r"[\d.]+ tokens/s", shown)

        # the conversation goes on with the first answer in it
        await ask(page, "And of Germany?")
        assert page.sent[1]["messages"][1:] == [
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": text},
            {"role": "user", "content": "And of Germany?"},
        ]
        assert await page.locator(".msg").count() == 4
        screenshot = tmp_path_factory.mktemp("playground") / "playground.png"
        await page.screenshot(path=str(screenshot))
        print(f"playground screenshot: {screenshot}")
        if os.environ.get("PLAYGROUND_SCREENSHOT"):
            shutil.copyfile(screenshot, os.environ["PLAYGROUND_SCREENSHOT"])

        # a new chat forgets it
        await page.get_by_role("button", name="New chat").click()
        assert await page.locator(".msg").count() == 0
        await expect(page.locator("#empty")).to_be_visible()
        await ask(page, QUESTION)
        assert page.sent[2]["messages"] == page.sent[0]["messages"]
        assert page.foreign == []


async def test_stop_aborts_the_generation_and_the_layout_holds(browser, endpoint_url, engine):
    from playwright.async_api import expect

    # a short window, so that the answer soon overflows the conversation box
    async with open_page(browser, endpoint_url, width=1000, height=340) as page:
        await page.get_by_label("Temperature").fill("0")
        await page.get_by_label("Max tokens").fill("4000")
        await page.get_by_label("Message").fill(STORY)
        await page.get_by_label("Message").press("Enter")
        stop = page.get_by_role("button", name="Stop")
        await expect(stop).to_be_visible()
        await expect(page.get_by_role("button", name="Send")).to_be_hidden()
        await until(
            lambda: page.evaluate("(el => el.scrollHeight > el.clientHeight + 40)(document.getElementById('log'))")
        )
        assert await unfinished(engine) == 1

        # while it streams: nothing moves, and the box follows the end of the answer
        geometry = """() => {
            const box = (id) => JSON.stringify(document.getElementById(id).getBoundingClientRect());
            const log = document.getElementById("log");
            return {composer: box("composer"), log: box("log"), send: box("stop"),
                    atEnd: log.scrollHeight - log.scrollTop - log.clientHeight < 2,
                    text: document.querySelector(".msg.assistant .content").textContent.length};
        }"""
        samples = []
        for _ in range(8):
            samples.append(await page.evaluate(geometry))
            await asyncio.sleep(0.15)
        assert samples[-1]["text"] > samples[0]["text"], "the answer was still growing"
        assert len({(s["composer"], s["log"], s["send"]) for s in samples}) == 1, samples
        assert all(s["atEnd"] for s in samples)

        # scrolled back by the reader, the text under their eyes stays put
        await page.evaluate("document.getElementById('log').scrollTop = 0")
        first = page.locator(".msg.user").first
        before, length = await first.bounding_box(), samples[-1]["text"]
        await until(
            lambda: page.evaluate(f"document.querySelector('.msg.assistant .content').textContent.length > {length}")
        )
        assert await first.bounding_box() == before
        assert await page.evaluate("document.getElementById('log').scrollTop") == 0

        await stop.click()
        stopped_at = time.monotonic()
        while await unfinished(engine) and time.monotonic() - stopped_at < 1.0:
            await asyncio.sleep(0.02)
        assert await unfinished(engine) == 0, "vLLM still generates a second after stop"
        meta = page.locator(".msg.assistant .meta")
        await expect(meta).to_contain_text("stopped")
        assert "completion tokens" not in await meta.inner_text(), "the answer had not finished by itself"
        await expect(page.get_by_role("button", name="Send")).to_be_visible()
        kept = await page.locator(".msg.assistant .content").inner_text()
        await asyncio.sleep(0.3)
        assert await page.locator(".msg.assistant .content").inner_text() == kept

        # the stopped answer stays in the conversation
        await page.get_by_label("Max tokens").fill("8")
        await ask(page, "Thanks.")
        assert page.sent[-1]["messages"][:2] == [
            {"role": "user", "content": STORY},
            {"role": "assistant", "content": kept},
        ]


async def test_server_errors_are_shown_inline(browser, endpoint_url):
    from playwright.async_api import expect

    async with httpx.AsyncClient(base_url=endpoint_url, timeout=60) as http:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": QUESTION}],
            "max_tokens": 100_000,
            "stream": True,
        }
        direct = await http.post("/v1/chat/completions", json=body)
    assert direct.status_code == 400
    message = direct.json()["error"]["message"]
    assert "max_model_len" in message

    async with open_page(browser, endpoint_url) as page:
        await page.get_by_label("Max tokens").fill("100000")
        answer = await ask(page, QUESTION)
        error = answer.get_by_role("alert")
        await expect(error).to_have_text(f"400: {message}")
        assert "stopped" not in await answer.locator(".meta").inner_text()
        # the failed turn is not part of the conversation; the next one works
        await page.get_by_label("Max tokens").fill("32")
        await page.get_by_label("Temperature").fill("0")
        answer = await ask(page, QUESTION)
        assert "Paris" in await answer.locator(".content").inner_text()
        assert page.sent[-1]["messages"] == [{"role": "user", "content": QUESTION}]

        # a model the server does not serve: vLLM's 404, as vLLM words it
        await page.get_by_label("Model").evaluate("el => { el.add(new Option('gpt-4', 'gpt-4')); el.value = 'gpt-4'; }")
        answer = await ask(page, QUESTION)
        await expect(answer.get_by_role("alert")).to_contain_text("404: The model `gpt-4` does not exist.")


async def test_copy_as_code_runs_the_same_request(browser, endpoint_url):
    from playwright.async_api import expect

    async with open_page(browser, endpoint_url, permissions=["clipboard-read", "clipboard-write"]) as page:
        await page.get_by_role("button", name="Copy as code").click()
        await expect(page.locator("#code")).to_contain_text("Type a message first")
        await page.get_by_role("button", name="Close").click()

        await page.get_by_label("Temperature").fill("0")
        await page.get_by_label("Max tokens").fill("32")
        await page.get_by_label("System prompt").fill("Answer in one sentence. It's short.")
        await ask(page, QUESTION)
        sent = page.sent[-1]
        await page.get_by_role("button", name="Copy as code").click()
        dialog = page.get_by_role("dialog")
        await expect(dialog).to_be_visible()

        codes = {}
        for tab in ("curl", "Python (OpenAI SDK)", "Python (runpod SDK)"):
            await dialog.get_by_role("tab", name=tab).click()
            await expect(dialog.get_by_role("tab", name=tab)).to_have_attribute("aria-selected", "true")
            codes[tab] = await page.locator("#code").text_content()
        await dialog.get_by_role("button", name="Copy").click()
        await expect(dialog.get_by_role("status")).to_have_text("Copied.")
        assert await page.evaluate("navigator.clipboard.readText()") == codes["Python (runpod SDK)"]

        # the code is the request the page sent for the last answer
        curl = codes["curl"]
        body = json.loads(re.search(r"-d '(.*)'$", curl.replace("'\\''", "'"), re.S).group(1))
        assert body == {k: v for k, v in sent.items() if k != "stream_options"}
        assert f"{endpoint_url}/v2/local/openai/v1/chat/completions" in curl
        assert f'base_url="{endpoint_url}/v2/local/openai/v1"' in codes["Python (OpenAI SDK)"]
        assert f'runpod.endpoint_url_base = "{endpoint_url}/v2"' in codes["Python (runpod SDK)"]
        assert "It's short." in codes["Python (runpod SDK)"]

        # ... and it runs, pasted as it is
        streamed = await run_code(["bash", "-c", curl])
        events = [json.loads(line[6:]) for line in streamed.splitlines() if line.startswith("data: {")]
        assert "Paris" in "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
        assert streamed.rstrip().endswith("data: [DONE]")
        for tab in ("Python (OpenAI SDK)", "Python (runpod SDK)"):
            output = await run_code([sys.executable, "-c", codes[tab]])
            assert "Paris" in output, (tab, output)

        # a draft in the message box is part of the request
        await dialog.get_by_role("button", name="Close").click()
        await page.get_by_label("Message").fill("And of Italy?")
        await page.get_by_role("button", name="Copy as code").click()
        await dialog.get_by_role("tab", name="Python (OpenAI SDK)").click()
        code = await page.locator("#code").text_content()
        assert '{"role": "user", "content": "And of Italy?"},' in code
        assert '{"role": "assistant", "content": ' in code


# -- the proxy: python -m handler playground ------------------------------------


class Recorder:
    """Every byte an ASGI app sends back (headers and bodies)."""

    def __init__(self, app):
        self.app = app
        self.sent = bytearray()

    async def __call__(self, scope, receive, send):
        async def recording(message):
            if message["type"] == "http.response.start":
                for name, value in message.get("headers", []):
                    self.sent += name + b": " + value + b"\n"
            elif message["type"] == "http.response.body":
                self.sent += message.get("body", b"")
            await send(message)

        await self.app(scope, receive, send=recording)


def test_upstream_from_the_command_line():
    target = playground.upstream("abc123", None, environ={"RUNPOD_API_KEY": "rpa_secret"})
    assert target.base_url == "https://api.runpod.ai/v2/abc123/openai/v1"
    assert target.api_key == "rpa_secret" and "rpa_secret" not in repr(target)
    with pytest.raises(playground.PlaygroundError, match="set RUNPOD_API_KEY"):
        playground.upstream("abc123", None, environ={})
    with pytest.raises(playground.PlaygroundError, match="not a RunPod endpoint id"):
        playground.upstream("abc/../x", None, environ={"RUNPOD_API_KEY": "k"})
    with pytest.raises(playground.PlaygroundError, match="exactly one"):
        playground.upstream(None, None, environ={})
    with pytest.raises(playground.PlaygroundError, match="not an http"):
        playground.upstream(None, "api.example.com/v1", environ={})
    lb = playground.upstream(None, "https://xyz789.api.runpod.ai/v1/", environ={"RUNPOD_API_KEY": "k"})
    assert (lb.base_url, lb.endpoint_id, lb.api_key) == ("https://xyz789.api.runpod.ai/v1", None, "k")
    with pytest.raises(playground.PlaygroundError, match="set RUNPOD_API_KEY"):
        playground.upstream(None, "https://xyz789.api.runpod.ai/v1", environ={})
    queue = playground.upstream(None, "https://api.runpod.ai/v2/q1/openai/v1", environ={"RUNPOD_API_KEY": "k"})
    assert queue.endpoint_id == "q1"
    assert queue.config(None)["runpod"]["endpoint_id"] == "q1"
    assert playground.upstream(None, "http://127.0.0.1:9/v1", environ={}).api_key is None
    other = playground.upstream(None, "http://127.0.0.1:9/v1", "MY_KEY", environ={"MY_KEY": "m"})
    assert other.api_key == "m" and other.key_env == "MY_KEY"


async def test_proxy_sends_the_key_upstream_and_never_to_the_browser(browser, worker, engine):
    from playwright.async_api import expect

    key = "sekret-d41d8cd98f00b204"
    async with local_endpoint(worker, api_key=key) as upstream_url:
        # the local endpoint with a key serves its page openly; the page asks for the key
        async with open_page(browser, upstream_url, models=False) as page:
            await expect(page.locator("#status")).to_contain_text("401: Unauthorized")
            await page.get_by_label("API key").fill(key)
            await page.get_by_label("API key").press("Tab")
            await expect(page.get_by_label("Model")).to_have_value(MODEL)
            await expect(page.locator("#status")).to_be_empty()

        target = playground.upstream(
            None, f"{upstream_url}/v2/local/openai/v1", "PLAYGROUND_TEST_KEY", environ={"PLAYGROUND_TEST_KEY": key}
        )
        recorder = Recorder(playground.proxy_app(target))
        async with serving(recorder) as url:
            async with open_page(browser, url) as page:
                assert not await page.get_by_label("API key").is_visible()
                await page.get_by_label("Temperature").fill("0")
                await page.get_by_label("Max tokens").fill("32")
                answer = await ask(page, QUESTION)
                assert "Paris" in await answer.locator(".content").inner_text()
                assert int(await answer.locator(".meta").get_attribute("data-completion-tokens")) > 3

                # stop (Escape in the message box), through the proxy, aborts the generation in vLLM
                await page.get_by_label("Max tokens").fill("4000")
                await page.get_by_label("Message").fill(STORY)
                await page.get_by_label("Message").press("Enter")
                await expect(page.locator(".msg.assistant .content").last).not_to_be_empty()
                assert await unfinished(engine) == 1
                await page.get_by_label("Message").press("Escape")
                stopped_at = time.monotonic()
                while await unfinished(engine) and time.monotonic() - stopped_at < 1.0:
                    await asyncio.sleep(0.02)
                assert await unfinished(engine) == 0, "vLLM still generates a second after stop"
                await expect(page.locator(".msg.assistant .meta").last).to_contain_text("stopped")

                await page.get_by_role("button", name="Copy as code").click()
                code = await page.locator("#code").text_content()
                assert '-H "Authorization: Bearer $PLAYGROUND_TEST_KEY"' in code
                html = await page.content()
                assert page.foreign == []
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                config = (await http.get("/playground/config.json")).text
                assert (await http.get("/v1/completions")).status_code == 404
                assert (
                    await http.post("/v1/chat/completions", content=b"{}", headers={"Content-Type": "text/plain"})
                ).status_code == 415
                other_site = await http.post(
                    "/v1/chat/completions", json={}, headers={"Origin": "https://evil.example"}
                )
                assert other_site.status_code == 403
                assert (await http.get("/v1/models", headers={"Host": "evil.example"})).status_code == 400
        assert b"Paris" in recorder.sent and b"data: [DONE]" in recorder.sent
        for shown in (bytes(recorder.sent).decode("latin-1"), html, config):
            assert key not in shown

    # a wrong key: the upstream's answer, inline
    async with local_endpoint(worker, api_key=key) as upstream_url:
        target = playground.upstream(None, f"{upstream_url}/openai/v1", environ={"RUNPOD_API_KEY": "wrong"})
        async with serving(playground.proxy_app(target)) as url:
            async with open_page(browser, url, models=False) as page:
                await expect(page.locator("#status")).to_have_text(
                    "Cannot list the models: 401: Unauthorized: send Authorization: Bearer <api key>"
                )

    # an upstream that does not answer
    target = playground.upstream(None, "http://127.0.0.1:9/v1", environ={})
    async with serving(playground.proxy_app(target)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            response = await http.get("/v1/models")
        assert response.status_code == 502
        assert response.json()["error"]["message"].startswith("cannot reach http://127.0.0.1:9/v1: ConnectError")


async def test_copy_as_code_for_a_runpod_endpoint(browser):
    """Against a RunPod endpoint the code names RunPod's URLs and reads the
    key from the environment. RunPod cannot be reached from the test
    machine: the browser is handed its /v1/models answer."""
    from playwright.async_api import expect

    target = playground.upstream("abc123", None, environ={"RUNPOD_API_KEY": "rpa_never_shown"})
    async with serving(playground.proxy_app(target)) as url:
        context = await browser.new_context()
        try:
            page = await context.new_page()
            page.set_default_timeout(60_000)
            await context.route(
                "**/*", lambda route: route.continue_() if route.request.url.startswith(url + "/") else route.abort()
            )
            await page.route(
                "**/v1/models", lambda route: route.fulfill(json={"object": "list", "data": [{"id": MODEL}]})
            )
            await page.goto(url + "/playground")
            await expect(page.get_by_label("Model")).to_have_value(MODEL)
            assert await page.locator("#target").inner_text() == "RunPod endpoint abc123"
            await page.get_by_label("Message").fill('Say it\'s "done".\nThen stop.')
            await page.get_by_role("button", name="Copy as code").click()
            codes = {}
            for tab in ("curl", "Python (OpenAI SDK)", "Python (runpod SDK)"):
                await page.get_by_role("tab", name=tab).click()
                codes[tab] = await page.locator("#code").text_content()
            assert "rpa_never_shown" not in await page.content()
        finally:
            await context.close()
    curl = codes["curl"]
    assert curl.startswith("curl -sN https://api.runpod.ai/v2/abc123/openai/v1/chat/completions \\\n")
    assert '-H "Authorization: Bearer $RUNPOD_API_KEY"' in curl
    body = json.loads(shlex.split(curl)[-1])  # the shell's reading of the -d argument
    assert body["messages"] == [{"role": "user", "content": 'Say it\'s "done".\nThen stop.'}]
    openai_code, runpod_code = codes["Python (OpenAI SDK)"], codes["Python (runpod SDK)"]
    assert 'base_url="https://api.runpod.ai/v2/abc123/openai/v1", api_key=os.environ["RUNPOD_API_KEY"]' in openai_code
    assert 'runpod.Endpoint("abc123")' in runpod_code and "endpoint_url_base" not in runpod_code
    assert 'runpod.api_key = os.environ["RUNPOD_API_KEY"]' in runpod_code
    for code in (openai_code, runpod_code):
        compile(code, "<copied code>", "exec")
        assert 'Say it\'s \\"done\\".\\nThen stop.' in code  # as JSON escapes it


def test_cli_refuses_a_missing_key():
    env = {k: v for k, v in os.environ.items() if k != "RUNPOD_API_KEY"}
    result = subprocess.run(
        [sys.executable, "-m", "handler", "playground", "--endpoint", "abc123"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 2
    assert "playground: set RUNPOD_API_KEY to your RunPod API key" in result.stderr
