"""Worker settings: everything the worker reads from the environment that is not
a vLLM flag (vLLM flags are derived from vLLM's own parser in ``flags.py``).

One typed object, read once; the settings table in docs/configuration.md is checked against it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vllm-worker"


class Settings(BaseModel):
    """Worker settings, each read from the environment variable of the same
    name in upper case."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_concurrency: int = Field(
        30,
        ge=1,
        description="Jobs one worker runs at once (they share vLLM's batch). In load-balancing "
        "mode: requests served at once; one more is answered 429 with `Retry-After`.",
    )
    cap_max_num_seqs: bool = Field(
        True,
        description="When neither `MAX_NUM_SEQS` nor CUDA-graph capture sizes are set, cap vLLM's "
        "`max_num_seqs` at `MAX_CONCURRENCY` (where that is below vLLM's default), and with it the "
        "batch sizes vLLM captures CUDA graphs for at boot. `false`: vLLM's defaults (see "
        "[Cold start](deploying.md#cold-start-what-the-image-bakes-and-what-the-volume-keeps)).",
    )
    stream_batch_max_events: int = Field(
        32,
        ge=1,
        description="A streamed job sends a batch once this many SSE events wait in it.",
    )
    stream_batch_max_ms: float = Field(
        100.0,
        ge=0,
        description="... or once the batch's oldest event is this many milliseconds old. "
        "Until the first generated text has gone out, events are sent at once.",
    )
    stream_batches_per_s: float = Field(
        50.0,
        ge=0,
        description="Under load, batches wait longer than `STREAM_BATCH_MAX_MS`, so that all the jobs "
        "streaming at once send about this many batches a second together (each is an HTTP post "
        "the runpod SDK makes, which costs the worker's one front-end core more than a token). "
        "`0`: never longer.",
    )
    embedded_model_dir: Path = Field(
        default_factory=lambda: _default_cache_dir() / "SmolLM2-135M-Instruct",
        description="Where the embedded default model is prepared and read from.",
    )
    volume_dir: Path = Field(
        Path("/runpod-volume"),
        description="When this directory exists (a RunPod network volume), the Hugging "
        "Face cache lives on it, and vLLM's compile, JIT and startup-plan caches too, in a "
        "directory per GPU type, vLLM and torch version (see "
        "[Cold start](deploying.md#cold-start-what-the-image-bakes-and-what-the-volume-keeps)).",
    )
    baked_vllm_cache: Path = Field(
        Path("/models/vllm-cache"),
        description="vLLM's cache made at image build time (`builder/bake_vllm_cache.py`: "
        "the model-class facts of every architecture vLLM lists). Used as `VLLM_CACHE_ROOT` "
        "without a volume; its entries are copied into the cache in use otherwise.",
    )
    baked_model_manifest: Path = Field(
        Path("/models/baked.json"),
        description="Written by `builder/download_model.py` when a model is baked into "
        "the image; that model is then served from disk, offline.",
    )
    local_api_key: str | None = Field(
        None,
        description="The local endpoint (`python -m handler serve`) requires "
        "`Authorization: Bearer <key>` when set. Never logged.",
    )
    fatal_exit_delay_s: float = Field(
        3.0,
        ge=0,
        description="After the engine fails, seconds left for job errors to reach "
        "RunPod before the worker exits non-zero.",
    )
    endpoint_type: Literal["queue", "load_balancing"] = Field(
        "queue",
        description="The kind of RunPod endpoint the worker serves: `queue` (`/run`, "
        "`/runsync`, `/openai/v1` through RunPod's queue) or `load_balancing` (vLLM's "
        "OpenAI server on `PORT`, `/ping` on `PORT_HEALTH`; see "
        "[Load-balancing endpoints](load-balancing.md)).",
    )
    port_health: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Load-balancing mode: the port RunPod asks `/ping` on (default: `PORT`, "
        "itself 80 on RunPod when unset).",
    )
    boot_wait_s: float = Field(
        300.0,
        gt=0,
        description="Load-balancing mode: how long a request that arrives while the engine "
        "boots waits for it before it is answered 503.",
    )
    node_link_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="A group of nodes (see [When a model outgrows one worker](sizing.md#when-a-model-outgrows-one-worker)): "
        "the port node 0 listens on "
        "for the other nodes' links (default: vLLM's `MASTER_PORT` + 1).",
    )
    max_json_depth: int = Field(
        100,
        ge=1,
        description="Job inputs (and the local endpoint's request bodies) nested deeper than "
        "this many levels of arrays and objects fail with 400.",
    )
    max_run_bytes: int = Field(
        10_000_000,
        ge=1,
        description="The local endpoint answers 413 to a `/run` body larger than this, as RunPod does (10 MB).",
    )
    max_runsync_bytes: int = Field(
        20_000_000,
        ge=1,
        description="... and to a `/runsync` or `/openai/v1` body larger than this (RunPod's `/runsync` limit, 20 MB).",
    )

    @classmethod
    def env_names(cls) -> list[str]:
        return [name.upper() for name in cls.model_fields]

    @classmethod
    def reference(cls) -> str:
        """docs/configuration.md's table of worker settings (a test keeps them equal)."""
        rows = ["| variable | default | what it does |", "|---|---|---|"]
        for name, field in cls.model_fields.items():
            if field.default_factory is not None:
                default = "`${XDG_CACHE_HOME:-~/.cache}/vllm-worker/SmolLM2-135M-Instruct`"
            else:
                default = f"`{field.default}`"
            rows.append(f"| `{name.upper()}` | {default} | {field.description} |")
        return "\n".join(rows)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        values = {name: environ[name.upper()] for name in cls.model_fields if environ.get(name.upper(), "") != ""}
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            first = error.errors()[0]
            name = str(first["loc"][0]).upper()
            raise ConfigError(f"{name}={environ.get(name)!r} is not valid: {first['msg']}") from None
