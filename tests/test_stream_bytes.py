"""What every streamed path delivers, byte for byte, held to a recording.

The same greedy requests go through each path a streamed token can take: a
queue job through the handler (OpenAI and native), the local endpoint's
OpenAI route and its /stream, and load-balancing mode. The bytes each path
delivers are compared with tests/golden/streams.json, recorded before the
front end's per-token work was cut (bench/frontend.py), so that no
optimisation changes what a client receives. Only what differs between two
runs of the same request is masked: response ids, creation times and vLLM's `system_fingerprint`. How a
queue job's events fall into batches depends on timing, so queue outputs
are compared joined (OpenAI: the SSE text; native: each choice's tokens, its
finish reason and the last usage).

    RECORD_STREAMS=1 .venv/bin/python -m pytest tests/test_stream_bytes.py   # re-record
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import run_job, serving
from test_local_endpoint import local_endpoint

pytestmark = pytest.mark.vllm

GOLDEN = Path(__file__).parent / "golden" / "streams.json"
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
SAMPLING = {"max_tokens": 12, "temperature": 0}
CHAT = {"model": MODEL, "messages": MESSAGES, **SAMPLING, "stream": True, "stream_options": {"include_usage": True}}
COMPLETION = {"model": MODEL, "prompt": "1, 2, 3,", **SAMPLING, "stream": True}
NATIVE = {"messages": MESSAGES, "sampling_params": {**SAMPLING, "n": 2, "seed": 7, "temperature": 0.8}, "stream": True}
VARYING = [  # (pattern, replacement): what two runs of one request may differ in
    (re.compile(r'"id": ?"(chatcmpl|cmpl)-[^"]*"'), r'"id":"\1-ID"'),
    (re.compile(r'"created": ?\d+'), '"created":0'),
    # vLLM's stamp of its engine configuration's hash: the session engine's
    # configuration is the tests' to change (the recording predates some of it)
    (re.compile(r',"system_fingerprint":"[^"]*"'), ""),
]


def masked(text: str) -> str:
    for pattern, replacement in VARYING:
        text = pattern.sub(replacement, text)
    return text


def native_joined(items: list[dict[str, Any]]) -> str:
    choices: dict[int, dict[str, Any]] = {}
    for item in items:
        assert "error" not in item, item
        for choice in item["choices"]:
            joined = choices.setdefault(choice["index"], {"tokens": [], "finish_reason": None})
            joined["tokens"] += choice["tokens"]
            joined["finish_reason"] = choice.get("finish_reason") or joined["finish_reason"]
    return json.dumps({"choices": choices, "usage": items[-1]["usage"]}, sort_keys=True)


async def http_stream(url: str, body: dict[str, Any]) -> str:
    async with httpx.AsyncClient(timeout=120) as http, http.stream("POST", url, json=body) as response:
        assert response.status_code == 200, await response.aread()
        return (await response.aread()).decode()


async def local_stream(url: str, job_input: dict[str, Any]) -> str:
    """A native job through the local endpoint's /run and /stream, as the
    runpod SDK reads it: every stream item's output, in order."""
    outputs: list[Any] = []
    async with httpx.AsyncClient(base_url=f"{url}/v2/local", timeout=120) as http:
        job_id = (await http.post("/run", json={"input": job_input})).json()["id"]
        while True:
            answer = (await http.get(f"/stream/{job_id}")).json()
            outputs += [item["output"] for item in answer.get("stream", [])]
            if answer["status"] not in ("IN_QUEUE", "IN_PROGRESS"):
                assert answer["status"] == "COMPLETED", answer
                return native_joined(outputs)


@pytest.fixture(scope="module")
async def delivered(worker, engine) -> dict[str, str]:
    from handler.load_balancing import Front

    openai_chat = {"openai_route": "/v1/chat/completions", "openai_input": CHAT}
    openai_completion = {"openai_route": "/v1/completions", "openai_input": COMPLETION}
    out = {
        "queue job, OpenAI chat": "".join(await run_job(worker, openai_chat)),
        "queue job, OpenAI completion": "".join(await run_job(worker, openai_completion)),
        "queue job, native": native_joined(await run_job(worker, NATIVE)),
    }
    async with local_endpoint(worker) as (url, _):
        out["local endpoint, OpenAI chat"] = await http_stream(f"{url}/v2/local/openai/v1/chat/completions", CHAT)
        out["local endpoint, OpenAI completion"] = await http_stream(
            f"{url}/v2/local/openai/v1/completions", COMPLETION
        )
        out["local endpoint, native /stream"] = await local_stream(url, NATIVE)
    async with serving(Front(engine.settings, engine)) as url:
        out["load-balancing mode, OpenAI chat"] = await http_stream(f"{url}/v1/chat/completions", CHAT)
        out["load-balancing mode, OpenAI completion"] = await http_stream(f"{url}/v1/completions", COMPLETION)
    return {name: masked(text) for name, text in out.items()}


def test_every_streamed_path_delivers_the_recorded_bytes(delivered):
    if os.environ.get("RECORD_STREAMS"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(delivered, indent=1, ensure_ascii=False) + "\n")
    recorded = {name: masked(text) for name, text in json.loads(GOLDEN.read_text()).items()}
    assert set(delivered) == set(recorded)
    for name, text in delivered.items():
        assert text == recorded[name], f"{name}: the bytes changed"


def test_paths_that_share_a_format_agree(delivered):
    """The recording itself is consistent: an OpenAI stream is the same on
    every path, and a native job the same through the handler and /stream."""
    for kind in ("OpenAI chat", "OpenAI completion"):
        texts = {delivered[f"{path}, {kind}"] for path in ("queue job", "local endpoint", "load-balancing mode")}
        assert len(texts) == 1, kind
    assert delivered["queue job, native"] == delivered["local endpoint, native /stream"]
    assert '"content":" Paris"' in delivered["queue job, OpenAI chat"]
