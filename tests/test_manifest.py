"""The LeaderWorkerSet that ``plan --manifest`` writes, checked against
LeaderWorkerSet's published CRD schema and Kubernetes' own schemas for the
pod templates and the Service (both vendored in tests/schemas, with their
sources and versions in its README), and read back the way each pod's
worker reads its environment (cluster.py)."""

from __future__ import annotations

import copy
import hashlib
import json
from argparse import Namespace
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from test_plan import DEEPSEEK_R1_16_BIT, LLAMA_2_70B, write_model

from handler import manifest
from handler.cluster import Group
from handler.plan import make_plan

SCHEMAS = Path(__file__).resolve().parent / "schemas"
LWS_CRD = SCHEMAS / "leaderworkerset.x-k8s.io_leaderworkersets.yaml"
LWS_CRD_SHA256 = "c5dcad8ed943e495490241f00b9a1b45d51203b6d484020db3636d5bf553568e"  # lws v0.10.0
KUBERNETES = SCHEMAS / "kubernetes-v1.37.0-definitions.json"


@cache
def lws_validator() -> jsonschema.Validator:
    crd = yaml.safe_load(LWS_CRD.read_text())
    (v1,) = [version for version in crd["spec"]["versions"] if version["name"] == "v1"]
    return jsonschema.Draft7Validator(v1["schema"]["openAPIV3Schema"])


@cache
def kubernetes_validator(definition: str) -> jsonschema.Validator:
    definitions = json.loads(KUBERNETES.read_text())
    schema = {**definitions, "$ref": f"#/$defs/{definition}"}
    return jsonschema.Draft202012Validator(schema)


