"""GPU sizing for a model: ``python -m handler plan MODEL``.

Reads a model's ``config.json`` (a local directory or a Hugging Face hub id),
estimates weight, KV cache and runtime memory for a llama-like decoder (MoE
experts and MLA attention from their config numbers), finds the GPU count and
TENSOR_PARALLEL_SIZE per RunPod GPU pool, prices each with RunPod's Serverless
rates (``gpu_prices.json``, dated) and recommends the cheapest that fits. When
nothing fits one 8-GPU worker it prints the ways out: FP8 or INT4 weights, or
several nodes. An estimate, not a promise: vision towers and other exotic
layers are not modelled.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GB = 1e9
GPU_COUNTS = (1, 2, 4, 8)
MAX_NODES = 16
GROUP_PORT = 8000  # node 0's HTTP port in a group of nodes (vLLM's own default)
QUANTIZED_WAYS_OUT = {"FP8": "fp8", "INT4": "awq"}  # sizes plan offers when nothing fits
PRICES_FILE = Path(__file__).with_name("gpu_prices.json")
OVERHEAD_FRACTION = 0.10
QUANT_SCALE_OVERHEAD = 1.03
FOUR_BIT_METHODS = ("awq", "gptq", "bitsandbytes", "marlin", "awq_marlin", "gptq_marlin")
DTYPE_BYTES = {"float16": 2, "fp16": 2, "half": 2, "bfloat16": 2, "bf16": 2, "float32": 4, "fp32": 4, "float": 4}
INDEX_FILE = "model.safetensors.index.json"


class PlanError(Exception):
    """The model cannot be sized; the message is one line saying why."""


@dataclass(frozen=True)
class Pool:
    """One RunPod GPU pool: its card size and its price per GPU-second."""

    card_gb: int
    gpus: str  # RunPod's name for the pool, e.g. "A6000, A40"
    usd_per_gpu_second: float | None


@dataclass(frozen=True)
class PriceTable:
    """RunPod's Serverless flex prices, with the date they were read and where."""

    pools: tuple[Pool, ...]
    as_of: str
    source: str
    override: str | None = None

    @property
    def card_sizes(self) -> list[int]:
        return sorted({pool.card_gb for pool in self.pools})


def load_prices(override: str | None = None) -> PriceTable:
    """The built-in table, with the prices of an override file (pool name -> $/GPU-second) applied."""
    table = json.loads(PRICES_FILE.read_text())
    prices = PriceTable(
        pools=tuple(Pool(row["card_gb"], row["gpus"], row["usd_per_gpu_second"]) for row in table["pools"]),
        as_of=table["as_of"],
        source=table["source"],
    )
    return _apply_override(prices, Path(override)) if override else prices


def _apply_override(prices: PriceTable, path: Path) -> PriceTable:
    try:
        override = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise PlanError(f"cannot read the prices file {path}: {error}") from error
    names = [pool.gpus for pool in prices.pools]
    if not isinstance(override, dict):
        raise PlanError(f"the prices file {path} must be a JSON object mapping a RunPod GPU pool to USD per GPU-second")
    for name, price in override.items():
        if name not in names:
            raise PlanError(f"the prices file {path} names an unknown GPU pool {name!r}; pools: {', '.join(names)}")
        if price is not None and (isinstance(price, bool) or not isinstance(price, (int, float)) or price <= 0):
            raise PlanError(
                f"the prices file {path}: {name!r} must be a positive number of USD per GPU-second, or null"
            )
    pools = tuple(
        Pool(pool.card_gb, pool.gpus, override.get(pool.gpus, pool.usd_per_gpu_second)) for pool in prices.pools
    )
    return PriceTable(pools, prices.as_of, prices.source, override=str(path))


def load_config(model: str, revision: str | None = None, token: str | None = None) -> dict:
    """The model's config.json, from a local directory or the Hugging Face hub."""
    if Path(model).is_dir():
        return _read_local_config(Path(model))
    return _download_config(model, revision, token)


def _read_local_config(directory: Path) -> dict:
    path = directory / "config.json"
    if not path.is_file():
        raise PlanError(f"{directory} is a directory but has no config.json")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise PlanError(f"cannot read {path}: {error}") from error


