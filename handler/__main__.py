"""``python -m handler``: the worker's command line.

- ``python -m handler``: the RunPod serverless worker (production entrypoint):
  a queue-based worker, or with ``ENDPOINT_TYPE=load_balancing`` the HTTP
  server of a load-balancing endpoint.
- ``python -m handler http [--host H] [--port P] [--port-health P]``: the
  load-balancing mode on this machine (vLLM's OpenAI server and ``/ping``).
- ``python -m handler run [--input FILE]``: run one job through the same
  handler and print each streamed item and the final output.
- ``python -m handler serve [--host H] [--port P] [--api-key K]``: a local
  endpoint with RunPod's API (and ``/openai/v1``) in front of the handler.
- ``python -m handler playground --endpoint ID | --url BASE``: the chat
  playground against a RunPod endpoint or any OpenAI-compatible URL.
- ``python -m handler plan MODEL``: GPU sizing for a model.
- ``python -m handler prepare``: prepare the embedded default model (once).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from .cluster import Group
    from .engine import Engine
    from .flags import EngineConfig
    from .worker import Worker

logger = logging.getLogger("handler")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# `plan` options; each defaults to the env var the worker would read for it.
PLAN_OPTIONS = {
    "--revision": ("MODEL_REVISION", "model revision"),
    "--max-model-len": ("MAX_MODEL_LEN", "context length to size the KV cache for (default: the model's)"),
    "--dtype": ("DTYPE", "weight dtype (default: auto)"),
    "--quantization": ("QUANTIZATION", "quantization method (default: from the model's config)"),
    "--kv-cache-dtype": ("KV_CACHE_DTYPE", "KV cache dtype (default: auto)"),
    "--gpu-memory-utilization": ("GPU_MEMORY_UTILIZATION", "share of each GPU vLLM may use (default: 0.9)"),
    "--max-num-seqs": (
        "MAX_NUM_SEQS",
        "sequences vLLM batches at once (default: MAX_CONCURRENCY, see CAP_MAX_NUM_SEQS); sets the CUDA-graph sizes",
    ),
    "--prices": (
        "PLAN_PRICES",
        "JSON file mapping RunPod GPU pools to USD per GPU-second "
        "(default: the dated table in handler/gpu_prices.json)",
    ),
    "--manifest": (
        "PLAN_MANIFEST",
        "for a model that needs several nodes: write a Kubernetes LeaderWorkerSet for the cheapest split "
        "to this file (- for stdout)",
    ),
    "--image": ("PLAN_IMAGE", "the image the manifest runs (default: <you>/vllm-worker)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m handler", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command")
    run = commands.add_parser("run", help="run one job and print its stream and output")
    run.add_argument("--input", default="test_input.json", help="job file (default: test_input.json)")
    run.add_argument(
        "--timings", action="store_true", help="print seconds since process start at imports, engine ready, first item"
    )
    commands.add_parser("prepare", help="prepare the embedded default model")
    sizing = commands.add_parser("plan", help="how many GPUs a model needs (reads its config.json)")
    sizing.add_argument("model", help="a local model directory or a Hugging Face hub id")
    for option, (env, help_text) in PLAN_OPTIONS.items():
        sizing.add_argument(option, default=os.environ.get(env) or None, help=f"{help_text} (env {env})")
    serve = commands.add_parser("serve", help="a local RunPod endpoint in front of the handler")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    serve.add_argument("--api-key", default=None, help="require this bearer key (or set LOCAL_API_KEY)")
    playground = commands.add_parser("playground", help="the chat page against a RunPod endpoint or an OpenAI URL")
    upstream = playground.add_mutually_exclusive_group(required=True)
    upstream.add_argument(
        "--endpoint", metavar="ENDPOINT_ID", help="a RunPod endpoint (its /openai/v1; needs RUNPOD_API_KEY)"
    )
    upstream.add_argument(
        "--url",
        metavar="BASE_URL",
        help="any OpenAI-compatible base URL, e.g. a load-balancing endpoint's https://ID.api.runpod.ai/v1",
    )
    playground.add_argument(
        "--api-key-env",
        default="RUNPOD_API_KEY",
        metavar="NAME",
        help="environment variable holding the API key sent upstream (default: RUNPOD_API_KEY)",
    )
    playground.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    playground.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    http = commands.add_parser("http", help="load-balancing mode: vLLM's OpenAI server and /ping")
    http.add_argument("--host", default=None, help="address to bind (default: HOST, else 127.0.0.1)")
    http.add_argument("--port", type=int, default=None, help="port (default: PORT, else 8000)")
    http.add_argument(
        "--port-health", type=int, default=None, help="port that also answers /ping (default: PORT_HEALTH, else --port)"
    )
    # imported here, not at the top: vLLM's engine process, when started by
    # spawn, imports this module first (as __mp_main__), before its own work
    from .errors import ConfigError

    serverless = not argv or argv[0].startswith("--rp_")
    args = None if serverless else parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    try:
        return run_command(args, parser)
    except ConfigError as error:  # a bad setting: one line naming it
        print(f"configuration error: {error}", file=sys.stderr)
        return 2


def run_command(args: argparse.Namespace | None, parser: argparse.ArgumentParser) -> int:
    """Run the command ``args`` names; ``None``: the RunPod worker."""
    if args is None or args.command not in ("plan", "playground"):  # no model here: the hub stays as the user has it
        settle_environment()
    group = _group() if args is None or args.command == "http" else None
    if group is not None and group.rank > 0:  # a node past the first of a group: vLLM headless
        from .cluster import serve_headless
        from .settings import Settings

        serve_headless(group, Settings.from_env())
    if args is None:
        if group is not None:  # node 0 of a group: HTTP, as in load-balancing mode
            return serve_http(local=False, group=group)
        return serve_http(local=False) if _load_balancing() else serve_runpod()
    if args.command == "run":
        # stdout carries the job's stream and output; vLLM's own logs go to stderr.
        os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
        return asyncio.run(run_one(Path(args.input), timings=args.timings))
    if args.command == "prepare":
        return prepare_model()
    if args.command == "plan":
        return print_plan(args)
    if args.command == "serve":
        return serve_local(args.host, args.port, args.api_key)
    if args.command == "playground":
        return serve_playground(args)
    if args.command == "http":
        return serve_http(args.host, args.port, args.port_health, local=True, group=group)
    parser.print_help()
    return 2


def settle_environment() -> None:
    """Caches on the network volume, hub offline for local models: before
    vLLM is imported (see environment.py)."""
    from . import environment
    from .settings import Settings

    environment.prepare(Settings.from_env())


def build_engine(on_fatal: Callable[[str], None] | None = None) -> Engine:
    """The engine, configured from the environment (config.py); vLLM is
    imported here. A bad setting raises ``ConfigError``."""
    from .config import engine_config
    from .engine import Engine
    from .settings import Settings

    settings = Settings.from_env()
    config = engine_config(settings)
    if on_fatal is None:
        return Engine(settings, config=config)
    return Engine(settings, config=config, on_fatal=on_fatal)


def build_worker(on_fatal: Callable[[str], None] | None = None) -> Worker:
    """The handler over a new engine (see ``build_engine``)."""
    from .worker import Worker

    return Worker(build_engine(on_fatal))


def serve_runpod() -> int:
    """The queue worker. A worker is mostly started cold for a job that waits
    in the queue, so the engine starts building at once, and the runpod SDK
    is imported and set up while it builds. The SDK's fitness checks run in
    a subprocess started first (fitness.py), which the build waits for
    before vLLM starts its engine process (see ``Engine.build_early``)."""
    from . import fitness

    checks = fitness.Checks() if fitness.wanted(os.environ, sys.argv[1:]) else None
    worker = build_worker()
    worker.engine.build_early(before_engine=checks.verdict if checks else None)
    worker.engine.wait_for_engine_process()  # no import beside vLLM's fork of it
    from . import runpod_sdk

    if checks is not None:
        checks.hand_to(os.environ)
    runpod_sdk.start(worker)
    return 0


def _load_balancing() -> bool:
    from .settings import Settings

    return Settings.from_env().endpoint_type == "load_balancing"


def _group() -> Group | None:
    """This machine's place in a group of nodes, if the environment makes it one (cluster.py)."""
    from .cluster import Group

    return Group.from_env(os.environ)


