"""The process environment, settled before vLLM or huggingface_hub is imported
(both read their environment variables at import time).

- vLLM's caches: baked into the image, and on a RunPod network volume
  (``/runpod-volume``) per GPU type, with the Hugging Face cache, so the next
  cold start reuses them (``caches.py``).
- ``HF_HUB_OFFLINE=1`` when the model ``config.choose_model`` chose needs no
  hub: the embedded default, a model baked into the image, a local directory,
  or a hub model whose complete snapshot a Hugging Face cache already holds
  (RunPod's model cache on the volume): a cold start then makes no hub call,
  and works while the hub is slow or down.

- The runpod SDK's log level: INFO unless the user set one. The SDK logs at
  DEBUG by default, several lines for every poll for jobs (hundreds in a
  15-second boot here), which bury the worker's own lines in RunPod's log.

Values the user set always win.
"""

from __future__ import annotations

import logging
import os
from collections.abc import MutableMapping

from . import caches, config
from .settings import Settings

logger = logging.getLogger(__name__)


def prepare(settings: Settings, environ: MutableMapping[str, str] | None = None) -> None:
    """Caches in place, and the hub off when the chosen model needs none."""
    environ = os.environ if environ is None else environ
    caches.place(settings, environ)
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
    if not (environ.get("RUNPOD_LOG_LEVEL") or environ.get("RUNPOD_DEBUG_LEVEL")):  # the SDK reads both
        environ["RUNPOD_LOG_LEVEL"] = "INFO"
    logger.info(choice.describe())
