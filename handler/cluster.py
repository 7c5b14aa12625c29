"""A group of nodes serving one model: the image on RunPod Instant Clusters
and under Kubernetes' LeaderWorkerSet.

vLLM runs one model across machines with its own multiprocessing backend:
every node is given ``--nnodes``, ``--node-rank`` and ``--master-addr`` (and
``--master-port``); node 0 runs the engine, and every other node runs vLLM
headless, holding its share of the model's workers. ``Group.from_env`` reads
the group from the platform's environment, and ``Group.flag_defaults`` makes
those flags' defaults from it: the user's own flags win, as always.

Node 0 serves HTTP as load-balancing mode does (``load_balancing.py``); a
node past the first runs ``serve_headless``.

vLLM does not notice a node that leaves an idle group: node 0 answers until a
request fails, and a headless node waits for ever, holding its memory. So
the nodes hold links: node 0 listens (``hold_links``), every other node
connects (``follow``). When a link closes, node 0's engine fails (``/ping``
503, exit 1 after ``FATAL_EXIT_DELAY_S``), and a headless node stops its vLLM
processes and exits 1: the cluster, or the LeaderWorkerSet, then restarts the
group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
import time
from argparse import Namespace
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from .config import setting
from .errors import ConfigError
from .settings import Settings

if TYPE_CHECKING:
    from .engine import Engine

logger = logging.getLogger(__name__)

# Where each fact about the group comes from, strongest first: vLLM's own flag
# (its env var, or VLLM_EXTRA_ARGS), RunPod Instant Clusters, LeaderWorkerSet.
# RunPod's NODE_RANK, MASTER_ADDR and MASTER_PORT are vLLM's names already.
NODES = ("NNODES", "NUM_NODES", "LWS_GROUP_SIZE")
RANK = ("NODE_RANK", "LWS_WORKER_INDEX")
LEADER = ("MASTER_ADDR", "PRIMARY_ADDR", "LWS_LEADER_ADDRESS")
PORT = ("MASTER_PORT", "PRIMARY_PORT")
VLLM_NAMES = frozenset({"NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT"})
# RunPod Instant Clusters: the cluster network's first interface, which
# PRIMARY_ADDR is on (docs.runpod.io/instant-clusters/configuration).
INSTANT_CLUSTER_INTERFACE = "ens1"
HELLO = "vllm-worker node"
RETRY_S = 1.0
# How long a node waits for node 0's greeting: node 0's event loop answers
# slowly while vLLM imports beside it, and a node that gives up early looks
# to node 0 like a node that has left.
GREETING_S = 60.0


@dataclass(frozen=True)
class Group:
    """This machine's place in a group of nodes."""

    nodes: int
    rank: int
    leader: str  # node 0's address
    master_port: int | None
    names: Mapping[str, str]  # "nodes", "rank", "leader": the variable that set it
    node_address: str | None = None  # NODE_ADDR (Instant Clusters)
    gpus_per_node: int | None = None  # NUM_TRAINERS (Instant Clusters)
    instant_cluster: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Group | None:
        """The group the environment describes, or None for one machine. A
        group that cannot work raises ``ConfigError`` naming the variable."""
        environ = os.environ if environ is None else environ
        found = _first(environ, NODES)
        if found is None:
            return None
        nodes_name, nodes_text = found
        nodes = _number(nodes_name, nodes_text, minimum=1)
        if nodes == 1:
            return None
        rank_found = _first(environ, RANK)
        if rank_found is None:
            raise ConfigError(
                f"{nodes_name}={nodes} makes this machine one node of a group, but its rank is not set: "
                "set NODE_RANK (0 on the node that serves the API)"
            )
        rank_name, rank_text = rank_found
        rank = _number(rank_name, rank_text, minimum=0)
        if rank >= nodes:
            raise ConfigError(
                f"{rank_name}={rank} is not valid: {nodes_name}={nodes} nodes are ranked 0 to {nodes - 1}"
            )
        leader = _first(environ, LEADER)
        if leader is None:
            raise ConfigError(
                f"{nodes_name}={nodes}: the address of node 0 is not set: set MASTER_ADDR "
                "(RunPod Instant Clusters set PRIMARY_ADDR, a LeaderWorkerSet sets LWS_LEADER_ADDRESS)"
            )
        port = _first(environ, PORT)
        trainers = environ.get("NUM_TRAINERS", "")
        return cls(
            nodes=nodes,
            rank=rank,
            leader=leader[1],
            master_port=_number(port[0], port[1], minimum=1) if port else None,
            names={"nodes": nodes_name, "rank": rank_name, "leader": leader[0]},
            node_address=environ.get("NODE_ADDR") or None,
            gpus_per_node=_number("NUM_TRAINERS", trainers, minimum=1) if trainers else None,
            instant_cluster=bool(environ.get("PRIMARY_ADDR")),
        )

    def flag_defaults(self, environ: Mapping[str, str]) -> dict[str, Any]:
        """vLLM's defaults for this node; a flag the user sets wins. On an
        Instant Cluster, with neither TENSOR_PARALLEL_SIZE nor
        PIPELINE_PARALLEL_SIZE set: tensor parallel over the node's GPUs,
        pipeline parallel over the nodes, vLLM's layout for several nodes."""
        defaults: dict[str, Any] = {"nnodes": self.nodes, "node_rank": self.rank, "master_addr": self.leader}
        if self.master_port is not None:
            defaults["master_port"] = self.master_port
        parallel = [setting(environ, name) for name in ("TENSOR_PARALLEL_SIZE", "PIPELINE_PARALLEL_SIZE")]
        if self.gpus_per_node and not any(parallel):
            defaults.update(tensor_parallel_size=self.gpus_per_node, pipeline_parallel_size=self.nodes)
        return defaults

    def environment(self) -> dict[str, str]:
        """vLLM's, NCCL's and Gloo's environment for this node (the user's
        values win): the node's address on the cluster network, where vLLM
        opens its queues to the other nodes, and on an Instant Cluster that
        network's interface for NCCL and Gloo (not eth0, RunPod's docs say)."""
        environment = {"VLLM_HOST_IP": self.node_address} if self.node_address else {}
        if self.instant_cluster:
            environment.update(
                NCCL_SOCKET_IFNAME=INSTANT_CLUSTER_INTERFACE, GLOO_SOCKET_IFNAME=INSTANT_CLUSTER_INTERFACE
            )
        return environment

    def check(self, args: Namespace) -> None:
        """Stop start-up, with one line naming the variable, on a group vLLM
        cannot split the model over."""
        nodes = f"{self.names['nodes']}={self.nodes}"
        if args.data_parallel_size > 1:
            raise ConfigError(
                f"DATA_PARALLEL_SIZE={args.data_parallel_size} with {nodes}: a group serves one copy of the model; "
                "for more copies, run more groups (LeaderWorkerSet replicas, or another cluster)"
            )
        tp, pp, pcp = args.tensor_parallel_size, args.pipeline_parallel_size, args.prefill_context_parallel_size
        world = tp * pp * pcp
        if world % self.nodes:
            parts = f"TENSOR_PARALLEL_SIZE={tp} x PIPELINE_PARALLEL_SIZE={pp}" + (f" x {pcp}" if pcp > 1 else "")
            raise ConfigError(
                f"{nodes} does not divide the model's {world} workers ({parts}): each node runs the same share of them"
            )

    def link_port(self, settings: Settings, args: Namespace) -> int:
        """The port node 0 listens on for the other nodes' links."""
        return settings.node_link_port or args.master_port + 1