def serve_http(
    host: str | None = None,
    port: int | None = None,
    health_port: int | None = None,
    *,
    local: bool,
    group: Group | None = None,
) -> int:
    """Load-balancing mode (see load_balancing.py): the ports open before
    vLLM is imported, so that ``/ping`` answers from process start. Node 0
    of a group also holds the other nodes' links (cluster.py)."""
    from . import cluster, load_balancing
    from .settings import Settings

    settings = Settings.from_env()
    listen = load_balancing.listen_address(
        settings, os.environ, local=local, host=host, port=port, health_port=health_port
    )

    def load() -> tuple[Engine, EngineConfig]:
        engine = build_engine()
        assert engine.config is not None
        return engine, engine.config

    def watch(engine: Engine) -> Coroutine[Any, Any, None]:
        assert group is not None
        return cluster.hold_links(group, listen.host, engine)

    return load_balancing.run(settings, listen, load, watch if group is not None else None)


def serve_local(host: str, port: int, api_key: str | None) -> int:
    from . import event_loop
    from .endpoint import serve

    worker = build_worker()
    try:
        event_loop.run(serve(worker, host, port, api_key or worker.settings.local_api_key))
    except KeyboardInterrupt:
        pass
    return 0


def serve_playground(args: argparse.Namespace) -> int:
    from . import playground

    try:
        target = playground.upstream(args.endpoint, args.url, args.api_key_env)
    except playground.PlaygroundError as error:
        print(f"playground: {error}", file=sys.stderr)
        return 2
    playground.serve(target, args.host, args.port)
    return 0


