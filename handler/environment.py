"""The process environment, settled before vLLM or huggingface_hub is imported
(both read their environment variables at import time).

- A RunPod network volume (``/runpod-volume``) holds the Hugging Face cache and
  vLLM's compile cache, so the next cold start reuses both.
- A model baked into the image (``builder/download_model.py`` records it in a
  manifest) is served from disk with the hub switched off.
- A hub model that RunPod has already cached on the worker's host (the
  endpoint's "model" setting puts it in the Hugging Face cache layout on the
  volume) is served from that snapshot with the hub switched off: a cold start
  makes no hub call, and works while the hub is slow or down.
- The embedded default model, or any local model directory, needs no hub
  either: ``HF_HUB_OFFLINE=1`` avoids needless hub calls at start-up.

Values the user set always win.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path

from .settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BakedModel:
    """What ``builder/download_model.py`` recorded about the model it baked."""

    name: str
    path: str
    revision: str | None = None
    tokenizer: str | None = None
    quantization: str | None = None

    @classmethod
    def load(cls, manifest: Path) -> BakedModel | None:
        if not manifest.is_file():
            return None
        data = json.loads(manifest.read_text())
        return cls(
            name=data["model_name"],
            path=data["path"],
            revision=data.get("revision"),
            tokenizer=data.get("tokenizer_path"),
            quantization=data.get("quantization"),
        )


@dataclass(frozen=True)
class CachedModel:
    """A complete snapshot of the requested hub model in a Hugging Face cache."""

    name: str
    path: str
    revision: str


def hub_caches(settings: Settings, environ: Mapping[str, str]) -> list[Path]:
    """Hugging Face hub caches to look in: the user's, then RunPod's model cache
    on the volume (``/runpod-volume/huggingface-cache/hub``)."""
    caches = []
    if environ.get("HF_HUB_CACHE"):
        caches.append(Path(environ["HF_HUB_CACHE"]))
    if environ.get("HF_HOME"):
        caches.append(Path(environ["HF_HOME"]) / "hub")
    caches.append(settings.volume_dir / "huggingface-cache" / "hub")
    return list(dict.fromkeys(caches))


def cached_model(settings: Settings, environ: Mapping[str, str]) -> CachedModel | None:
    """The requested hub model's snapshot, when a cache holds all of its weights."""
    wanted = requested_model(environ)
    if wanted.count("/") != 1 or Path(wanted).exists():
        return None
    revision = environ.get("REVISION") or environ.get("MODEL_REVISION") or "main"
    for cache in hub_caches(settings, environ):
        repo = cache / ("models--" + wanted.replace("/", "--"))
        ref = repo / "refs" / revision
        commit = ref.read_text().strip() if ref.is_file() else revision
        snapshot = repo / "snapshots" / commit
        if commit and _is_complete(snapshot):
            return CachedModel(name=wanted, path=str(snapshot), revision=revision)
    return None


def _is_complete(snapshot: Path) -> bool:
    """A config and every weight file the snapshot's index names (or, without an
    index, at least one weight file): a half-finished download is not served."""
    if not (snapshot / "config.json").is_file():
        return False
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (snapshot / index).is_file():
            try:
                shards = set(json.loads((snapshot / index).read_text())["weight_map"].values())
            except (OSError, ValueError, KeyError, AttributeError):
                return False
            return all((snapshot / shard).is_file() for shard in shards)
    return any(snapshot.glob("*.safetensors")) or any(snapshot.glob("*.bin"))


def requested_model(environ: Mapping[str, str]) -> str:
    """The model the environment asks for (vLLM's name wins over the alias)."""
    return environ.get("MODEL") or environ.get("MODEL_NAME") or ""


def baked_model(settings: Settings, environ: MutableMapping[str, str]) -> BakedModel | None:
    """The baked model, when the environment asks for it or for no model."""
    baked = BakedModel.load(settings.baked_model_manifest)
    if baked is None:
        return None
    wanted = requested_model(environ)
    return baked if wanted in ("", baked.name, baked.path) else None


def prepare(settings: Settings, environ: MutableMapping[str, str] | None = None) -> None:
    environ = os.environ if environ is None else environ
    volume = settings.volume_dir
    if volume.is_dir():
        environ.setdefault("HF_HOME", str(volume / "huggingface-cache"))
        environ.setdefault("VLLM_CACHE_ROOT", str(volume / "vllm-cache"))
        logger.info("network volume %s: HF_HOME=%s, VLLM_CACHE_ROOT=%s",
                    volume, environ["HF_HOME"], environ["VLLM_CACHE_ROOT"])
    wanted = requested_model(environ)
    cached = None if baked_model(settings, environ) else cached_model(settings, environ)
    if cached is not None:
        logger.info("%s (revision %s) is in the model cache at %s: served from there, hub off",
                    cached.name, cached.revision, cached.path)
    local = wanted == "" or Path(wanted).is_dir() or baked_model(settings, environ) is not None
    if (local or cached) and not environ.get("TOKENIZER") and not environ.get("TOKENIZER_NAME"):
        environ.setdefault("HF_HUB_OFFLINE", "1")