def _first(environ: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, str] | None:
    """The first of ``names`` that is set, and its value."""
    for name in names:
        value = setting(environ, name) if name in VLLM_NAMES else environ.get(name, "")
        if value.strip():
            return name, value.strip()
    return None


def _number(name: str, text: str, *, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise ConfigError(f"{name}={text!r} is not valid: expected an integer of at least {minimum}")
    return value


def _keep_alive(sock: socket.socket) -> None:
    """TCP keepalive probes, so that a node that vanishes without closing its
    link (power, network) is noticed within about 11 s."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in ((socket.TCP_KEEPIDLE, 5), (socket.TCP_KEEPINTVL, 2), (socket.TCP_KEEPCNT, 3)):
        sock.setsockopt(socket.IPPROTO_TCP, option, value)  # Linux's, as vLLM's wheels are


# --- node 0: the links of the other nodes -------------------------------------


async def hold_links(group: Group, host: str, engine: Engine) -> None:
    """Node 0: accept each other node's link; when one closes, fail the
    engine (``/ping`` says 503 with the reason, and the worker exits 1). A
    connection that does not greet as a node is closed and changes nothing."""
    assert engine.config is not None
    port = group.link_port(engine.settings, engine.config.args)

    async def on_link(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _keep_alive(writer.get_extra_info("socket"))
        try:
            hello = (await asyncio.wait_for(reader.readline(), 10)).decode(errors="replace").strip()
        except (TimeoutError, OSError):
            hello = ""
        if not hello.startswith(HELLO):
            writer.close()
            return
        node = hello.removeprefix(HELLO).strip()
        writer.write(f"{HELLO} 0\n".encode())
        logger.info("node %s of %d joined the group", node, group.nodes)
        with contextlib.suppress(OSError):
            while await reader.read(1024):
                pass
        engine.fail(f"node {node} of {group.nodes} left the group (its link to node 0 closed)")
        writer.close()

    try:
        server = await asyncio.start_server(on_link, host, port, reuse_address=True)
    except OSError as error:
        engine.fail(f"node 0 cannot listen for the other nodes' links on {host}:{port} (NODE_LINK_PORT): {error}")
        return
    logger.info("node 0 of %d: the other nodes' links on %s:%d", group.nodes, host, port)
    async with server:
        await server.serve_forever()


# --- the other nodes -----------------------------------------------------------


def follow(group: Group, port: int, on_lost: Callable[[str], object]) -> threading.Thread:
    """A node past the first: link to node 0 (retrying until it listens),
    and call ``on_lost`` with the reason once the link closes."""

    def run() -> None:
        said: set[str] = set()
        while isinstance(sock := _link(group, port), str):
            if sock not in said:  # say each reason once: node 0 may take minutes to start
                logger.warning("node %d: waiting for node 0's link at %s:%d: %s", group.rank, group.leader, port, sock)
                said.add(str(sock))
            time.sleep(RETRY_S)
        with sock:
            logger.info("node %d of %d: linked to node 0 at %s:%d", group.rank, group.nodes, group.leader, port)
            with contextlib.suppress(OSError):
                while sock.recv(1024):
                    pass
        on_lost(f"node 0 at {group.leader}:{port} left the group (the link closed)")

    thread = threading.Thread(target=run, name="group-link", daemon=True)
    thread.start()
    return thread


def _link(group: Group, port: int) -> socket.socket | str:
    """A link to node 0, greeted both ways, or why there is none yet."""
    try:
        sock = socket.create_connection((group.leader, port), timeout=5)
    except OSError as error:
        return f"not listening yet ({error})"
    answer = b""
    try:
        sock.settimeout(GREETING_S)
        sock.sendall(f"{HELLO} {group.rank}\n".encode())
        while b"\n" not in answer and len(answer) < 100 and (piece := sock.recv(100)):
            answer += piece
    except OSError as error:
        answer = str(error).encode()
    if not answer.startswith(HELLO.encode()):
        sock.close()
        return f"something else answers there (set NODE_LINK_PORT on every node to a free port): {answer[:60]!r}"
    sock.settimeout(None)
    _keep_alive(sock)
    return sock


def serve_headless(group: Group, settings: Settings) -> NoReturn:
    """A node past the first: vLLM's workers for this node's share of the
    model, headless, until node 0 leaves, one of them dies, or SIGTERM.
    Either way every vLLM process of this node is stopped before the
    process exits: vLLM's own headless shutdown waits on a worker that never
    leaves its wait for node 0 (5 s, then SIGTERM, 4 s, then SIGKILL)."""
    from . import embedded_model
    from . import vllm_internals as vi
    from .config import engine_config, uses_embedded_model
    from .engine import stop_child_processes

    stopping = threading.Lock()

    def stop(reason: str, status: int) -> NoReturn:
        if not stopping.acquire(blocking=False):
            while True:  # another thread is stopping the node, and ends the process
                time.sleep(60)
        (logger.info if status == 0 else logger.critical)("node %d of %d stops: %s", group.rank, group.nodes, reason)
        stop_child_processes()
        logging.shutdown()
        os._exit(status)

    def on_signal(signum: int, frame: Any) -> None:
        stop(f"received {signal.Signals(signum).name}", 0)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    config = engine_config(settings)
    args = config.args
    for name, value in config.environment.items():
        os.environ.setdefault(name, value)
    logger.info(config.describe())
    if uses_embedded_model(args, settings):
        embedded_model.prepare(settings.embedded_model_dir)
    follow(group, group.link_port(settings, args), lambda reason: stop(reason, 1))
    executor = vi.start_headless(args)
    logger.info("node %d of %d: vLLM's workers for this node are ready (headless)", group.rank, group.nodes)
    vi.wait_for_a_worker_to_end(executor)
    stop("one of vLLM's worker processes ended", 1)
