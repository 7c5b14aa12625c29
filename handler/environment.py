"""The process environment, settled before vLLM or huggingface_hub is imported
(both read their environment variables at import time).

- A RunPod network volume (``/runpod-volume``) holds the Hugging Face cache and
  vLLM's compile cache, so the next cold start reuses both.
- A model baked into the image (``builder/download_model.py`` records it in a
  manifest) is served from disk with the hub switched off.
- The embedded default model, or any local model directory, needs no hub
  either: ``HF_HUB_OFFLINE=1`` avoids needless hub calls at start-up.

Values the user set always win.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import MutableMapping
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


def requested_model(environ: MutableMapping[str, str]) -> str:
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
    local = wanted == "" or Path(wanted).is_dir() or baked_model(settings, environ) is not None
    if local and not environ.get("TOKENIZER") and not environ.get("TOKENIZER_NAME"):
        environ.setdefault("HF_HUB_OFFLINE", "1")
