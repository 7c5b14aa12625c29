"""GPU sizing from a model's config.json (no network, no engine)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from handler.plan import (
    GB,
    ModelShape,
    PlanError,
    check_tensor_parallel,
    load_config,
    make_plan,
    plan_for,
    render,
)

LLAMA_2_70B = {
    "architectures": ["LlamaForCausalLM"],
    "num_hidden_layers": 80,
    "hidden_size": 8192,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "intermediate_size": 28672,
    "vocab_size": 32000,
    "tie_word_embeddings": False,
    "max_position_embeddings": 4096,
    "torch_dtype": "float16",
}

SMOLLM2_135M = {
    "num_hidden_layers": 30,
    "hidden_size": 576,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "intermediate_size": 1536,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
    "max_position_embeddings": 8192,
    "torch_dtype": "bfloat16",
}


def write_model(directory: Path, config: dict, total_size: int | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    if total_size is not None:
        index = {"metadata": {"total_size": total_size}, "weight_map": {}}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    return directory


def card(plan, size: int):
    return next(row for row in plan.cards if row.card_gb == size)


def test_llama_2_70b_in_16_bit_matches_the_deployment_guide(tmp_path):
    config = load_config(str(write_model(tmp_path / "llama", LLAMA_2_70B)))
    plan = make_plan(config, max_model_len=4096)
    assert plan.parameters == pytest.approx(69e9, rel=0.01)
    assert plan.kv_bytes_per_token == 327680
    assert plan.total_bytes / GB == pytest.approx(154, rel=0.05)
    assert (card(plan, 48).gpus, card(plan, 80).gpus) == (4, 4)
    assert "     48 |    4 |                    4 | yes (172.8)" in render(plan, "meta-llama/Llama-2-70b-hf")


def test_a_small_model_fits_one_24_gb_card():
    plan = make_plan(SMOLLM2_135M)
    assert plan.max_model_len == 8192
    assert card(plan, 24).gpus == 1
    assert "Recommended: 1 x 24 GB, TENSOR_PARALLEL_SIZE=1" in render(plan, "SmolLM2-135M")


def test_awq_4_bit_weights_are_a_quarter_of_16_bit():
    awq = make_plan({**LLAMA_2_70B, "quantization_config": {"quant_method": "awq", "bits": 4}})
    assert awq.weight_bytes / make_plan(LLAMA_2_70B).weight_bytes == pytest.approx(0.25, rel=0.05)
    assert make_plan(LLAMA_2_70B, quantization="fp8").bytes_per_param == 1


def test_fp8_kv_cache_halves_the_kv_bytes():
    assert make_plan(LLAMA_2_70B, kv_cache_dtype="fp8_e5m2").kv_bytes_per_token == 327680 // 2


def test_a_model_too_big_for_one_worker_points_at_pipeline_parallel():
    giant = {**LLAMA_2_70B, "num_hidden_layers": 2400}  # ~2000B parameters
    plan = make_plan(giant)
    assert plan.parameters > 1.9e12
    assert not any(row.fits for row in plan.cards) and plan.recommended is None
    report = render(plan, "giant")
    assert "cannot fit on one 8-GPU worker" in report
    assert "PIPELINE_PARALLEL_SIZE" in report


def test_tensor_parallel_must_divide_both_head_counts():
    with pytest.raises(PlanError) as caught:
        check_tensor_parallel(LLAMA_2_70B, 3)
    message = str(caught.value)
    assert "TENSOR_PARALLEL_SIZE=3" in message
    assert "64 attention heads" in message and "8 KV heads" in message
    assert message.endswith("use one of 1, 2, 4, 8")
    check_tensor_parallel(LLAMA_2_70B, 4)


def test_a_missing_key_is_named():
    config = {key: value for key, value in LLAMA_2_70B.items() if key != "intermediate_size"}
    with pytest.raises(PlanError, match="intermediate_size"):
        ModelShape.from_config(config)


def test_a_directory_without_config_json_is_a_plan_error(tmp_path):
    with pytest.raises(PlanError, match="no config.json"):
        load_config(str(tmp_path))


def test_an_unreachable_hub_id_is_a_clear_plan_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(PlanError) as caught:
        load_config("nobody-here/no-such-model-for-plan-tests")
    message = str(caught.value)
    assert "\n" not in message
    assert "Hugging Face hub" in message and "local model directory" in message


def test_the_safetensors_index_sets_the_weight_bytes(tmp_path):
    model = write_model(tmp_path / "llama", LLAMA_2_70B, total_size=137_953_316_864)
    report = plan_for(str(model), max_model_len=4096)
    assert "Weights: 137.95 GB (model.safetensors.index.json" in report
    quantized = plan_for(str(model), quantization="fp8")
    assert "model.safetensors.index.json" not in quantized


def test_a_multimodal_config_is_sized_from_its_text_config():
    config = {
        "architectures": ["LlavaForConditionalGeneration"],
        "torch_dtype": "bfloat16",
        "text_config": SMOLLM2_135M,
        "vision_config": {"hidden_size": 1024, "num_hidden_layers": 24},
    }
    shape = ModelShape.from_config(config)
    assert (shape.layers, shape.heads, shape.kv_heads, shape.head_dim) == (30, 9, 3, 64)
    assert make_plan(config).parameters == make_plan(SMOLLM2_135M).parameters


def test_plan_leaves_the_hub_as_the_user_has_it(tmp_path, monkeypatch, capsys):
    """The worker switches the hub off when it serves a local model; `plan`
    serves nothing, so a hub id must stay reachable."""
    from handler.__main__ import main

    for name in ("MODEL", "MODEL_NAME", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    assert main(["plan", str(write_model(tmp_path / "m", SMOLLM2_135M)), "--max-model-len", "4096"]) == 0
    assert "Recommended: 1 x 24 GB" in capsys.readouterr().out
    assert "HF_HUB_OFFLINE" not in os.environ