def print_plan(args: argparse.Namespace) -> int:
    from . import flags, plan
    from .settings import Settings

    try:
        sized = plan.plan_model(
            args.model,
            revision=args.revision,
            token=os.environ.get("HF_TOKEN") or None,
            dtype=args.dtype or "auto",
            quantization=args.quantization,
            kv_cache_dtype=args.kv_cache_dtype or "auto",
            max_model_len=int(args.max_model_len) if args.max_model_len else None,
            gpu_memory_utilization=float(args.gpu_memory_utilization or 0.9),
            prices=plan.load_prices(args.prices),
        )
        if args.manifest and sized.recommended_split is None:
            raise plan.PlanError("no LeaderWorkerSet to write: the model needs no group of nodes")
    except (plan.PlanError, ValueError) as error:
        print(f"plan: {error}", file=sys.stderr)
        return 2
    print(plan.render(sized, args.model))
    if args.manifest:
        write_manifest(args, sized)
    # the engine flags as vLLM's parser reads them (a bad value: ConfigError, one line)
    environ = {**os.environ, **({"MAX_NUM_SEQS": args.max_num_seqs} if args.max_num_seqs else {})}
    engine_args = flags.parse(environ).args
    settings = Settings.from_env()
    lines = plan.cuda_graph_lines(engine_args, settings.max_concurrency, settings.cap_max_num_seqs)
    print("\n".join(["", *lines]))
    return 0


def write_manifest(args: argparse.Namespace, sized: Any) -> None:
    """The LeaderWorkerSet for ``plan``'s cheapest split over several nodes (manifest.py)."""
    from . import manifest

    split = sized.recommended_split
    max_model_len = int(args.max_model_len) if args.max_model_len else None
    text = manifest.to_yaml(manifest.leaderworkerset(args.model, split, args.image or manifest.IMAGE, max_model_len))
    if args.manifest == "-":
        print(f"\n---\n{text}", end="")
        return
    Path(args.manifest).write_text(text)
    print(f"\nLeaderWorkerSet for {split.nodes} nodes written to {args.manifest} (kubectl apply -f {args.manifest})")


def prepare_model() -> int:
    from . import embedded_model
    from .settings import Settings

    target = Settings.from_env().embedded_model_dir
    if embedded_model.is_prepared(target):
        print(f"{embedded_model.NAME} is ready in {target}")
        return 0
    embedded_model.prepare(target)
    print(f"{embedded_model.NAME} prepared in {target}")
    return 0


async def run_one(path: Path, *, timings: bool = False) -> int:
    try:
        job: Any = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        print(f"cannot read the job file {path}: {error}", file=sys.stderr)
        return 2
    from .errors import JobError

    marks: dict[str, float] = {}
    # an engine failure reaches the job as its error, and this command exits 1
    worker = build_worker(on_fatal=lambda reason: None)
    from .engine import since_process_start

    engine = worker.engine
    marks["imports"] = since_process_start()
    job.setdefault("id", "local-run")
    output: list[Any] = []
    final = ""  # the answer, or the job's error: printed once vLLM has shut down and logged it, so it ends the run
    try:
        try:
            await engine.start()  # what the job would trigger; started here to time it
            marks["engine_ready"] = since_process_start()
        except JobError:
            pass  # the handler yields the same error below
        async for item in worker.handle(job):
            if isinstance(item, dict) and "error" in item:
                final = f"[error] {item['error']}"
                break
            if not output:
                marks["first_item"] = since_process_start()
            print(f"[stream] {json.dumps(item)}", flush=True)
            output.append(item)
        else:
            final = f"[output] {json.dumps({'status': 'COMPLETED', 'output': output})}"
    finally:
        await engine.shutdown()
        if timings:
            print(f"[timings] {json.dumps(marks)}", flush=True)
    print(final, flush=True)
    return 1 if final.startswith("[error]") else 0


def exit_cleanly(status: int | str | None) -> NoReturn:
    """End the process once the command has finished and shut its engine down.

    Interpreter teardown would then only unload native extensions, and those
    vLLM brings in (triton's nanobind modules) print hundreds of "leaked
    type/function" reports while it does, after the answer: to a newcomer that
    reads as a crash. Exit handlers still run (vLLM's included); an exception
    that escapes ``main`` is not routed here and prints as usual.
    """
    if isinstance(status, str):  # SystemExit("message"), as sys.exit prints it
        print(status, file=sys.stderr)
        status = 1
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status or 0)


def cli() -> NoReturn:
    """``python -m handler``: ``main`` and then a clean exit."""
    try:
        code: int | str | None = main()
    except SystemExit as stop:
        code = stop.code
    except KeyboardInterrupt:
        code = 130
    exit_cleanly(code)


if __name__ == "__main__":
    cli()
