"""The front end's CPU per token, on every path a token can take.

On a GPU the engine makes tokens faster than any CPU, and everything between
the engine and the client runs in one Python process: detokenisation, vLLM's
OpenAI serving layer, the worker's own code, the runpod SDK's posts or the
HTTP server. That process's CPU seconds per token are the worker's ceiling.

The same load (16 concurrent chat completions of 128 greedy tokens,
ignore_eos, the embedded model) goes, in rotated order each round, through:

- vLLM's own server (`vllm.entrypoints.openai.api_server`), streamed, with
  the worker's chat template, parsers and tool strictness: the reference
  every ratio is taken against;
- load-balancing mode (`python -m handler http`), streamed;
- the local endpoint's OpenAI route (`python -m handler serve`), streamed;
- the production queue worker (`python -m handler` under the runpod SDK),
  against a stand-in for RunPod's job API that long-polls as RunPod's does:
  OpenAI and native jobs, streamed and not (the stream posts included);
- `AsyncLLM.generate` in a bare script: the floor for CPU per token, and the
  ceiling for tokens/s.
- the same streamed queue jobs through a worker with `STREAM_INTERVAL=16`,
  vLLM's own lever for fewer, bigger chunks, beside vLLM's server with
  `--stream-interval 16`: the same text in an eighth as many events or
  fewer, which is the user's choice, not a default.

Every server runs at once with the same engine settings (the worker's CPU
ones), so rounds interleave and machine noise hits each path alike. The CPU
counted is the front-end process's own (user + system, all its threads), not
EngineCore's: read from /proc around each round.

`--fast-engine` runs every path on a fabricated 2-layer Llama with the
embedded model's tokenizer and dummy weights (tests/tiny_llama.py) instead:
its tokens are random, but it makes them about seven times as fast on this
CPU, so the front end is fed nearer a GPU's rate, and what it spends a second
rather than a token (the post budget, the SDK's polling) weighs on each token
about as it would there.

`--profile` also runs one round of streamed OpenAI and native jobs through the
production worker under cProfile and splits its CPU per token by layer (vLLM's
share, the worker's, the SDK's). cProfile slows Python calls, so the split is
a proportion, not a timing.

    .venv/bin/python bench/frontend.py --rounds 3 --profile
    .venv/bin/python bench/frontend.py --rounds 3 --fast-engine
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import functools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from cold_start import as_flags, cpu_flags, embedded_dir, free_port, serving_on_loopback, stop  # noqa: E402 - after the path

from handler.config import EMBEDDED_SERVED_NAME as MODEL  # noqa: E402
from handler.settings import Settings  # noqa: E402

CONCURRENCY = 16
TOKENS = 128
MESSAGES = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
SAMPLING = {"max_tokens": TOKENS, "ignore_eos": True, "temperature": 0}
REFERENCE = "vLLM's own server (vllm serve), streamed"
FLOOR = "AsyncLLM.generate, no server (bare script)"
SDK = "queue worker under the runpod SDK"
# A second production worker with a far smaller post budget: the same path
# with fewer stream posts, so that a post's cost and the rest of a token's
# are told apart, from two rows measured side by side.
FEW_POSTS = {"STREAM_BATCHES_PER_S": "5"}
# vLLM's own lever for fewer, bigger chunks (`--stream-interval`, the worker's
# STREAM_INTERVAL): a chunk every this many tokens, the first and last at once.
# It changes what a client receives (fewer events, the same text), so it is
# the user's choice, measured here beside vLLM's own server with the same flag.
INTERVAL = 16
INTERVAL_SERVE = f"vllm serve --stream-interval {INTERVAL}"
INTERVAL_REFERENCE = f"vLLM's own server ({INTERVAL_SERVE}), streamed"
SPLITS = {  # a default streamed queue row -> the same jobs with fewer posts
    f"{SDK}: {kind} job, streamed": f"{SDK}: {kind} job, streamed, STREAM_BATCHES_PER_S={FEW_POSTS['STREAM_BATCHES_PER_S']}"
    for kind in ("OpenAI", "native")
}
TICK = os.sysconf("SC_CLK_TCK")
# The worker's engine settings on the CPU (one model worker in EngineCore,
# forked), given to vLLM's server and the bare script too: one engine, many fronts.
ENGINE_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_WORKER_MULTIPROC_METHOD": "fork"}
# The model every path serves, as the worker's environment (--fast-engine sets
# it); the caller's own model variables never reach the bench's processes.
MODEL_ENV: dict[str, str] = {}
MODEL_VARS = ("MODEL", "MODEL_NAME", "LOAD_FORMAT", "SERVED_MODEL_NAME", "CHAT_TEMPLATE", "CUSTOM_CHAT_TEMPLATE")
# The small budget must cut a job's posts by a third or more for the split:
# less, and the CPU difference it rests on is within the noise.
SPLIT_MIN_FEWER_POSTS = 1 / 3


def cpu_seconds(pid: int) -> float:
    """User + system CPU of the process (every thread of it, not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def env(**extra: str) -> dict[str, str]:
    return {
        **{name: value for name, value in os.environ.items() if name not in MODEL_VARS},
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
        "VLLM_LOGGING_LEVEL": "WARNING",
        "MAX_CONCURRENCY": "30",
        **ENGINE_ENV,
        **MODEL_ENV,
        **extra,
    }


class Process:
    """A front-end process in the background, its log in a file."""

    def __init__(self, command: list[str], environ: dict[str, str], cwd: Path = ROOT) -> None:
        self.log = Path(tempfile.mkstemp(prefix="bench-frontend-", suffix=".log")[1])
        with self.log.open("w") as log:
            self.popen = subprocess.Popen(command, cwd=cwd, env=environ, stdout=log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def check(self) -> None:
        if self.popen.poll() is not None:
            tail = "".join(self.log.read_text(errors="replace").splitlines(keepends=True)[-30:])
            raise RuntimeError(f"{self.popen.args!r} exited {self.popen.returncode}:\n{tail}")

    def stop(self) -> None:
        stop(self.popen)


# ---- paths over HTTP ----------------------------------------------------------------------------


async def stream_chat(http: Any, url: str) -> int:
    """One streamed chat completion; the tokens its usage reports."""
    body = {"model": MODEL, "messages": MESSAGES, **SAMPLING, "stream": True, "stream_options": {"include_usage": True}}
    tokens = 0
    async with http.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered {response.status_code}: {(await response.aread())[:300]!r}")
        async for line in response.aiter_lines():
            if line.startswith("data: {") and '"usage"' in line:
                usage = json.loads(line[6:]).get("usage")
                tokens = usage["completion_tokens"] if usage else tokens
    return tokens


class HTTPPath:
    def __init__(self, process: Process, url: str, ready_path: str) -> None:
        self.process = process
        self.url = url
        self.ready_url = url.split("/", 3)[:3]
        self.ready_path = ready_path

    async def ready(self, http: Any) -> None:
        base = "/".join(self.ready_url)
        while True:
            self.process.check()
            with contextlib.suppress(Exception):
                if (await http.get(base + self.ready_path)).status_code == 200:
                    return
            await asyncio.sleep(0.2)

    async def round(self, http: Any) -> int:
        counts = await asyncio.gather(*(stream_chat(http, self.url) for _ in range(CONCURRENCY)))
        return sum(counts)


def serving_settings() -> dict[str, Any]:
    """The worker's own serving settings, by vLLM dest: the chat template,
    the tool-call and reasoning parsers it chose from it, and its tool
    strictness. Without them vLLM's server would skip the per-token parser
    work every worker path does, and the reference would be cheaper for a
    reason that is no part of the front end."""
    from handler.config import engine_config

    environ = env()
    args = engine_config(Settings.from_env(environ), environ).args
    names = ("chat_template", "tool_strict_level", "tool_call_parser", "enable_auto_tool_choice", "reasoning_parser")
    return {name: getattr(args, name) for name in names if getattr(args, name)}


def as_env(settings: dict[str, Any]) -> dict[str, str]:
    """Serving settings as the worker's environment variables, for a worker
    from an older checkout that did not choose them itself."""
    return {name.upper(): "true" if value is True else str(value) for name, value in settings.items()}


def use_fast_engine() -> None:
    """Serve the tiny Llama with dummy weights on every path (--fast-engine),
    with the embedded model's tool chat template, so that every server does
    the same parser work per token as on the embedded model."""
    from tiny_llama import fabricate

    from handler.config import EMBEDDED_CHAT_TEMPLATE

    model = fabricate(Path(tempfile.mkdtemp(prefix="bench-frontend-tiny-")))
    atexit.register(shutil.rmtree, model, ignore_errors=True)
    MODEL_ENV.update(
        MODEL=str(model), LOAD_FORMAT="dummy", SERVED_MODEL_NAME=MODEL, CHAT_TEMPLATE=str(EMBEDDED_CHAT_TEMPLATE)
    )


def model_settings() -> dict[str, Any]:
    """The served model's settings by vLLM dest, for vLLM's server and the bare script."""
    return {"model": MODEL_ENV.get("MODEL", str(embedded_dir())), "load_format": MODEL_ENV.get("LOAD_FORMAT", "auto")}


def vllm_server(port: int, serving: dict[str, Any]) -> HTTPPath:
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *as_flags(model_settings())]
    command += ["--served-model-name", MODEL, *cpu_flags(), *as_flags(serving), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--max-num-seqs", "30", "--disable-uvicorn-access-log"]
    process = Process(command, env())
    return HTTPPath(process, f"http://127.0.0.1:{port}/v1/chat/completions", "/health")


def worker_server(mode: str, port: int) -> HTTPPath:
    process = Process([sys.executable, "-m", "handler", mode, "--port", str(port)], env(UVICORN_LOG_LEVEL="warning"))
    if mode == "http":
        return HTTPPath(process, f"http://127.0.0.1:{port}/v1/chat/completions", "/ping")
    return HTTPPath(process, f"http://127.0.0.1:{port}/v2/local/openai/v1/chat/completions", "/v2/local/health")


# ---- the production worker under the runpod SDK -------------------------------------------------


def job_input(kind: str, stream: bool) -> dict[str, Any]:
    if kind == "native":
        return {"messages": MESSAGES, "sampling_params": SAMPLING, "stream": stream}
    body: dict[str, Any] = {"model": MODEL, "messages": MESSAGES, **SAMPLING}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return {"openai_route": "/v1/chat/completions", "openai_input": body}


def tokens_in(output: Any) -> int:
    """Generated tokens in a job's output, from the usage it reports (OpenAI's
    ``completion_tokens``, native ``output``), in SSE text or JSON."""
    if isinstance(output, str):
        events = [line[6:] for line in output.splitlines() if line.startswith("data: {")]
        return max((tokens_in(json.loads(event)) for event in events), default=0)
    if isinstance(output, list):
        return max((tokens_in(item) for item in output), default=0)
    if isinstance(output, dict):
        usage = output.get("usage")
        if isinstance(usage, dict):
            return int(usage.get("completion_tokens") or usage.get("output") or 0)
        return max((tokens_in(value) for value in output.values()), default=0)
    return 0


def stand_in() -> Any:
    """The stand-in job API (tests/fake_runpod.py), answering job-take and
    job-stop as RunPod does: held open until there is something to say."""
    from fake_runpod import FakeRunPod

    return FakeRunPod(hold_s=10.0)


class SDKWorker:
    """`python -m handler` under the runpod SDK, fed by the stand-in."""

    def __init__(
        self,
        url: str,
        platform: Any,
        profile_to: Path | None = None,
        extra: dict[str, str] | None = None,
        tree: Path = ROOT,
    ) -> None:
        from fake_runpod import worker_env

        self.platform = platform
        self.tree = tree
        self.cwd = Path(tempfile.mkdtemp(prefix="bench-frontend-sdk-"))
        command = [sys.executable, "-m", "handler"]
        if profile_to is not None:
            command = [sys.executable, str(Path(__file__).resolve()), "--profiled-worker", str(profile_to)]
        environ = env(PYTHONPATH=str(tree), **worker_env(url), **(extra or {}))
        self.process = Process(command, environ, cwd=self.cwd)
        self.jobs = 0
        self.last_posts = 0.0  # stream posts per job in the last round

    async def ready(self, http: Any) -> None:
        """Ready once a first tiny job has come back."""
        self.process.check()
        job_id = self._push({"prompt": "Hi", "sampling_params": {"max_tokens": 1}})
        while job_id not in self.platform.done:
            self.process.check()
            await asyncio.sleep(0.1)

    def _push(self, job: dict[str, Any]) -> str:
        self.jobs += 1
        job_id = f"job-{self.jobs}"
        self.platform.queue.append({"id": job_id, "input": job})
        return job_id

    def path(self, kind: str, stream: bool) -> Callable[[Any], Awaitable[int]]:
        async def round(http: Any) -> int:
            ids = [self._push(job_input(kind, stream)) for _ in range(CONCURRENCY)]
            while not all(job_id in self.platform.done for job_id in ids):
                self.process.check()
                await asyncio.sleep(0.005)
            results = [self.platform.done.pop(job_id) for job_id in ids]
            self.last_posts = sum(len(self.platform.streamed.pop(job_id, ())) for job_id in ids) / len(ids)
            failed = [result for result in results if "error" in result]
            if failed:
                raise RuntimeError(f"{kind} job failed: {failed[0]['error']}")
            return sum(tokens_in(result.get("output")) for result in results)

        return round


# ---- the floor ----------------------------------------------------------------------------------


async def bare(rounds: int) -> None:
    """Boot AsyncLLM with the worker's engine arguments and run the load
    straight on ``generate``; print each round's CPU and tokens as JSON."""
    from vllm import SamplingParams  # the floor pays for vLLM only, not the worker's imports
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.async_llm import AsyncLLM

    from handler.config import CPU_DEFAULTS

    MODEL_ENV.update({name: os.environ[name] for name in ("MODEL", "LOAD_FORMAT") if name in os.environ})
    engine_args = AsyncEngineArgs(served_model_name=[MODEL], max_num_seqs=30, **model_settings(), **CPU_DEFAULTS)
    llm = AsyncLLM.from_engine_args(engine_args)
    tokenizer = llm.tokenizer
    prompt = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    params = SamplingParams(**SAMPLING, output_kind=RequestOutputKind.DELTA)

    async def one(number: int) -> int:
        count = 0
        async for out in llm.generate(prompt, params, f"bare-{number}-{time.monotonic_ns()}"):
            count += len(out.outputs[0].token_ids)
        return count

    print("[bench] ready", flush=True)
    for line in sys.stdin:  # one round per line the parent sends
        if line.strip() != "round":
            break
        cpu, start = cpu_seconds(os.getpid()), time.perf_counter()
        tokens = sum(await asyncio.gather(*(one(n) for n in range(CONCURRENCY))))
        result = {"cpu": cpu_seconds(os.getpid()) - cpu, "wall": time.perf_counter() - start, "tokens": tokens}
        print(f"[bench] {json.dumps(result)}", flush=True)
    llm.shutdown()


class BarePath:
    def __init__(self) -> None:
        command = [sys.executable, str(Path(__file__).resolve()), "--bare"]
        self.popen = subprocess.Popen(
            command, cwd=ROOT, env=env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    async def _said(self) -> str:
        """The bare script's next own line (vLLM logs to the same stdout)."""
        while True:
            line = await asyncio.to_thread(self.popen.stdout.readline)  # type: ignore[union-attr]
            if not line:
                raise RuntimeError(f"the bare script exited {self.popen.wait()}")
            if line.startswith("[bench] "):
                return line[8:].strip()

    async def ready(self, http: Any) -> None:
        await self._said()

    async def measure(self) -> dict[str, float]:
        self.popen.stdin.write("round\n")  # type: ignore[union-attr]
        self.popen.stdin.flush()  # type: ignore[union-attr]
        return json.loads(await self._said())

    def stop(self) -> None:
        self.popen.stdin.close()  # type: ignore[union-attr]
        try:
            self.popen.wait(60)
        except subprocess.TimeoutExpired:
            self.popen.kill()


# ---- the run ------------------------------------------------------------------------------------


async def measure(pid: int, run: Callable[[], Awaitable[int]]) -> dict[str, float]:
    cpu, start = cpu_seconds(pid), time.perf_counter()
    tokens = await run()
    wall = time.perf_counter() - start
    if tokens != CONCURRENCY * TOKENS:
        raise RuntimeError(f"expected {CONCURRENCY * TOKENS} tokens, got {tokens}")
    return {"cpu": cpu_seconds(pid) - cpu, "wall": wall, "tokens": tokens}


async def run(rounds: int, only: list[str], before: Path | None) -> dict[str, list[dict[str, float]]]:
    import httpx

    results: dict[str, list[dict[str, float]]] = {}
    serving = serving_settings()
    with contextlib.ExitStack() as stack:

        def sdk_worker(**options: Any) -> SDKWorker:
            """A production worker against a stand-in job API of its own."""
            platform = stand_in()
            return SDKWorker(stack.enter_context(serving_on_loopback(platform.app())), platform, **options)

        sdk = sdk_worker()
        few = sdk_worker(extra=FEW_POSTS)
        merged = sdk_worker(extra={"STREAM_INTERVAL": str(INTERVAL)})
        old = None if before is None else sdk_worker(extra=as_env(serving), tree=before)
        servers = {
            REFERENCE: vllm_server(free_port(), serving),
            INTERVAL_REFERENCE: vllm_server(free_port(), {**serving, "stream_interval": INTERVAL}),
            "load-balancing mode (handler http), streamed": worker_server("http", free_port()),
            "local endpoint, OpenAI route (handler serve), streamed": worker_server("serve", free_port()),
        }
        floor = BarePath()
        every: list[HTTPPath | SDKWorker | BarePath] = [
            *servers.values(),
            sdk,
            few,
            merged,
            *([old] if old else []),
            floor,
        ]
        paths: dict[str, tuple[int, Callable[[Any], Awaitable[int]] | None]] = {
            name: (server.process.pid, server.round) for name, server in servers.items()
        }

        def rows(
            worker: SDKWorker,
            label: str,
            streams: tuple[bool, ...] = (True,),
            named: Mapping[str, str] = MappingProxyType({}),
        ) -> None:
            """The worker's OpenAI and native rows; ``named`` renames some."""
            for stream in streams:
                for kind in ("OpenAI", "native"):
                    name = f"{label}: {kind} job{', streamed' if stream else ''}"
                    paths[named.get(name, name)] = (worker.process.pid, worker.path(kind.lower(), stream))

        rows(sdk, SDK, (True, False))
        rows(few, SDK, named=SPLITS)
        rows(merged, f"{SDK}, STREAM_INTERVAL={INTERVAL}")
        if old is not None:
            label = subprocess.run(
                ["git", "-C", str(old.tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
            ).stdout.strip()
            rows(old, f"{SDK}, the code of {label or old.tree}")
        workers = {worker.process.pid: worker for worker in (sdk, few, merged, old) if worker is not None}
        paths[FLOOR] = (floor.popen.pid, None)
        limits = httpx.Limits(max_connections=CONCURRENCY * 2, max_keepalive_connections=CONCURRENCY * 2)
        try:
            async with httpx.AsyncClient(timeout=600, limits=limits) as http:
                await asyncio.gather(*(server.ready(http) for server in every))
                print("all servers ready", flush=True)
                names = [
                    name
                    for name in paths
                    if not only or name in (REFERENCE, INTERVAL_REFERENCE, FLOOR) or any(o in name for o in only)
                ]
                for number in range(rounds + 1):  # round 0 warms every path up
                    order = names[number % len(names) :] + names[: number % len(names)]
                    for name in order:
                        pid, path = paths[name]
                        if path is None:
                            result = await floor.measure()
                        else:
                            result = await measure(pid, functools.partial(path, http))
                            if pid in workers:
                                result["posts"] = workers[pid].last_posts
                        if number:
                            results.setdefault(name, []).append(result)
                            per_token = result["cpu"] / result["tokens"] * 1e6
                            print(f"round {number}: {name}: {per_token:.0f} µs/token", flush=True)
        finally:
            for process in [*(server.process for server in servers.values()), *(w.process for w in workers.values())]:
                process.stop()
            floor.stop()
    return results


def table(results: dict[str, list[dict[str, float]]], rounds: int) -> None:
    def per_token(name: str) -> float:
        return sum(r["cpu"] for r in results[name]) / sum(r["tokens"] for r in results[name]) * 1e6

    def rate(name: str) -> float:
        return statistics.median(r["tokens"] / r["wall"] for r in results[name])

    reference, ceiling = per_token(REFERENCE), rate(FLOOR)
    print(
        f"\n{CONCURRENCY} concurrent chat completions x {TOKENS} tokens, {rounds} rounds, "
        f"{os.cpu_count()} CPUs, model {MODEL_ENV.get('MODEL', MODEL)}"
        f"{' (dummy weights)' if MODEL_ENV.get('LOAD_FORMAT') == 'dummy' else ''}; CPU of the front-end process only"
    )
    print(
        "| path | front-end CPU per token | vs vllm serve | ceiling on one core | tokens/s | vs bare AsyncLLM "
        "| stream posts per job |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in results:
        cost = per_token(name)
        posts = statistics.median(r.get("posts", 0) for r in results[name])
        print(
            f"| {name} | {cost:.0f} µs | {cost / reference:.2f}x | ≈ {1e6 / cost:,.0f} tokens/s | "
            f"{rate(name):.0f} | {rate(name) / ceiling:.3f} | {f'{posts:.1f}' if posts else '-'} |"
        )
    for many, few in SPLITS.items():
        if many in results and few in results:
            posts_split(results, many, few, per_token, reference)
    for name in results:
        if f"STREAM_INTERVAL={INTERVAL}" in name and INTERVAL_REFERENCE in results:
            like = per_token(INTERVAL_REFERENCE)
            print(f"\n{name}: {per_token(name) / like:.2f}x {INTERVAL_SERVE}'s")


def posts_split(
    results: dict[str, list[dict[str, float]]],
    many: str,
    few: str,
    per_token: Callable[[str], float],
    reference: float,
) -> None:
    """A stream post's CPU and a token's without posts, from two queue rows
    that differ only in their post budget."""

    def posts_per_token(name: str) -> float:
        return sum(r["posts"] for r in results[name]) * CONCURRENCY / sum(r["tokens"] for r in results[name])

    extra_posts = posts_per_token(many) - posts_per_token(few)
    if extra_posts < posts_per_token(many) * SPLIT_MIN_FEWER_POSTS or per_token(many) <= per_token(few):
        # the 32-event cap, not the budget, set the posts; or the noise hid them
        print(f"\n({many}: too few posts fewer with the small budget, or no CPU saved, so no split)")
        return
    post = (per_token(many) - per_token(few)) / extra_posts
    token = per_token(many) - post * posts_per_token(many)
    budget = Settings.model_fields["stream_batches_per_s"].default
    events = Settings.model_fields["stream_batch_max_events"].default
    # On one core at full tilt a job posts when its batch is old enough (all
    # jobs together about `budget` a second) or holds `events` events,
    # whichever comes first: the ceiling is the lower of the two.
    ceiling = min((1 - budget * post / 1e6) / token, 1 / (token + post / events)) * 1e6
    print(
        f"\n{many}, against the same with fewer posts: a stream post costs the front end ≈ {post:.0f} µs; "
        f"a token, posts aside, ≈ {token:.0f} µs = {token / reference:.2f}x vllm serve's. "
        f"On one core at full tilt posts come {budget:.0f} a second or one per {events} events, whichever "
        f"is more, so the ceiling is ≈ {ceiling:,.0f} tokens/s (vllm serve's: ≈ {1e6 / reference:,.0f})"
    )


# ---- the profile --------------------------------------------------------------------------------

LAYERS = [  # (layer, whose share, path fragments), first match wins
    ("vLLM's OpenAI serving layer", "vLLM", ("/vllm/entrypoints/",)),
    ("vLLM's engine client and detokenizer", "vLLM", ("/vllm/", "/tokenizers/", "/transformers/", "/zmq/")),
    ("vLLM's app framework (FastAPI, Starlette, pydantic)", "vLLM", ("/fastapi/", "/starlette/", "/pydantic")),
    ("the worker (handler/)", "worker", ("/handler/",)),
    ("the runpod SDK and its HTTP client", "SDK", ("/runpod/", "/aiohttp", "/yarl/", "/multidict/")),
    ("the event loop (asyncio)", "Python", ("/asyncio/",)),
]


def layer_of(filename: str) -> str | None:
    """A function's layer by its file; None for the C builtins and the rest of
    the standard library, whose time belongs to whoever called them."""
    for name, _, fragments in LAYERS:
        if any(fragment in filename for fragment in fragments):
            return name
    if filename.startswith("~") or "site-packages" not in filename:
        return None
    return "other packages"


def split_by_layer(stats_file: Path) -> dict[str, float]:
    """Each layer's CPU seconds: a function's own time goes to its layer;
    builtins and standard-library calls go to their callers' layers, in
    proportion to the time each caller spent in them."""
    import pstats

    stats = pstats.Stats(str(stats_file)).stats  # type: ignore[attr-defined]
    shares: dict[Any, dict[str, float]] = {}

    def owners(function: Any, seen: frozenset = frozenset()) -> dict[str, float]:
        if function in shares:
            return shares[function]
        layer = layer_of(function[0])
        if layer is not None:
            return {layer: 1.0}
        callers = stats.get(function, (0, 0, 0, 0, {}))[4]
        total = sum(entry[2] for entry in callers.values())
        if not callers or total <= 0 or function in seen:
            return {"the standard library, at the top": 1.0}
        mix: dict[str, float] = {}
        for caller, entry in callers.items():
            for name, part in owners(caller, seen | {function}).items():
                mix[name] = mix.get(name, 0.0) + part * entry[2] / total
        shares[function] = mix
        return mix

    seconds: dict[str, float] = {}
    for function, (_, _, own, _, _) in stats.items():
        for name, part in owners(function).items():
            seconds[name] = seconds.get(name, 0.0) + own * part
    return seconds


def profiled_worker(out: str) -> None:
    """`python -m handler` with cProfile switched on by SIGUSR1 and off (and
    written to ``out``) by SIGUSR2, in the main thread, where jobs run."""
    import cProfile
    import runpy

    profile = cProfile.Profile(time.thread_time)  # CPU time of this thread, not the wall clock

    def stop(*_: Any) -> None:
        profile.disable()
        profile.dump_stats(out)

    signal.signal(signal.SIGUSR1, lambda *_: profile.enable())
    signal.signal(signal.SIGUSR2, stop)
    sys.argv = ["handler"]
    runpy.run_module("handler", run_name="__main__", alter_sys=True)


async def profile(keep: Path | None) -> None:
    import httpx

    platform = stand_in()
    stats_file = Path(tempfile.mkstemp(prefix="bench-frontend-", suffix=".prof")[1])
    with serving_on_loopback(platform.app()) as api_url:
        sdk = SDKWorker(api_url, platform, profile_to=stats_file)
        try:
            async with httpx.AsyncClient() as http:
                await sdk.ready(http)
                for kind in ("openai", "native"):
                    await sdk.path(kind, True)(http)  # warm-up, unprofiled
                os.kill(sdk.process.pid, signal.SIGUSR1)
                tokens = 0
                for kind in ("openai", "native"):
                    tokens += await sdk.path(kind, True)(http)
                os.kill(sdk.process.pid, signal.SIGUSR2)
                while stats_file.stat().st_size == 0:
                    sdk.process.check()
                    await asyncio.sleep(0.1)
                await asyncio.sleep(0.5)  # let the dump finish
        finally:
            sdk.process.stop()
    seconds = split_by_layer(stats_file)
    total = sum(seconds.values())
    whose = {name: owner for name, owner, _ in LAYERS}
    print(
        f"\nthe production worker's main thread under cProfile: streamed OpenAI and native jobs, {tokens} tokens; "
        "each layer's share of its CPU per token (builtins and the standard library counted to their callers)"
    )
    print("| layer | whose | share | per token, of the profiled total |")
    print("|---|---|---|---|")
    for name, spent in sorted(seconds.items(), key=lambda item: -item[1]):
        print(f"| {name} | {whose.get(name, '-')} | {spent / total:.0%} | {spent / tokens * 1e6:.0f} µs |")
    if keep is not None:
        stats_file.replace(keep)
        print(f"(the cProfile stats: {keep})")
    else:
        stats_file.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds per path (after one warm-up)")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help="measure only the paths whose name holds this (and vllm serve and the bare floor)",
    )
    parser.add_argument(
        "--before",
        type=Path,
        help="also run the streamed queue jobs through `python -m handler` from this checkout "
        "(say, `git worktree add --detach ../before <rev>`), with the worker's serving settings",
    )
    parser.add_argument(
        "--fast-engine",
        action="store_true",
        help="serve a 2-layer Llama with dummy weights, which makes tokens about 7x as fast here",
    )
    parser.add_argument("--profile", action="store_true", help="also split the production worker's CPU by layer")
    parser.add_argument("--profile-out", type=Path, help="keep the profile's cProfile stats in this file")
    parser.add_argument("--no-table", action="store_true", help="only the profile")
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--profiled-worker", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.bare:
        asyncio.run(bare(options.rounds))
    elif options.profiled_worker:
        profiled_worker(options.profiled_worker)
    else:
        if options.fast_engine:
            use_fast_engine()
        if not options.no_table:
            table(
                asyncio.run(run(options.rounds, options.only, options.before and options.before.resolve())),
                options.rounds,
            )
        if options.profile:
            asyncio.run(profile(options.profile_out))


if __name__ == "__main__":
    main()