def problems(validator: jsonschema.Validator, document: Any) -> list[str]:
    return [f"{'.'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(document)]


@pytest.fixture(scope="module")
def deepseek(tmp_path_factory) -> tuple[Any, list[dict]]:
    """DeepSeek-R1 in 16 bits (its real config.json shape), which fits no
    8-GPU worker, and the manifest ``plan --manifest`` writes for it, read
    back from its YAML."""
    model = write_model(tmp_path_factory.mktemp("models") / "DeepSeek-R1-16bit", DEEPSEEK_R1_16_BIT)
    plan = make_plan(DEEPSEEK_R1_16_BIT)
    text = manifest.to_yaml(manifest.leaderworkerset(str(model), plan.recommended_split, "registry.example/vllm:1"))
    return plan, list(yaml.safe_load_all(text))


def pod_templates(group: dict) -> dict[str, dict]:
    template = group["spec"]["leaderWorkerTemplate"]
    return {"leader": template["leaderTemplate"], "worker": template["workerTemplate"]}


def test_the_vendored_crd_is_the_published_one():
    assert hashlib.sha256(LWS_CRD.read_bytes()).hexdigest() == LWS_CRD_SHA256


def test_deepseek_r1_gets_a_group_over_several_nodes(deepseek):
    plan, (group, service) = deepseek
    split = plan.recommended_split
    assert plan.recommended is None and split.nodes > 1
    assert split.usd_per_hour == min(s.usd_per_hour for s in plan.node_splits if s.usd_per_hour is not None)
    assert (group["kind"], group["apiVersion"]) == ("LeaderWorkerSet", "leaderworkerset.x-k8s.io/v1")
    assert group["spec"]["leaderWorkerTemplate"]["size"] == split.nodes
    assert group["spec"]["leaderWorkerTemplate"]["restartPolicy"] == "RecreateGroupOnPodRestart"
    assert service["spec"]["selector"]["role"] == "leader"


def test_the_manifest_validates_against_lws_crd_schema(deepseek):
    _, (group, _) = deepseek
    assert problems(lws_validator(), group) == []


def test_its_pod_templates_and_service_validate_against_kubernetes_schemas(deepseek):
    _, (group, service) = deepseek
    for role, template in pod_templates(group).items():
        assert problems(kubernetes_validator("io.k8s.api.core.v1.PodTemplateSpec"), template) == [], role
    assert problems(kubernetes_validator("io.k8s.api.core.v1.Service"), service) == []


def test_the_schemas_catch_a_broken_manifest(deepseek):
    """The checks above can fail: a misspelt container field, a group size
    that is not a number, a Service port out of range."""
    _, (group, service) = deepseek
    broken = copy.deepcopy(group)
    broken["spec"]["leaderWorkerTemplate"]["size"] = "two"
    assert any("size" in problem for problem in problems(lws_validator(), broken))
    template = copy.deepcopy(pod_templates(group)["worker"])
    template["spec"]["containers"][0]["imagePulPolicy"] = "Always"
    assert problems(kubernetes_validator("io.k8s.api.core.v1.PodTemplateSpec"), template)
    wrong_port = copy.deepcopy(service)
    wrong_port["spec"]["ports"][0]["port"] = "http"
    assert problems(kubernetes_validator("io.k8s.api.core.v1.Service"), wrong_port)


def test_each_pod_finds_its_place_in_the_group(deepseek):
    """What LeaderWorkerSet adds to each pod's environment, plus the
    manifest's own, read the way the worker reads it: the leader serves,
    the others run headless, and the layout divides over the nodes."""
    plan, (group, _) = deepseek
    split = plan.recommended_split
    size = group["spec"]["leaderWorkerTemplate"]["size"]
    for index in range(size):
        template = pod_templates(group)["leader" if index == 0 else "worker"]
        (container,) = template["spec"]["containers"]
        environ = {item["name"]: item["value"] for item in container["env"] if "value" in item}
        environ |= {"LWS_LEADER_ADDRESS": "vllm-worker-0.vllm-worker", "LWS_GROUP_SIZE": str(size)}
        environ["LWS_WORKER_INDEX"] = str(index)
        node = Group.from_env(environ)
        assert (node.nodes, node.rank, node.leader) == (size, index, "vllm-worker-0.vllm-worker")
        tp, pp = int(environ["TENSOR_PARALLEL_SIZE"]), int(environ["PIPELINE_PARALLEL_SIZE"])
        assert (tp, pp) == (split.tensor_parallel, split.nodes)
        node.check(Namespace(tensor_parallel_size=tp, pipeline_parallel_size=pp, data_parallel_size=1,
                             prefill_context_parallel_size=1))  # fmt: skip
        assert container["resources"]["limits"]["nvidia.com/gpu"] == str(tp)
        assert ("readinessProbe" in container) == (index == 0)
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": manifest.HF_TOKEN_SECRET}} in container["env"]


@pytest.mark.vllm  # plan prints vLLM's CUDA-graph sizes
def test_plan_writes_the_manifest_and_refuses_one_for_a_model_that_fits(tmp_path, capsys):
    from handler.__main__ import main

    model = write_model(tmp_path / "DeepSeek-R1-16bit", DEEPSEEK_R1_16_BIT)
    target = tmp_path / "lws.yaml"
    assert main(["plan", str(model), "--manifest", str(target), "--image", "registry.example/vllm:1"]) == 0
    out = capsys.readouterr().out
    assert "Cheapest: 5 nodes x 8 x 48 GB (A6000, A40): TENSOR_PARALLEL_SIZE=8, PIPELINE_PARALLEL_SIZE=5" in out
    assert f"MODEL_NAME={model} TENSOR_PARALLEL_SIZE=8 PIPELINE_PARALLEL_SIZE=5 PORT=8000" in out
    assert f"LeaderWorkerSet for 5 nodes written to {target}" in out
    group, _ = yaml.safe_load_all(target.read_text())
    assert problems(lws_validator(), group) == []
    assert pod_templates(group)["leader"]["spec"]["containers"][0]["image"] == "registry.example/vllm:1"

    fits = write_model(tmp_path / "llama-2-70b", LLAMA_2_70B)
    assert main(["plan", str(fits), "--manifest", str(tmp_path / "none.yaml")]) == 2
    assert "plan: no LeaderWorkerSet to write: the model needs no group of nodes" in capsys.readouterr().err
