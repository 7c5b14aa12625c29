"""The engine configuration, decided once.

Two steps share one decision:

- ``choose_model`` reads which model the environment asks for and where it
  is served from: the embedded default, a model baked into the image, a hub
  model whose snapshot a Hugging Face cache already holds (RunPod's model
  cache), a local directory, or the hub. It also says whether the hub can be
  switched off. It imports nothing from vLLM: ``environment.py`` calls it
  before vLLM and huggingface_hub are imported, since both read
  ``HF_HUB_OFFLINE`` at import.
- ``engine_config`` parses every vLLM flag with vLLM's own parser
  (``flags.py``), with the worker's defaults (that model, eager mode on CPU,
  a group's ``--nnodes`` flags on one node of several: ``cluster.py``), and
  applies the same choice.

The model is named, from strongest to weakest, by ``--model`` in
``VLLM_EXTRA_ARGS``, ``MODEL``, then worker-vllm's ``MODEL_NAME``.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
from argparse import Namespace
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .errors import ConfigError
from .settings import Settings

if TYPE_CHECKING:
    from .flags import EngineConfig

logger = logging.getLogger(__name__)

# worker-vllm's names, kept so its users can switch without renaming anything.
ALIASES: dict[str, str] = {
    "MODEL_NAME": "MODEL",
    "MODEL_REVISION": "REVISION",
    "TOKENIZER_NAME": "TOKENIZER",
    "OPENAI_SERVED_MODEL_NAME_OVERRIDE": "SERVED_MODEL_NAME",
    "CUSTOM_CHAT_TEMPLATE": "CHAT_TEMPLATE",
}
EXTRA_ARGS = "VLLM_EXTRA_ARGS"
EMBEDDED_SERVED_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
# Worker defaults on a machine without a GPU (each overridable by its env var):
# - enforce_eager: vLLM's compiled CPU path boots 3-4x slower and produced
#   wrong text for the embedded model; eager mode is correct.
# - gpu_memory_utilization: the CPU backend reads it as the share of the NUMA
#   node's RAM to reserve, and refuses to start unless that much is free right
#   now (0.92 of the node, vLLM's GPU default, rarely is). The KV cache itself
#   is sized by VLLM_CPU_KVCACHE_SPACE.
CPU_DEFAULTS: dict[str, Any] = {"enforce_eager": True, "gpu_memory_utilization": 0.3}
# Worker defaults everywhere (each overridable by its env var):
# - tool_strict_level "parameter": a forced tool call (a named tool_choice, or
#   "required") is held to the function's parameter schema. vLLM's default,
#   "auto", holds only the call's envelope to the parser's syntax unless a
#   tool says "strict": true, so a named call's arguments came back as any
#   JSON (docs/tools.md says why); with "auto" tool choice the model writes
#   text freely until it opens a call, whose arguments then fit the schema.
TOOL_DEFAULTS: dict[str, Any] = {"tool_strict_level": "parameter"}
# The embedded model's own chat template renders no tools; this one renders
# them in the Hermes format and, without tools, exactly what the model's does.
EMBEDDED_CHAT_TEMPLATE = Path(__file__).resolve().with_name("smollm2_tool_chat_template.jinja")

Source = Literal["embedded", "baked", "cached", "local", "hub"]


def from_aliases(environ: Mapping[str, str], *, warn: bool = True) -> dict[str, str]:
    """The values worker-vllm's names set, keyed by vLLM's names. vLLM's name
    wins over its alias when both are set."""
    chosen: dict[str, str] = {}
    for alias, name in ALIASES.items():
        value = environ.get(alias, "")
        if value == "":
            continue
        if environ.get(name, "") not in ("", value):
            if warn:
                logger.warning("%s and %s are both set; using %s", alias, name, name)
            continue
        chosen[name] = value
    return chosen


def extra_args(environ: Mapping[str, str]) -> list[str]:
    """``VLLM_EXTRA_ARGS`` split as a shell would."""
    extra = environ.get(EXTRA_ARGS, "")
    try:
        return shlex.split(extra)
    except ValueError as error:
        raise ConfigError(f"{EXTRA_ARGS}={extra!r} cannot be split: {error}") from None


def setting(environ: Mapping[str, str], name: str) -> str:
    """A flag's value as vLLM's parser will see it, read without vLLM: its
    option in ``VLLM_EXTRA_ARGS`` (the last one, as argparse takes it), else
    its environment variable, else its worker-vllm alias; "" when unset."""
    option = "--" + name.lower().replace("_", "-")
    value: str | None = None
    words = extra_args(environ)
    for index, word in enumerate(words):
        if word == option and index + 1 < len(words):
            value = words[index + 1]
        elif word.startswith(option + "="):
            value = word[len(option) + 1 :]
    if value is not None:
        return value
    return environ.get(name, "") or from_aliases(environ, warn=False).get(name, "")


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
        try:
            data = json.loads(manifest.read_text())
            return cls(
                name=data["model_name"],
                path=data["path"],
                revision=data.get("revision"),
                tokenizer=data.get("tokenizer_path"),
                quantization=data.get("quantization"),
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise ConfigError(
                f"BAKED_MODEL_MANIFEST={str(manifest)!r} cannot be read: {type(error).__name__}: {error}"
            ) from None


@dataclass(frozen=True)
class CachedModel:
    """A complete snapshot of the requested hub model in a Hugging Face cache."""

    name: str
    path: str
    revision: str


@dataclass(frozen=True)
class ModelChoice:
    """Which model the engine serves, from where, and under which name."""

    requested: str  # what the environment names; "" for none
    model: str  # what vLLM loads: a directory or a hub id
    source: Source
    served_name: str | None = None  # the name served when none is set
    tokenizer: str | None = None  # the baked tokenizer, when none is set
    quantization: str | None = None  # the baked quantization, when none is set
    revision: str | None = None  # the cached snapshot's revision
    offline: bool = False  # True: the hub can be switched off (HF_HUB_OFFLINE=1)

    def describe(self) -> str:
        served = f" as {self.served_name}" if self.served_name else ""
        hub = "needs no hub" if self.offline else "may need the hub"
        return f"model: {self.model} ({self.source}){served}; {hub}"


def requested_model(environ: Mapping[str, str]) -> str:
    """The model the environment names: ``--model`` in ``VLLM_EXTRA_ARGS``,
    else ``MODEL``, else ``MODEL_NAME``; "" for none."""
    return setting(environ, "MODEL")


def baked_model(settings: Settings, environ: Mapping[str, str]) -> BakedModel | None:
    """The baked model, when the environment asks for it or for no model."""
    baked = BakedModel.load(settings.baked_model_manifest)
    if baked is None:
        return None
    return baked if requested_model(environ) in ("", baked.name, baked.path) else None


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
    revision = setting(environ, "REVISION") or "main"
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


def choose_model(settings: Settings, environ: Mapping[str, str] | None = None) -> ModelChoice:
    """The model to serve, decided without importing vLLM (see the module's
    docstring). The hub is switched off only when neither the model nor the
    tokenizer the environment names needs it."""
    environ = os.environ if environ is None else environ
    wanted = requested_model(environ)
    tokenizer = setting(environ, "TOKENIZER")
    tokenizer_is_local = tokenizer == "" or Path(tokenizer).is_dir()
    baked = baked_model(settings, environ)
    if baked is not None:
        return ModelChoice(
            wanted, baked.path, "baked", baked.name, baked.tokenizer, baked.quantization, offline=tokenizer_is_local
        )
    embedded = str(settings.embedded_model_dir)
    if wanted in ("", embedded):
        return ModelChoice(wanted, embedded, "embedded", EMBEDDED_SERVED_NAME, offline=tokenizer_is_local)
    cached = cached_model(settings, environ)
    if cached is not None:
        return ModelChoice(
            wanted, cached.path, "cached", cached.name, revision=cached.revision, offline=tokenizer_is_local
        )
    if Path(wanted).is_dir():
        return ModelChoice(wanted, wanted, "local", offline=tokenizer_is_local)
    return ModelChoice(wanted, wanted, "hub")


def engine_config(settings: Settings, environ: Mapping[str, str] | None = None) -> EngineConfig:
    """vLLM's serve namespace from the environment, parsed by vLLM's parser,
    serving ``choose_model``'s choice, with eager mode (and a smaller memory
    share) on a machine without a GPU. Each default yields to its env var."""
    from . import flags
    from .cluster import Group

    environ = os.environ if environ is None else environ
    choice = choose_model(settings, environ)
    group = Group.from_env(environ)
    defaults: dict[str, Any] = {"model": choice.model, **TOOL_DEFAULTS}
    if choice.source == "embedded":
        defaults["chat_template"] = str(EMBEDDED_CHAT_TEMPLATE)
    if group is not None:  # one node of several (cluster.py)
        defaults.update(group.flag_defaults(environ))
    if choice.tokenizer:
        defaults["tokenizer"] = choice.tokenizer
    if choice.quantization:
        defaults["quantization"] = choice.quantization
    if on_cpu():
        defaults.update(CPU_DEFAULTS)
    config = flags.parse(environ, defaults=defaults)
    args = config.args
    if args.model != (choice.requested or choice.model):
        # named where the reading before vLLM cannot see it (a positional
        # model tag): the hub may already be off, so stop rather than guess
        raise ConfigError(
            f"{EXTRA_ARGS}: vLLM reads the model {args.model!r}, but before vLLM started the worker "
            f"read {choice.requested or 'none'!r}: name the model with MODEL or --model, "
            "not as a positional argument"
        )
    args.model = choice.model
    if group is not None:
        group.check(args)
        config.environment.update(group.environment())
    if not args.served_model_name and choice.served_name:
        args.served_model_name = [choice.served_name]
    if os.path.isdir(args.model):
        check_parallelism(args)
    choose_parsers(args, environ)
    size_batch(args, settings)
    one_worker = args.tensor_parallel_size * args.pipeline_parallel_size * args.data_parallel_size == 1
    if on_cpu() and one_worker and environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "0") == "0":
        # One model worker on the CPU: vLLM's single-process executor, which
        # runs the model inside EngineCore's process, as vLLM does for one
        # GPU (on the CPU vLLM otherwise spawns a second process for it), and
        # EngineCore forked, not spawned, as vLLM does on a GPU. Measured on
        # 2 cores: two process starts with their vLLM imports fewer at boot,
        # and 1.4x the tokens/s (docs/deploying.md: Cold start).
        from . import vllm_internals as vi

        config.environment.update(vi.CPU_SINGLE_PROCESS)
    return config


def choose_parsers(args: Namespace, environ: Mapping[str, str]) -> None:
    """The tool-call and reasoning parsers the user left unset, chosen from
    the model's chat template (parsers.py), and logged with the reason."""
    from . import parsers

    reasons = parsers.apply(args, environ)
    if reasons is not None:
        logger.info(parsers.describe(reasons, args))


