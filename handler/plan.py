"""GPU sizing for a model: ``python -m handler plan MODEL``.

Reads a model's ``config.json`` (a local directory or a Hugging Face hub id),
estimates weight, KV cache and runtime memory for a llama-like decoder, and picks
the GPU count and TENSOR_PARALLEL_SIZE per card size. An estimate, not a promise:
vision towers, MLA attention and other exotic layers are not modelled.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GB = 1e9
CARD_SIZES_GB = (24, 48, 80, 141, 180)
GPU_COUNTS = (1, 2, 4, 8)
OVERHEAD_FRACTION = 0.10
QUANT_SCALE_OVERHEAD = 1.03
FOUR_BIT_METHODS = ("awq", "gptq", "bitsandbytes", "marlin", "awq_marlin", "gptq_marlin")
DTYPE_BYTES = {"float16": 2, "fp16": 2, "half": 2, "bfloat16": 2, "bf16": 2, "float32": 4, "fp32": 4, "float": 4}
INDEX_FILE = "model.safetensors.index.json"


class PlanError(Exception):
    """The model cannot be sized; the message is one line saying why."""


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
    max_position_embeddings: int | None = None
    torch_dtype: str | None = None
    quantization_config: dict | None = None

    @classmethod
    def from_config(cls, config: dict) -> ModelShape:
        """Read the shape, from ``text_config`` when the top level has no LM keys."""
        lm = _language_model_section(config)
        heads = _required(lm, "num_attention_heads")
        hidden = _required(lm, "hidden_size")
        return cls(
            layers=_required(lm, "num_hidden_layers"),
            hidden_size=hidden,
            heads=heads,
            kv_heads=int(lm.get("num_key_value_heads") or heads),
            head_dim=int(lm.get("head_dim") or hidden // heads),
            intermediate_size=_required(lm, "intermediate_size"),
            vocab_size=_required(lm, "vocab_size"),
            tie_word_embeddings=bool(_either(config, lm, "tie_word_embeddings", False)),
            num_experts=_num_experts(lm),
            expert_intermediate_size=lm.get("moe_intermediate_size"),
            max_position_embeddings=lm.get("max_position_embeddings"),
            torch_dtype=_either(config, lm, "torch_dtype", None) or _either(config, lm, "dtype", None),
            quantization_config=_either(config, lm, "quantization_config", None),
        )


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
    """Parameters of a llama-like decoder: embeddings, attention, gated MLP, norms."""
    embeddings = shape.vocab_size * shape.hidden_size * (1 if shape.tie_word_embeddings else 2)
    return embeddings + shape.layers * _layer_parameters(shape) + shape.hidden_size


def _layer_parameters(shape: ModelShape) -> int:
    hidden, q_width, kv_width = shape.hidden_size, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    attention = 2 * hidden * q_width + 2 * hidden * kv_width
    return attention + _mlp_parameters(shape) + 2 * hidden


def _mlp_parameters(shape: ModelShape) -> int:
    if not shape.num_experts:
        return 3 * shape.hidden_size * shape.intermediate_size
    per_expert = 3 * shape.hidden_size * (shape.expert_intermediate_size or shape.intermediate_size)
    return shape.num_experts * per_expert + shape.hidden_size * shape.num_experts


def weight_bytes_per_param(shape: ModelShape, dtype: str = "auto", quantization: str | None = None) -> tuple[float, str]:
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
    """K and V for every layer and KV head, for one token."""
    kv_bytes = 1 if kv_cache_dtype.lower().startswith("fp8") else 2
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
    """The smallest GPU count of one card size that holds the model, or none."""

    card_gb: int
    gpus: int | None
    usable_gb: float

    @property
    def fits(self) -> bool:
        return self.gpus is not None

    @property
    def total_card_gb(self) -> float:
        return self.gpus * self.card_gb if self.gpus else float("inf")


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
    cards: list[CardFit] = field(default_factory=list)

    @property
    def recommended(self) -> CardFit | None:
        """The fitting row with the fewest GB of cards in all (then fewer GPUs)."""
        fitting = [card for card in self.cards if card.fits]
        return min(fitting, key=lambda card: (card.total_card_gb, card.gpus), default=None)


def make_plan(
    config: dict,
    *,
    dtype: str = "auto",
    quantization: str | None = None,
    kv_cache_dtype: str = "auto",
    max_model_len: int | None = None,
    gpu_memory_utilization: float = 0.9,
    weight_bytes_hint: int | None = None,
) -> Plan:
    """Size the model for the given serving settings."""
    shape = ModelShape.from_config(config)
    parameters = estimate_parameters(shape)
    per_param, label = weight_bytes_per_param(shape, dtype, quantization)
    from_index = _hint_applies(shape, weight_bytes_hint, per_param, quantization)
    weight_bytes = float(weight_bytes_hint) if from_index else parameters * per_param
    length = _max_model_len(shape, max_model_len)
    per_token = kv_bytes_per_token(shape, kv_cache_dtype)
    subtotal = weight_bytes + per_token * length
    total = subtotal * (1 + OVERHEAD_FRACTION)
    return Plan(
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
        total_bytes=total,
        gpu_memory_utilization=gpu_memory_utilization,
        cards=[_fit_card(size, total, shape, gpu_memory_utilization) for size in CARD_SIZES_GB],
    )


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


def _fit_card(card_gb: int, total_bytes: float, shape: ModelShape, utilization: float) -> CardFit:
    for count in valid_tensor_parallel_sizes(shape.heads, shape.kv_heads):
        usable = count * card_gb * utilization
        if total_bytes <= usable * GB:
            return CardFit(card_gb, count, usable)
    return CardFit(card_gb, None, max(GPU_COUNTS) * card_gb * utilization)


def render(plan: Plan, model_name: str) -> str:
    """A readable report: shape, memory breakdown, card table, recommendation."""
    return "\n".join([*_memory_lines(plan, model_name), "", *_table_lines(plan), "", _recommendation(plan)])


def _memory_lines(plan: Plan, model_name: str) -> list[str]:
    shape = plan.shape
    experts = f", {shape.num_experts} experts" if shape.num_experts else ""
    tied = "tied" if shape.tie_word_embeddings else "untied"
    source = f"{INDEX_FILE}, " if plan.weights_from_index else ""
    kv_label = "fp8" if plan.kv_cache_dtype.lower().startswith("fp8") else "16-bit"
    return [
        f"Model: {model_name}",
        f"Shape: {shape.layers} layers, hidden {shape.hidden_size}, {shape.heads} heads "
        f"({shape.kv_heads} KV, head_dim {shape.head_dim}), intermediate {shape.intermediate_size}, "
        f"vocab {shape.vocab_size} ({tied} embeddings){experts}; ~{plan.parameters / 1e9:.2f}B parameters",
        f"Weights: {plan.weight_bytes / GB:.2f} GB ({source}{plan.bytes_per_param:.3g} bytes/param, {plan.weight_label})",
        f"KV cache: {plan.kv_bytes_per_token / 1024:.1f} KiB/token ({kv_label}); "
        f"{plan.kv_bytes / GB:.2f} GB for max_model_len {plan.max_model_len}",
        f"Overhead: {plan.overhead_bytes / GB:.2f} GB ({OVERHEAD_FRACTION:.0%} for activations and runtime)",
        f"Total: {plan.total_bytes / GB:.2f} GB",
    ]


def _table_lines(plan: Plan) -> list[str]:
    header = "card GB | GPUs | TENSOR_PARALLEL_SIZE | fits (usable GB)"
    utilization = f"usable = GPUs x card GB x gpu_memory_utilization {plan.gpu_memory_utilization:g}"
    return [header, *(_table_row(card) for card in plan.cards), utilization]


def _table_row(card: CardFit) -> str:
    if not card.fits:
        return f"{card.card_gb:>7} | {'-':>4} | {'-':>20} | no: cannot fit on one 8-GPU worker ({card.usable_gb:.1f} at most)"
    return f"{card.card_gb:>7} | {card.gpus:>4} | {card.gpus:>20} | yes ({card.usable_gb:.1f})"


def _recommendation(plan: Plan) -> str:
    best = plan.recommended
    if best is None:
        return (
            f"Recommended: none; {plan.total_bytes / GB:.0f} GB cannot fit on one 8-GPU worker. "
            "Split it across nodes with PIPELINE_PARALLEL_SIZE (multi-node), or quantize it."
        )
    return f"Recommended: {best.gpus} x {best.card_gb} GB, TENSOR_PARALLEL_SIZE={best.gpus}"


def plan_for(model: str, *, revision: str | None = None, token: str | None = None, **plan_kwargs: Any) -> str:
    """Load the model's config (and local safetensors index), size it, render the report."""
    config = load_config(model, revision=revision, token=token)
    if Path(model).is_dir():
        plan_kwargs.setdefault("weight_bytes_hint", load_weight_bytes_hint(model))
    return render(make_plan(config, **plan_kwargs), model)
