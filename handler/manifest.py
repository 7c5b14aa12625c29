"""The Kubernetes manifest for a group of nodes: a LeaderWorkerSet that runs
this image on every pod of a group, and a Service in front of its leader.

LeaderWorkerSet (kubernetes-sigs/lws) starts the pods of a group together and
gives each ``LWS_LEADER_ADDRESS``, ``LWS_GROUP_SIZE`` and ``LWS_WORKER_INDEX``,
from which the worker makes vLLM's flags (cluster.py): the leader (index 0)
serves the API, the others run vLLM headless. ``RecreateGroupOnPodRestart``
restarts the whole group when one of its pods restarts, since vLLM cannot
take a node back into a running group; the worker exits non-zero on any
node's loss, which is such a restart.

``python -m handler plan MODEL --manifest FILE`` writes it for the cheapest
split over several nodes; tests/test_manifest.py checks it against
LeaderWorkerSet's published CRD schema and Kubernetes' own schemas.
"""

from __future__ import annotations

from typing import Any

from .plan import GROUP_PORT, NodeSplit, group_settings

NAME = "vllm-worker"
IMAGE = "<you>/vllm-worker"  # the image you built and pushed (docs/deploying.md)
API_VERSION = "leaderworkerset.x-k8s.io/v1"
# The token as a Kubernetes secret (kubectl create secret generic hf-token
# --from-literal=token=...), never in the manifest; optional for open models.
HF_TOKEN_SECRET = {"name": "hf-token", "key": "token", "optional": True}
# Kubernetes counts 204 as ready, and /ping says 204 while the engine boots:
# the leader is ready on 200 only.
READY = (
    f"import urllib.request as r; r.urlopen('http://127.0.0.1:{GROUP_PORT}/ping', timeout=5).status == 200 or exit(1)"
)


def leaderworkerset(model: str, split: NodeSplit, image: str, max_model_len: int | None = None) -> list[dict]:
    """The LeaderWorkerSet and its leader's Service, as Kubernetes objects."""
    assert split.nodes is not None
    env: list[dict[str, Any]] = [
        {"name": name, "value": value} for name, value in group_settings(model, split, max_model_len).items()
    ]
    env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": HF_TOKEN_SECRET}})
    group = {
        "apiVersion": API_VERSION,
        "kind": "LeaderWorkerSet",
        "metadata": {"name": NAME},
        "spec": {
            "replicas": 1,
            "leaderWorkerTemplate": {
                "size": split.nodes,
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": {
                    "metadata": {"labels": {"role": "leader"}},
                    "spec": _pod(image, env, split.tensor_parallel, leader=True),
                },
                "workerTemplate": {"spec": _pod(image, env, split.tensor_parallel, leader=False)},
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": NAME},
        "spec": {
            "selector": {"leaderworkerset.sigs.k8s.io/name": NAME, "role": "leader"},
            "ports": [{"name": "http", "port": GROUP_PORT, "targetPort": GROUP_PORT}],
        },
    }
    return [group, service]


def _pod(image: str, env: list[dict[str, Any]], gpus: int, *, leader: bool) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": NAME,
        "image": image,
        "env": [dict(variable) for variable in env],  # a copy per pod: YAML without anchors
        "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
        # vLLM's processes share tensors through /dev/shm; a container's default is 64 MiB
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
    }
    if leader:
        container["ports"] = [{"name": "http", "containerPort": GROUP_PORT}]
        container["readinessProbe"] = {"exec": {"command": ["python3", "-c", READY]}, "periodSeconds": 10}
    return {"containers": [container], "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]}


def to_yaml(documents: list[dict]) -> str:
    import yaml

    return yaml.safe_dump_all(documents, sort_keys=False)