def size_batch(args: Namespace, settings: Settings) -> None:
    """Cap vLLM's ``max_num_seqs`` at what the worker runs at once, unless
    the user sized the batch. A queue worker runs at most ``MAX_CONCURRENCY``
    jobs, and load-balancing mode serves at most that many requests, so more
    sequences than that only come from ``n`` > 1, whose extra sequences then
    wait for a free slot in vLLM's scheduler. vLLM captures CUDA graphs at
    boot for batch sizes up to twice ``max_num_seqs`` (512 by default): fewer
    sizes to capture, and less memory held for them. Never raises vLLM's own
    default."""
    from . import vllm_internals as vi

    if not settings.cap_max_num_seqs or vi.batch_size_set(args):
        return
    default = vi.default_max_num_seqs(args)
    if default is not None and settings.max_concurrency < default:
        args.max_num_seqs = settings.max_concurrency


def check_parallelism(args: Namespace) -> None:
    """Stop before any weights load when TENSOR_PARALLEL_SIZE cannot split the
    model's attention heads. A config that cannot be read is left to vLLM."""
    from . import plan

    try:
        model_config = plan.load_config(args.model, args.revision, args.hf_token)
    except plan.PlanError:
        return
    try:
        plan.check_tensor_parallel(model_config, args.tensor_parallel_size)
    except plan.PlanError as error:
        raise ConfigError(str(error)) from None


def on_cpu() -> bool:
    """vLLM runs on the CPU here (the CPU build, no GPU)."""
    from . import vllm_internals as vi

    return bool(vi.current_platform.is_cpu())


def uses_embedded_model(args: Namespace, settings: Settings) -> bool:
    return args.model == str(settings.embedded_model_dir)
