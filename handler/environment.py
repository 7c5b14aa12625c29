"""The process environment, settled before vLLM or huggingface_hub is imported
(both read their environment variables at import time).

- A RunPod network volume (``/runpod-volume``) holds the Hugging Face cache and
  vLLM's compile cache, so the next cold start reuses both.
- ``HF_HUB_OFFLINE=1`` when the model ``config.choose_model`` chose needs no
  hub: the embedded default, a model baked into the image, a local directory,
  or a hub model whose complete snapshot a Hugging Face cache already holds
  (RunPod's model cache on the volume): a cold start then makes no hub call,
  and works while the hub is slow or down.

Values the user set always win.
"""

from __future__ import annotations

import logging
import os
from collections.abc import MutableMapping

from . import config
from .settings import Settings

logger = logging.getLogger(__name__)


def prepare(settings: Settings, environ: MutableMapping[str, str] | None = None) -> None:
    """Caches on the volume, and the hub off when the chosen model needs none."""
    environ = os.environ if environ is None else environ
    volume = settings.volume_dir
    if volume.is_dir():
        environ.setdefault("HF_HOME", str(volume / "huggingface-cache"))
        environ.setdefault("VLLM_CACHE_ROOT", str(volume / "vllm-cache"))
        logger.info(
            "network volume %s: HF_HOME=%s, VLLM_CACHE_ROOT=%s", volume, environ["HF_HOME"], environ["VLLM_CACHE_ROOT"]
        )
    choice = config.choose_model(settings, environ)
    if choice.source == "cached":
        logger.info(
            "%s (revision %s) is in the model cache at %s: served from there%s",
            choice.requested,
            choice.revision,
            choice.model,
            ", hub off" if choice.offline else "",
        )
    if choice.offline:
        environ.setdefault("HF_HUB_OFFLINE", "1")
    logger.info(choice.describe())
