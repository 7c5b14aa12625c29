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
    load_prices,
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

# Llama-3.1-405B's shape (meta-llama/Llama-3.1-405B config.json).
LLAMA_3_1_405B = {
    "architectures": ["LlamaForCausalLM"],
    "num_hidden_layers": 126,
    "hidden_size": 16384,
    "num_attention_heads": 128,
    "num_key_value_heads": 8,
    "intermediate_size": 53248,
    "vocab_size": 128256,
    "tie_word_embeddings": False,
    "max_position_embeddings": 131072,
    "torch_dtype": "bfloat16",
}

# DeepSeek-R1's config.json: MoE (256 routed experts + 1 shared, 3 dense layers first) with MLA.
# The published checkpoint stores FP8 weights (its quantization_config); the 16-bit variant drops it.
DEEPSEEK_R1_16_BIT = {
    "architectures": ["DeepseekV3ForCausalLM"],
    "model_type": "deepseek_v3",
    "num_hidden_layers": 61,
    "hidden_size": 7168,
    "intermediate_size": 18432,
    "moe_intermediate_size": 2048,
    "n_routed_experts": 256,
    "n_shared_experts": 1,
    "num_experts_per_tok": 8,
    "first_k_dense_replace": 3,
    "moe_layer_freq": 1,
    "num_attention_heads": 128,
    "num_key_value_heads": 128,
    "q_lora_rank": 1536,
    "kv_lora_rank": 512,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "v_head_dim": 128,
    "num_nextn_predict_layers": 1,
    "vocab_size": 129280,
    "tie_word_embeddings": False,
    "max_position_embeddings": 163840,
    "torch_dtype": "bfloat16",
}
DEEPSEEK_R1 = {
    **DEEPSEEK_R1_16_BIT,
    "quantization_config": {
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "quant_method": "fp8",
        "weight_block_size": [128, 128],
    },
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


def row(plan, pool: str):
    return next(row for row in plan.cards if row.pool == pool)


def write_prices(path: Path, prices) -> Path:
    path.write_text(json.dumps(prices))
    return path


def test_llama_2_70b_in_16_bit_matches_the_deployment_guide(tmp_path):
    config = load_config(str(write_model(tmp_path / "llama", LLAMA_2_70B)))
    plan = make_plan(config, max_model_len=4096)
    assert plan.parameters == pytest.approx(69e9, rel=0.01)
    assert plan.kv_bytes_per_token == 327680
    assert plan.total_bytes / GB == pytest.approx(154, rel=0.05)
    assert (card(plan, 48).gpus, card(plan, 80).gpus) == (4, 4)
    assert "     48 | A6000, A40              |    4 | yes (172.8)      |  0.00136 |   4.90" in render(plan, "llama")


@pytest.mark.vllm  # `plan` prints vLLM's own CUDA-graph capture sizes
def test_llama_2_70b_takes_the_cheapest_row_not_the_fewest_gb(tmp_path, capsys):
    """Issue 8: 4 x 48 GB (A6000, A40) costs less than the 1 x 180 GB plan used to recommend."""
    from handler.__main__ import main

    model = write_model(tmp_path / "llama-2-70b", LLAMA_2_70B)
    plan = make_plan(load_config(str(model)))
    b200 = card(plan, 180)
    assert (b200.gpus, b200.usd_per_second) == (1, pytest.approx(0.0024))
    best = plan.recommended
    assert (best.gpus, best.card_gb, best.pool) == (4, 48, "A6000, A40")
    assert best.usd_per_second == pytest.approx(4 * 0.00034)
    assert best.usd_per_second < b200.usd_per_second
    assert all(best.usd_per_second <= other.usd_per_second for other in plan.cards if other.fits)
    assert main(["plan", str(model)]) == 0
    report = capsys.readouterr().out
    assert "Recommended: 4 x 48 GB (A6000, A40), TENSOR_PARALLEL_SIZE=4, $4.90/hour" in report
    assert "    180 | B200                    |    1 | yes (162.0)      |  0.00240 |   8.64" in report


def test_every_card_size_is_priced_from_the_dated_runpod_table():
    prices = load_prices()
    assert prices.source == "https://docs.runpod.io/serverless/pricing"
    assert prices.as_of == "2026-11-23"
    assert prices.card_sizes == [24, 48, 80, 141, 180]
    assert {pool.gpus: pool.usd_per_gpu_second for pool in prices.pools} == {
        "L4, A5000, 3090": 0.00019,
        "4090 PRO": 0.00031,
        "A6000, A40": 0.00034,
        "L40, L40S, 6000 Ada PRO": 0.00053,
        "A100": 0.00076,
        "H100 PRO": 0.00116,
        "H200 PRO": 0.00155,
        "B200": 0.00240,
    }
    report = render(make_plan(SMOLLM2_135M), "SmolLM2-135M")
    assert "as of 2026-11-23" in report and "https://docs.runpod.io/serverless/pricing" in report
    assert "No $ per million output tokens" in report


@pytest.mark.vllm  # `plan` prints vLLM's own CUDA-graph capture sizes
def test_a_prices_file_from_plan_prices_changes_the_pick(tmp_path, monkeypatch, capsys):
    from handler.__main__ import main

    model = write_model(tmp_path / "llama", LLAMA_2_70B)
    monkeypatch.setenv("PLAN_PRICES", str(write_prices(tmp_path / "prices.json", {"A6000, A40": 0.001})))
    assert main(["plan", str(model)]) == 0
    report = capsys.readouterr().out
    assert "Recommended: 8 x 24 GB (L4, A5000, 3090), TENSOR_PARALLEL_SIZE=8, $5.47/hour" in report
    assert "     48 | A6000, A40              |    4 | yes (172.8)      |  0.00400 |  14.40" in report
    assert f"overridden by {tmp_path / 'prices.json'}" in report
    cheaper = write_prices(tmp_path / "b200.json", {"B200": 0.0001})
    assert main(["plan", str(model), "--prices", str(cheaper)]) == 0  # the option wins over the env var
    assert "Recommended: 1 x 180 GB (B200), TENSOR_PARALLEL_SIZE=1, $0.36/hour" in capsys.readouterr().out


def test_a_pool_without_a_price_is_shown_but_not_picked(tmp_path):
    prices = load_prices(str(write_prices(tmp_path / "p.json", {"A6000, A40": None})))
    plan = make_plan(LLAMA_2_70B, prices=prices)
    assert row(plan, "A6000, A40").usd_per_second is None
    assert plan.recommended.pool == "L4, A5000, 3090"
    assert "     48 | A6000, A40              |    4 | yes (172.8)      | no price" in render(plan, "llama")


def test_with_no_prices_at_all_the_fewest_gb_of_cards_win(tmp_path):
    everything = {pool.gpus: None for pool in load_prices().pools}
    plan = make_plan(LLAMA_2_70B, prices=load_prices(str(write_prices(tmp_path / "p.json", everything))))
    assert (plan.recommended.gpus, plan.recommended.card_gb) == (1, 180)
    assert "no prices for the fitting rows: fewest GB of cards" in render(plan, "llama")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"RTX 9999": 0.001}, "unknown GPU pool 'RTX 9999'; pools: L4, A5000, 3090, 4090 PRO,"),
        ({"B200": "cheap"}, "'B200' must be a positive number of USD per GPU-second, or null"),
        ({"B200": -1}, "'B200' must be a positive number"),
        ({"B200": True}, "'B200' must be a positive number"),
        ([0.001], "must be a JSON object mapping a RunPod GPU pool to USD per GPU-second"),
        ("{not json", "cannot read the prices file"),
        (None, "cannot read the prices file"),
    ],
)
@pytest.mark.vllm  # `plan` reads its flags with vLLM's parser
def test_a_bad_prices_file_is_a_one_line_error(tmp_path, capsys, content, message):
    from handler.__main__ import main

    path = tmp_path / "prices.json"
    if isinstance(content, str):
        path.write_text(content)
    elif content is not None:
        write_prices(path, content)
    model = write_model(tmp_path / "m", SMOLLM2_135M)
    assert main(["plan", str(model), "--prices", str(path)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("plan: ") and message in error and "\n" not in error


def test_llama_3_1_405b_in_16_bit_needs_141_gb_cards(tmp_path):
    plan = make_plan(load_config(str(write_model(tmp_path / "405b", LLAMA_3_1_405B))))
    assert plan.parameters == pytest.approx(405.8e9, rel=0.01)
    assert plan.kv_bytes_per_token == 2 * 126 * 8 * 128 * 2
    assert [size for size in (24, 48, 80, 141, 180) if card(plan, size).fits] == [141, 180]
    assert (plan.recommended.gpus, plan.recommended.pool) == (8, "H200 PRO")
    assert not plan.quantized and not plan.node_splits  # it fits: no ways out
    fp8 = make_plan(LLAMA_3_1_405B, quantization="fp8")
    assert (fp8.recommended.gpus, fp8.recommended.pool) == (8, "A100")


def test_deepseek_r1_in_16_bit_prints_the_ways_out(tmp_path):
    model = write_model(tmp_path / "deepseek-r1-bf16", DEEPSEEK_R1_16_BIT)
    plan = make_plan(load_config(str(model)))
    assert plan.parameters == pytest.approx(671e9, rel=0.01)
    assert plan.kv_bytes_per_token == 61 * (512 + 64) * 2  # vLLM's MLA latent, not 128 KV heads
    assert plan.recommended is None and not any(row.fits for row in plan.cards)
    assert (plan.quantized["FP8"].recommended.gpus, plan.quantized["FP8"].recommended.pool) == (8, "H200 PRO")
    assert (plan.quantized["INT4"].recommended.gpus, plan.quantized["INT4"].recommended.pool) == (8, "A100")
    assert {split.card_gb: (split.tensor_parallel, split.nodes) for split in plan.node_splits}[141] == (8, 2)
    assert {split.card_gb: split.nodes for split in plan.node_splits}[80] == 3
    best = plan.recommended_split  # the cheapest at the table's prices: 40 GPUs of 48 GB
    assert (best.nodes, best.tensor_parallel, best.pool) == (5, 8, "A6000, A40")
    assert best.usd_per_hour == pytest.approx(5 * 8 * 0.00034 * 3600)
    report = plan_for(str(model))
    assert "does not fit on one 8-GPU worker" in report
    assert (
        "- FP8 weights (1 bytes/param), 839 GB: 8 x 141 GB (H200 PRO), TENSOR_PARALLEL_SIZE=8, $44.64/hour." in report
    )
    assert "Needs an FP8 checkpoint of this model; plan cannot look on the hub for one." in report
    assert "Needs a 4-bit AWQ or GPTQ checkpoint" in report
    assert "        2 |             8 |     141 | H200 PRO                |  89.28" in report
    assert "Cheapest: 5 nodes x 8 x 48 GB (A6000, A40): TENSOR_PARALLEL_SIZE=8, PIPELINE_PARALLEL_SIZE=5" in report
    assert f"    MODEL_NAME={model} TENSOR_PARALLEL_SIZE=8 PIPELINE_PARALLEL_SIZE=5 PORT=8000" in report
    assert "RunPod Instant Cluster" in report and "When a model outgrows one worker" in report
    assert "--manifest FILE writes a LeaderWorkerSet of 5 pods" in report
    assert "estimates from config.json" in report


def test_deepseek_r1_as_published_is_fp8_and_fits_eight_h200s():
    plan = make_plan(DEEPSEEK_R1)
    assert plan.bytes_per_param == 1
    assert (plan.recommended.gpus, plan.recommended.pool) == (8, "H200 PRO")
    assert card(plan, 80).fits is False


def test_mla_keeps_its_latent_kv_cache_on_every_gpu():
    plan = make_plan(DEEPSEEK_R1, max_model_len=8192)
    assert plan.needed_bytes(8) - plan.needed_bytes(1) == pytest.approx(7 * plan.kv_bytes * 1.1)
    llama = make_plan(LLAMA_2_70B)
    assert llama.needed_bytes(8) == llama.needed_bytes(1) == pytest.approx(llama.total_bytes)


def test_a_small_model_fits_one_24_gb_card():
    plan = make_plan(SMOLLM2_135M)
    assert plan.max_model_len == 8192
    assert card(plan, 24).gpus == 1
    assert "Recommended: 1 x 24 GB (L4, A5000, 3090), TENSOR_PARALLEL_SIZE=1, $0.68/hour" in render(
        plan, "SmolLM2-135M"
    )


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
    assert "does not fit on one 8-GPU worker" in report
    assert "- FP8 weights (1 bytes/param), 2304 GB: still too big for one 8-GPU worker." in report
    assert "- INT4 weights (0.515 bytes/param), 1208 GB: 8 x 180 GB (B200), TENSOR_PARALLEL_SIZE=8" in report
    assert "        4 |             8 |     180 | B200 " in report
    assert "      >16 |             8 |      24 | L4, A5000, 3090         | -" in report


def test_the_cheapest_split_over_nodes_follows_the_prices(tmp_path):
    """A pool you cannot get on a cluster is left out with a null price."""
    prices = write_prices(tmp_path / "prices.json", {"L4, A5000, 3090": None, "A6000, A40": None})
    plan = make_plan(DEEPSEEK_R1_16_BIT, prices=load_prices(str(prices)))
    assert (plan.recommended_split.nodes, plan.recommended_split.pool) == (3, "A100")
    assert "no price" in render(plan, "deepseek")


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


@pytest.mark.vllm  # `plan` prints vLLM's own CUDA-graph capture sizes
def test_plan_leaves_the_hub_as_the_user_has_it(tmp_path, monkeypatch, capsys):
    """The worker switches the hub off when it serves a local model; `plan`
    serves nothing, so a hub id must stay reachable."""
    from handler.__main__ import main

    for name in ("MODEL", "MODEL_NAME", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    assert main(["plan", str(write_model(tmp_path / "m", SMOLLM2_135M)), "--max-model-len", "4096"]) == 0
    assert "Recommended: 1 x 24 GB" in capsys.readouterr().out
    assert "HF_HUB_OFFLINE" not in os.environ