def _download_config(model: str, revision: str | None, token: str | None) -> dict:
    from huggingface_hub import hf_hub_download

    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    try:
        path = hf_hub_download(model, "config.json", revision=revision, token=token, local_files_only=offline)
        return json.loads(Path(path).read_text())
    except Exception as error:  # offline, unreachable, gated, not found, invalid id: all one answer
        raise PlanError(
            f"could not get config.json for {model!r} from the Hugging Face hub "
            f"(hub unreachable, offline, gated, or model not found: {type(error).__name__}); "
            "pass a local model directory instead"
        ) from error


def load_weight_bytes_hint(model: str) -> int | None:
    """``metadata.total_size`` of a local directory's safetensors index, if any."""
    path = Path(model) / INDEX_FILE
    if not path.is_file():
        return None
    try:
        size = json.loads(path.read_text())["metadata"]["total_size"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return int(size) if isinstance(size, (int, float)) and size > 0 else None


@dataclass
class ModelShape:
    """The numbers of a decoder's config that decide its memory."""

    layers: int
    hidden_size: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool = False
    num_experts: int = 0
    expert_intermediate_size: int | None = None
    shared_experts: int = 0
    dense_layers: int = 0  # leading layers with a dense MLP in a MoE model (first_k_dense_replace)
    mla: LatentAttention | None = None
    max_position_embeddings: int | None = None
    torch_dtype: str | None = None
    quantization_config: dict | None = None

    @classmethod
    def from_config(cls, config: dict) -> ModelShape:
        """Read the shape, from ``text_config`` when the top level has no LM keys."""
        lm = _language_model_section(config)
        heads = _required(lm, "num_attention_heads")
        hidden = _required(lm, "hidden_size")
        layers = _required(lm, "num_hidden_layers")
        head_dim = int(lm.get("head_dim") or hidden // heads)
        experts = _num_experts(lm)
        return cls(
            layers=layers,
            hidden_size=hidden,
            heads=heads,
            kv_heads=int(lm.get("num_key_value_heads") or heads),
            head_dim=head_dim,
            intermediate_size=_required(lm, "intermediate_size"),
            vocab_size=_required(lm, "vocab_size"),
            tie_word_embeddings=bool(_either(config, lm, "tie_word_embeddings", False)),
            num_experts=experts,
            expert_intermediate_size=lm.get("moe_intermediate_size"),
            shared_experts=int(lm.get("n_shared_experts") or 0) if experts else 0,
            dense_layers=min(int(lm.get("first_k_dense_replace") or 0), layers) if experts else 0,
            mla=LatentAttention.from_section(lm, head_dim),
            max_position_embeddings=lm.get("max_position_embeddings"),
            torch_dtype=_either(config, lm, "torch_dtype", None) or _either(config, lm, "dtype", None),
            quantization_config=_either(config, lm, "quantization_config", None),
        )


@dataclass
class LatentAttention:
    """Multi-head latent attention (DeepSeek-V2/V3/R1): low-rank Q and KV projections.

    vLLM caches one latent vector of ``kv_lora_rank + qk_rope_head_dim`` per
    layer and token, and keeps all of it on every GPU of a tensor-parallel group.
    """

    kv_lora_rank: int
    q_lora_rank: int | None
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int

    @classmethod
    def from_section(cls, lm: dict, head_dim: int) -> LatentAttention | None:
        if not lm.get("kv_lora_rank"):
            return None
        return cls(
            kv_lora_rank=int(lm["kv_lora_rank"]),
            q_lora_rank=int(lm["q_lora_rank"]) if lm.get("q_lora_rank") else None,
            qk_nope_head_dim=int(lm.get("qk_nope_head_dim") or head_dim),
            qk_rope_head_dim=int(lm.get("qk_rope_head_dim") or 0),
            v_head_dim=int(lm.get("v_head_dim") or head_dim),
        )

    @property
    def latent_width(self) -> int:
        return self.kv_lora_rank + self.qk_rope_head_dim

    def parameters(self, hidden: int, heads: int) -> int:
        """Q (direct or through q_lora_rank), the KV down and up projections, and the output."""
        qk_dim = self.qk_nope_head_dim + self.qk_rope_head_dim
        rank = self.q_lora_rank
        query = hidden * rank + rank * heads * qk_dim if rank else hidden * heads * qk_dim
        kv = hidden * self.latent_width + self.kv_lora_rank * heads * (self.qk_nope_head_dim + self.v_head_dim)
        return query + kv + heads * self.v_head_dim * hidden


def _language_model_section(config: dict) -> dict:
    text = config.get("text_config")
    if isinstance(text, dict) and "num_hidden_layers" not in config:
        return text
    return config


def _required(section: dict, key: str) -> int:
    value = section.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise PlanError(f"config.json has no usable {key!r}; cannot size this model")
    return value


def _either(config: dict, lm: dict, key: str, default: Any) -> Any:
    """A key from the language-model section, else the top level."""
    if lm.get(key) is not None:
        return lm[key]
    return config.get(key, default)


def _num_experts(section: dict) -> int:
    for key in ("num_local_experts", "n_routed_experts", "num_experts"):
        if section.get(key):
            return int(section[key])
    return 0


def estimate_parameters(shape: ModelShape) -> int:
    """Parameters of a llama-like decoder: embeddings, attention, gated MLP (or experts), norms."""
    embeddings = shape.vocab_size * shape.hidden_size * (1 if shape.tie_word_embeddings else 2)
    attention_and_norms = shape.layers * (_attention_parameters(shape) + 2 * shape.hidden_size)
    return embeddings + attention_and_norms + _mlp_parameters(shape) + shape.hidden_size


def _attention_parameters(shape: ModelShape) -> int:
    if shape.mla:
        return shape.mla.parameters(shape.hidden_size, shape.heads)
    hidden, q_width, kv_width = shape.hidden_size, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    return 2 * hidden * q_width + 2 * hidden * kv_width


def _mlp_parameters(shape: ModelShape) -> int:
    """All layers' MLPs: dense, or routed and shared experts plus the router after the dense layers."""
    dense = 3 * shape.hidden_size * shape.intermediate_size
    if not shape.num_experts:
        return shape.layers * dense
    per_expert = 3 * shape.hidden_size * (shape.expert_intermediate_size or shape.intermediate_size)
    moe = (shape.num_experts + shape.shared_experts) * per_expert + shape.hidden_size * shape.num_experts
    return shape.dense_layers * dense + (shape.layers - shape.dense_layers) * moe


def weight_bytes_per_param(
    shape: ModelShape, dtype: str = "auto", quantization: str | None = None
) -> tuple[float, str]:
    """Bytes per weight and what decided it (quantization method or dtype)."""
    method, bits = _quantization(shape, quantization)
    sized = _quantized_bytes(method, bits) if method else None
    if sized == 1:
        return sized, f"{method}, 8-bit"
    if sized is not None:
        return sized, f"{method}, 4-bit + {QUANT_SCALE_OVERHEAD - 1:.0%} for scales"
    per_param, label = _dtype_bytes(shape, dtype)
    return per_param, f"{label}; {method} not recognised, sized unquantized" if method else label


def _quantization(shape: ModelShape, override: str | None) -> tuple[str | None, int | None]:
    config = shape.quantization_config or {}
    method = str(config.get("quant_method") or "").lower() or None
    bits = config.get("bits") or config.get("w_bit")
    if config.get("load_in_4bit"):
        bits = 4
    elif config.get("load_in_8bit"):
        bits = 8
    if override and override.lower() != method:
        return override.lower(), None
    return method, bits


def _quantized_bytes(method: str, bits: int | None) -> float | None:
    if bits == 8 or "fp8" in method or "int8" in method or "w8a8" in method:
        return 1.0
    if bits == 4 or method in FOUR_BIT_METHODS:
        return 0.5 * QUANT_SCALE_OVERHEAD
    return None


def _dtype_bytes(shape: ModelShape, dtype: str) -> tuple[float, str]:
    name = dtype.lower()
    if name == "auto":
        name = str(shape.torch_dtype or "bfloat16").lower().removeprefix("torch.")
        if DTYPE_BYTES.get(name) == 4:  # vLLM's "auto" serves float32 checkpoints in 16-bit
            return 2, f"{name} checkpoint served in 16-bit"
    if name not in DTYPE_BYTES:
        raise PlanError(f"unknown dtype {dtype!r}; use auto, float16, bfloat16 or float32")
    return DTYPE_BYTES[name], name


def kv_bytes_per_token(shape: ModelShape, kv_cache_dtype: str = "auto") -> int:
    """K and V for every layer and KV head, for one token (the MLA latent for MLA models)."""
    kv_bytes = 1 if kv_cache_dtype.lower().startswith("fp8") else 2
    if shape.mla:  # one latent vector per layer, no separate V (vLLM's MLA cache)
        return shape.layers * shape.mla.latent_width * kv_bytes
    return 2 * shape.layers * shape.kv_heads * shape.head_dim * kv_bytes


def valid_tensor_parallel_sizes(heads: int, kv_heads: int) -> list[int]:
    """GPU counts up to 8 that divide both the attention heads and the KV heads."""
    return [count for count in GPU_COUNTS if heads % count == 0 and kv_heads % count == 0]


def check_tensor_parallel(config: dict, tensor_parallel_size: int) -> None:
    """Raise PlanError when vLLM cannot split the heads over this many GPUs: the
    size must divide the attention heads, and divide the KV heads or be a
    multiple of them (vLLM then copies each KV head to several GPUs)."""
    shape = ModelShape.from_config(config)
    tp = tensor_parallel_size
    if tp < 1:
        raise PlanError(f"TENSOR_PARALLEL_SIZE={tp} must be a positive integer")
    if shape.heads % tp == 0 and (shape.kv_heads % tp == 0 or tp % shape.kv_heads == 0):
        return
    valid = ", ".join(str(size) for size in valid_tensor_parallel_sizes(shape.heads, shape.kv_heads))
    raise PlanError(
        f"TENSOR_PARALLEL_SIZE={tensor_parallel_size} does not divide the model's "
        f"{shape.heads} attention heads and {shape.kv_heads} KV heads; use one of {valid}"
    )


@dataclass
class CardFit:
    """The smallest GPU count of one RunPod pool that holds the model, or none, and its price."""

    card_gb: int
    gpus: int | None
    usable_gb: float
    pool: str = ""
    usd_per_gpu_second: float | None = None

    @property
    def fits(self) -> bool:
        return self.gpus is not None

    @property
    def total_card_gb(self) -> float:
        return self.gpus * self.card_gb if self.gpus else float("inf")

    @property
    def usd_per_second(self) -> float | None:
        """What one worker of this row costs per second, or None (no fit, or no price)."""
        if self.gpus is None or self.usd_per_gpu_second is None:
            return None
        return self.gpus * self.usd_per_gpu_second

    @property
    def usd_per_hour(self) -> float | None:
        per_second = self.usd_per_second
        return None if per_second is None else per_second * 3600


@dataclass
class NodeSplit:
    """Several nodes of one RunPod GPU pool: tensor parallel over each node's
    GPUs, pipeline parallel across the nodes (vLLM's layout for several nodes)."""

    card_gb: int
    tensor_parallel: int  # GPUs per node
    nodes: int | None  # None: more than MAX_NODES
    usable_gb: float
    pool: str = ""
    usd_per_gpu_second: float | None = None

    @property
    def usd_per_hour(self) -> float | None:
        """All the nodes' GPUs at the pool's price, or None (no fit, or no price)."""
        if self.nodes is None or self.usd_per_gpu_second is None:
            return None
        return self.nodes * self.tensor_parallel * self.usd_per_gpu_second * 3600


@dataclass
class Plan:
    """Memory estimate and GPU choice for one model and serving setup."""

    shape: ModelShape
    parameters: int
    bytes_per_param: float
    weight_label: str
    weight_bytes: float
    weights_from_index: bool
    kv_cache_dtype: str
    kv_bytes_per_token: int
    max_model_len: int
    kv_bytes: float
    overhead_bytes: float
    total_bytes: float
    gpu_memory_utilization: float
    prices: PriceTable
    cards: list[CardFit] = field(default_factory=list)
    quantized: dict[str, Plan] = field(default_factory=dict)  # ways out when nothing fits: "FP8", "INT4"
    node_splits: list[NodeSplit] = field(default_factory=list)

    @property
    def recommended_split(self) -> NodeSplit | None:
        """The cheapest split over several nodes (then fewer nodes); by fewest
        GB of cards when no fitting split has a price."""
        fitting = [split for split in self.node_splits if split.nodes]
        priced = [split for split in fitting if split.usd_per_hour is not None]
        if priced:
            return min(priced, key=lambda split: (split.usd_per_hour, split.nodes, split.card_gb))
        return min(fitting, key=lambda split: (split.nodes or 0) * split.tensor_parallel * split.card_gb, default=None)

    @property
    def recommended(self) -> CardFit | None:
        """The cheapest fitting row (then fewer GPUs); by fewest GB of cards when no fitting row has a price."""
        fitting = [card for card in self.cards if card.fits]
        priced = [card for card in fitting if card.usd_per_second is not None]
        if priced:
            return min(priced, key=lambda card: (card.usd_per_second, card.gpus, card.card_gb))
        return min(fitting, key=lambda card: (card.total_card_gb, card.gpus), default=None)

    def needed_bytes(self, gpus: int) -> float:
        """Memory for a tensor-parallel group of this many GPUs: MLA's latent cache is on each of them."""
        kv = self.kv_bytes * (gpus if self.shape.mla else 1)
        return (self.weight_bytes + kv) * (1 + OVERHEAD_FRACTION)


def make_plan(
    config: dict,
    *,
    dtype: str = "auto",
    quantization: str | None = None,
    kv_cache_dtype: str = "auto",
    max_model_len: int | None = None,
    gpu_memory_utilization: float = 0.9,
    weight_bytes_hint: int | None = None,
    prices: PriceTable | None = None,
) -> Plan:
    """Size the model for the given serving settings, price each RunPod pool, and
    when nothing fits one worker, size the ways out."""
    size = functools.partial(
        _size,
        config,
        dtype=dtype,
        kv_cache_dtype=kv_cache_dtype,
        max_model_len=max_model_len,
        gpu_memory_utilization=gpu_memory_utilization,
        prices=prices or load_prices(),
    )
    plan = size(quantization=quantization, weight_bytes_hint=weight_bytes_hint)
    if plan.recommended is None:
        plan.quantized = {
            label: sized
            for label, method in QUANTIZED_WAYS_OUT.items()
            if (sized := size(quantization=method, weight_bytes_hint=None)).bytes_per_param < plan.bytes_per_param
        }
        plan.node_splits = [_split_nodes(plan, pool) for pool in plan.prices.pools]
    return plan


def _size(
    config: dict,
    *,
    dtype: str,
    quantization: str | None,
    kv_cache_dtype: str,
    max_model_len: int | None,
    gpu_memory_utilization: float,
    weight_bytes_hint: int | None,
    prices: PriceTable,
) -> Plan:
    shape = ModelShape.from_config(config)
    parameters = estimate_parameters(shape)
    per_param, label = weight_bytes_per_param(shape, dtype, quantization)
    from_index = _hint_applies(shape, weight_bytes_hint, per_param, quantization)
    weight_bytes = float(weight_bytes_hint) if from_index and weight_bytes_hint else parameters * per_param
    length = _max_model_len(shape, max_model_len)
    per_token = kv_bytes_per_token(shape, kv_cache_dtype)
    subtotal = weight_bytes + per_token * length
    plan = Plan(
        shape=shape,
        parameters=parameters,
        bytes_per_param=weight_bytes / parameters if from_index else per_param,
        weight_label=label,
        weight_bytes=weight_bytes,
        weights_from_index=from_index,
        kv_cache_dtype=kv_cache_dtype,
        kv_bytes_per_token=per_token,
        max_model_len=length,
        kv_bytes=float(per_token * length),
        overhead_bytes=subtotal * OVERHEAD_FRACTION,
        total_bytes=subtotal * (1 + OVERHEAD_FRACTION),
        gpu_memory_utilization=gpu_memory_utilization,
        prices=prices,
    )
    plan.cards = [_fit_pool(plan, pool) for pool in prices.pools]
    return plan


def _hint_applies(shape: ModelShape, hint: int | None, per_param: float, quantization: str | None) -> bool:
    """The checkpoint's size is the served size unless quantization or dtype changes it."""
    if not hint or quantization:
        return False
    stored = DTYPE_BYTES.get(str(shape.torch_dtype or "").lower().removeprefix("torch."))
    return shape.quantization_config is not None or stored == per_param


def _max_model_len(shape: ModelShape, max_model_len: int | None) -> int:
    length = max_model_len or shape.max_position_embeddings
    if not length:
        raise PlanError("config.json has no 'max_position_embeddings'; pass max_model_len")
    return int(length)


def _fit_pool(plan: Plan, pool: Pool) -> CardFit:
    for count in valid_tensor_parallel_sizes(plan.shape.heads, plan.shape.kv_heads):
        usable = count * pool.card_gb * plan.gpu_memory_utilization
        if plan.needed_bytes(count) <= usable * GB:
            return CardFit(pool.card_gb, count, usable, pool.gpus, pool.usd_per_gpu_second)
    return CardFit(
        pool.card_gb,
        None,
        max(GPU_COUNTS) * pool.card_gb * plan.gpu_memory_utilization,
        pool.gpus,
        pool.usd_per_gpu_second,
    )


def _split_nodes(plan: Plan, pool: Pool) -> NodeSplit:
    """The fewest nodes of 8 (or the largest valid TENSOR_PARALLEL_SIZE) of
    the pool's cards that hold the model."""
    tensor_parallel = max(valid_tensor_parallel_sizes(plan.shape.heads, plan.shape.kv_heads))
    per_node = tensor_parallel * pool.card_gb * plan.gpu_memory_utilization
    fewest = next(
        (nodes for nodes in range(2, MAX_NODES + 1) if plan.needed_bytes(tensor_parallel) <= nodes * per_node * GB),
        None,
    )
    usable = (fewest or MAX_NODES) * per_node
    return NodeSplit(pool.card_gb, tensor_parallel, fewest, usable, pool.gpus, pool.usd_per_gpu_second)


def render(plan: Plan, model_name: str) -> str:
    """A readable report: shape, memory, priced card table, recommendation (or ways out), footnotes."""
    return "\n".join(
        [
            *_memory_lines(plan, model_name),
            "",
            *_table_lines(plan),
            "",
            *_recommendation(plan, model_name),
            "",
            *_footnotes(plan),
        ]
    )


def _memory_lines(plan: Plan, model_name: str) -> list[str]:
    shape = plan.shape
    tied = "tied" if shape.tie_word_embeddings else "untied"
    source = f"{INDEX_FILE}, " if plan.weights_from_index else ""
    kv_label = "fp8" if plan.kv_cache_dtype.lower().startswith("fp8") else "16-bit"
    if shape.mla:
        attention = f"{shape.heads} heads (MLA, kv_lora_rank {shape.mla.kv_lora_rank})"
        kv_label += f", MLA latent of {shape.mla.latent_width} per layer, kept whole on every GPU"
    else:
        attention = f"{shape.heads} heads ({shape.kv_heads} KV, head_dim {shape.head_dim})"
    return [
        f"Model: {model_name}",
        f"Shape: {shape.layers} layers, hidden {shape.hidden_size}, {attention}, intermediate {shape.intermediate_size}, "
        f"vocab {shape.vocab_size} ({tied} embeddings){_experts(shape)}; ~{plan.parameters / 1e9:.2f}B parameters",
        f"Weights: {plan.weight_bytes / GB:.2f} GB ({source}{plan.bytes_per_param:.3g} bytes/param, {plan.weight_label})",
        f"KV cache: {plan.kv_bytes_per_token / 1024:.1f} KiB/token ({kv_label}); "
        f"{plan.kv_bytes / GB:.2f} GB for max_model_len {plan.max_model_len}",
        f"Overhead: {plan.overhead_bytes / GB:.2f} GB ({OVERHEAD_FRACTION:.0%} for activations and runtime)",
        f"Total: {plan.total_bytes / GB:.2f} GB{' (one copy of the KV cache; the table counts one per GPU)' if shape.mla else ''}",
    ]


def _experts(shape: ModelShape) -> str:
    if not shape.num_experts:
        return ""
    shared = f" + {shape.shared_experts} shared" if shape.shared_experts else ""
    dense = f" (first {shape.dense_layers} layers dense)" if shape.dense_layers else ""
    return f", {shape.num_experts} experts{shared}{dense}"


def _table_lines(plan: Plan) -> list[str]:
    width = max(len("RunPod GPUs"), *(len(card.pool) for card in plan.cards))
    header = f"card GB | {'RunPod GPUs':<{width}} | GPUs | fits (usable GB) | $/second | $/hour"
    utilization = (
        f"GPUs = TENSOR_PARALLEL_SIZE; usable = GPUs x card GB x gpu_memory_utilization {plan.gpu_memory_utilization:g}"
    )
    return [header, *(_table_row(card, width) for card in plan.cards), utilization]


def _table_row(card: CardFit, width: int) -> str:
    start = f"{card.card_gb:>7} | {card.pool:<{width}} | "
    if not card.fits:
        return start + f"{'-':>4} | no ({card.usable_gb:.1f} at most on 8 GPUs)"
    if card.usd_per_second is None:
        return start + f"{card.gpus:>4} | {'yes (' + format(card.usable_gb, '.1f') + ')':<16} | no price"
    fits = f"yes ({card.usable_gb:.1f})"
    return start + f"{card.gpus:>4} | {fits:<16} | {card.usd_per_second:>8.5f} | {card.usd_per_hour:>6.2f}"


def _recommendation(plan: Plan, model_name: str) -> list[str]:
    best = plan.recommended
    if best is not None:
        return [
            f"Recommended: {_worker(best)}"
            + ("" if best.usd_per_second is not None else " (no prices for the fitting rows: fewest GB of cards)")
        ]
    largest = max(plan.cards, key=lambda card: card.usable_gb)
    return [
        f"Recommended: none; {plan.needed_bytes(max(GPU_COUNTS)) / GB:.0f} GB does not fit on one 8-GPU worker "
        f"(at most {largest.usable_gb:.1f} GB usable, on 8 x {largest.card_gb} GB).",
        "Ways out:",
        *(_quantized_line(label, sized) for label, sized in plan.quantized.items()),
        *_node_lines(plan, model_name),
    ]


def _worker(card: CardFit) -> str:
    price = f", ${card.usd_per_hour:.2f}/hour" if card.usd_per_hour is not None else ""
    return f"{card.gpus} x {card.card_gb} GB ({card.pool}), TENSOR_PARALLEL_SIZE={card.gpus}{price}"


def _quantized_line(label: str, sized: Plan) -> str:
    best = sized.recommended
    fit = _worker(best) if best else "still too big for one 8-GPU worker"
    kind = "an FP8 checkpoint" if label == "FP8" else "a 4-bit AWQ or GPTQ checkpoint"
    return (
        f"- {label} weights ({sized.bytes_per_param:.3g} bytes/param), "
        f"{sized.needed_bytes(max(GPU_COUNTS)) / GB:.0f} GB: {fit}.\n"
        f"  Needs {kind} of this model; plan cannot look on the hub for one."
    )


def _node_lines(plan: Plan, model_name: str) -> list[str]:
    lines = [
        "- Several nodes, this image on each: tensor parallel inside a node, pipeline parallel across nodes",
        '  (docs/sizing.md: "When a model outgrows one worker"). $/hour at the Serverless rates above, to compare:',
        "  Instant Clusters and Kubernetes bill their own rates.",
        f"    nodes | GPUs per node | card GB | {'RunPod GPUs':<{_pool_width(plan)}} | $/hour",
        *(_split_row(split, _pool_width(plan)) for split in plan.node_splits),
    ]
    best = plan.recommended_split
    if best is None:
        return lines
    price = f", ${best.usd_per_hour:.2f}/hour" if best.usd_per_hour is not None else ""
    settings = " ".join(f"{name}={value}" for name, value in group_settings(model_name, best).items())
    return [
        *lines,
        f"  Cheapest: {_split(best)}: TENSOR_PARALLEL_SIZE={best.tensor_parallel}, "
        f"PIPELINE_PARALLEL_SIZE={best.nodes}{price}.",
        f"  RunPod Instant Cluster: {_split(best)}, this image on each node, with",
        f"    {settings}",
        "    (the cluster sets NUM_NODES, NODE_RANK and PRIMARY_ADDR; node 0 serves the API on PORT).",
        f"  Kubernetes: --manifest FILE writes a LeaderWorkerSet of {best.nodes} pods with these settings.",
    ]


def _pool_width(plan: Plan) -> int:
    return max(len("RunPod GPUs"), *(len(split.pool) for split in plan.node_splits))


def _split_row(split: NodeSplit, width: int) -> str:
    nodes = f"{split.nodes or f'>{MAX_NODES}':>5}"
    price = f"{split.usd_per_hour:>6.2f}" if split.usd_per_hour is not None else ("no price" if split.nodes else "-")
    return f"    {nodes} | {split.tensor_parallel:>13} | {split.card_gb:>7} | {split.pool:<{width}} | {price}"


def _split(split: NodeSplit) -> str:
    return f"{split.nodes} nodes x {split.tensor_parallel} x {split.card_gb} GB ({split.pool})"


def group_settings(model_name: str, split: NodeSplit, max_model_len: int | None = None) -> dict[str, str]:
    """The environment every node of a group gets (the platform adds the
    node's place in it): the model, its layout over the nodes, node 0's port."""
    settings = {
        "MODEL_NAME": model_name,
        "TENSOR_PARALLEL_SIZE": str(split.tensor_parallel),
        "PIPELINE_PARALLEL_SIZE": str(split.nodes),
        "PORT": str(GROUP_PORT),
    }
    if max_model_len:
        settings["MAX_MODEL_LEN"] = str(max_model_len)
    return settings


def _footnotes(plan: Plan) -> list[str]:
    prices = plan.prices
    override = f", overridden by {prices.override}" if prices.override else ""
    return [
        f"Prices: RunPod Serverless flex workers, $ per GPU-second x GPUs, as of {prices.as_of}{override}",
        f"  ({prices.source}; --prices FILE or PLAN_PRICES to override). Idle time and storage cost extra.",
        "No $ per million output tokens: tokens per second depend on the card, the batch and the prompt and",
        "  output lengths, and plan has no measured figure to state; divide $/hour by the tokens per hour you measure.",
        "Sizes are estimates from config.json, not measurements.",
    ]


def cuda_graph_lines(args: Any, max_concurrency: int, capped: bool) -> list[str]:
    """Which batch sizes vLLM will capture CUDA graphs for at boot, computed
    by vLLM's own config code (``vi.capture_sizes``), for the serve
    namespace ``args`` (the environment, parsed by vLLM's parser) and the
    worker's cap (config.size_batch): ``MAX_NUM_SEQS`` when set, else
    ``MAX_CONCURRENCY`` where that is below vLLM's default for the GPU, else
    vLLM's default."""
    from . import vllm_internals as vi

    # vLLM's GPU defaults (EngineArgs.get_batch_defaults): 256 sequences and
    # 2048 tokens on cards under 70 GB and A100s, 1024 on larger ones, which
    # capture the same sizes
    gpu_default_seqs, gpu_default_tokens = 256, 2048
    uncapped = vi.capture_sizes(gpu_default_seqs, gpu_default_tokens)
    head = f"CUDA graphs (vLLM {vi.vllm_version}):"
    if args.enforce_eager:
        return [f"{head} ENFORCE_EAGER is set, so vLLM captures none."]
    if vi.batch_size_set(args) and args.max_num_seqs is None:
        return [
            f"{head} capture sizes set (CUDAGRAPH_CAPTURE_SIZES, MAX_CUDAGRAPH_CAPTURE_SIZE or COMPILATION_CONFIG)."
        ]
    if args.max_num_seqs is not None:
        seqs, why = args.max_num_seqs, f"MAX_NUM_SEQS={args.max_num_seqs}"
    elif capped and max_concurrency < gpu_default_seqs:
        seqs, why = max_concurrency, f"max_num_seqs capped at MAX_CONCURRENCY={max_concurrency}"
    else:
        why = "vLLM's default max_num_seqs" + ("" if capped else " (CAP_MAX_NUM_SEQS=false)")
        return [f"{head} {why}, so vLLM captures {len(uncapped)} batch sizes, up to {uncapped[-1]}."]
    sizes = vi.capture_sizes(seqs, gpu_default_tokens)
    if len(sizes) >= len(uncapped):
        return [f"{head} {why}, so vLLM captures {len(sizes)} batch sizes, up to {sizes[-1]}."]
    return [
        f"{head} {why}, so vLLM captures {len(sizes)} batch sizes at boot:",
        f"  {', '.join(map(str, sizes))}.",
        f"  With vLLM's default max_num_seqs (CAP_MAX_NUM_SEQS=false) it captures {len(uncapped)}, up to {uncapped[-1]}",
        "  (data-centre Blackwell GPUs: up to 1024). Enforce-eager mode captures none.",
    ]


def plan_model(model: str, *, revision: str | None = None, token: str | None = None, **plan_kwargs: Any) -> Plan:
    """Load the model's config (and local safetensors index) and size it."""
    config = load_config(model, revision=revision, token=token)
    if Path(model).is_dir():
        plan_kwargs.setdefault("weight_bytes_hint", load_weight_bytes_hint(model))
    return make_plan(config, **plan_kwargs)


def plan_for(model: str, **kwargs: Any) -> str:
    """``plan_model``'s report."""
    return render(plan_model(model, **kwargs), model)
