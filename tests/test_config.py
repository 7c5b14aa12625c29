"""Which model the worker serves, decided once (config.py), without an engine.

``choose_model`` runs before vLLM is imported, so its tests import no vLLM;
``engine_config`` parses with vLLM's own parser (``@pytest.mark.vllm``).
Models, manifests and caches are real files in a temporary directory.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from handler import config, environment
from handler.config import EMBEDDED_SERVED_NAME, choose_model
from handler.errors import ConfigError
from handler.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
HUB_ID = "acme/smol-cached"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
# the shape of SmolLM2-135M, enough for the tensor-parallel check
MODEL_CONFIG = {
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "hidden_size": 576,
    "num_hidden_layers": 30,
    "intermediate_size": 1536,
    "vocab_size": 49152,
}


def model_dir(path: Path) -> Path:
    """A model directory: a config and a (tiny) weight file."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(MODEL_CONFIG))
    (path / "model.safetensors").write_bytes(b"\0" * 8)
    return path


def settings_for(tmp_path: Path, *, baked: dict | None = None) -> Settings:
    manifest = tmp_path / "baked.json"
    if baked is not None:
        manifest.write_text(json.dumps(baked))
    return Settings(
        volume_dir=tmp_path / "volume", baked_model_manifest=manifest, embedded_model_dir=tmp_path / "embedded"
    )


def bake(tmp_path: Path, **extra: str) -> tuple[Settings, Path]:
    """A baked model as builder/download_model.py records it."""
    baked_dir = model_dir(tmp_path / "models" / "org--baked")
    return settings_for(tmp_path, baked={"model_name": "org/baked", "path": str(baked_dir), **extra}), baked_dir


def fabricate_cache(volume: Path, revision: str = "main") -> Path:
    """RunPod's model cache: ``hub/models--org--name/{refs,snapshots/<commit>}``."""
    repo = volume / "huggingface-cache" / "hub" / ("models--" + HUB_ID.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / revision).write_text(COMMIT)
    return model_dir(repo / "snapshots" / COMMIT)


def settled(settings: Settings, environ: dict[str, str]) -> dict[str, str]:
    """The environment after the start-up step that runs before vLLM."""
    environ = dict(environ)
    environment.prepare(settings, environ)
    return environ


# --- choose_model: before vLLM ---------------------------------------------


def test_no_model_named_serves_the_embedded_one_offline(tmp_path):
    settings = settings_for(tmp_path)
    choice = choose_model(settings, {})
    assert (choice.source, choice.model) == ("embedded", str(tmp_path / "embedded"))
    assert choice.served_name == EMBEDDED_SERVED_NAME and choice.offline
    assert settled(settings, {})["HF_HUB_OFFLINE"] == "1"


def test_model_name_is_worker_vllms_alias_for_model(tmp_path):
    settings = settings_for(tmp_path)
    choice = choose_model(settings, {"MODEL_NAME": "org/x"})
    assert (choice.source, choice.model, choice.served_name) == ("hub", "org/x", None)
    assert "HF_HUB_OFFLINE" not in settled(settings, {"MODEL_NAME": "org/x"})


def test_model_wins_over_model_name(tmp_path):
    choice = choose_model(settings_for(tmp_path), {"MODEL_NAME": "alias/model", "MODEL": "real/model"})
    assert choice.model == "real/model"


def test_extra_args_model_wins_and_a_hub_model_keeps_the_hub_on(tmp_path):
    settings = settings_for(tmp_path)
    for extra in ("--model org/x", "--model=org/x", "--seed 1 --model 'org/x'"):
        environ = {"VLLM_EXTRA_ARGS": extra, "MODEL": "org/other"}
        assert choose_model(settings, environ).model == "org/x", extra
        assert "HF_HUB_OFFLINE" not in settled(settings, environ), extra


def test_a_baked_model_is_served_from_disk_under_its_name(tmp_path):
    settings, baked_dir = bake(tmp_path, tokenizer_path="/models/tok")
    for environ in ({}, {"MODEL_NAME": "org/baked"}, {"MODEL": str(baked_dir)}):
        choice = choose_model(settings, environ)
        assert (choice.source, choice.model, choice.served_name) == ("baked", str(baked_dir), "org/baked")
        assert choice.tokenizer == "/models/tok" and choice.offline
    assert choose_model(settings, {"MODEL_NAME": "org/other"}).source == "hub"


def test_extra_args_model_wins_over_a_baked_one(tmp_path):
    settings, _ = bake(tmp_path)
    another = model_dir(tmp_path / "another")
    environ = {"VLLM_EXTRA_ARGS": f"--model {another} --served-model-name x"}
    choice = choose_model(settings, environ)
    assert (choice.source, choice.model, choice.tokenizer) == ("local", str(another), None)
    assert settled(settings, environ)["HF_HUB_OFFLINE"] == "1", "a local directory needs no hub"


def test_a_snapshot_in_runpods_model_cache_is_served_offline(tmp_path):
    settings = settings_for(tmp_path)
    snapshot = fabricate_cache(tmp_path / "volume")
    for environ in ({"MODEL_NAME": HUB_ID}, {"VLLM_EXTRA_ARGS": f"--model {HUB_ID}"}):
        choice = choose_model(settings, environ)
        assert (choice.source, choice.model, choice.served_name) == ("cached", str(snapshot), HUB_ID)
        assert settled(settings, environ)["HF_HUB_OFFLINE"] == "1"
    other_revision = {"MODEL_NAME": HUB_ID, "VLLM_EXTRA_ARGS": "--revision v2"}
    assert choose_model(settings, other_revision).source == "hub"


def test_a_hub_tokenizer_keeps_the_hub_on(tmp_path):
    settings = settings_for(tmp_path)
    assert not choose_model(settings, {"TOKENIZER_NAME": "org/tok"}).offline
    assert "HF_HUB_OFFLINE" not in settled(settings, {"TOKENIZER_NAME": "org/tok"})
    local = model_dir(tmp_path / "tok")
    assert choose_model(settings, {"TOKENIZER_NAME": str(local)}).offline
    assert not choose_model(settings, {"VLLM_EXTRA_ARGS": "--tokenizer org/tok"}).offline


def test_the_users_hub_setting_wins(tmp_path):
    assert settled(settings_for(tmp_path), {"HF_HUB_OFFLINE": "0"})["HF_HUB_OFFLINE"] == "0"


def test_bad_manifest_or_extra_args_is_one_clear_line(tmp_path):
    settings = settings_for(tmp_path)
    settings.baked_model_manifest.write_text("{not json")
    with pytest.raises(ConfigError, match="BAKED_MODEL_MANIFEST=.* cannot be read"):
        choose_model(settings, {})
    with pytest.raises(ConfigError, match="VLLM_EXTRA_ARGS=.* cannot be split"):
        choose_model(settings_for(tmp_path / "b"), {"VLLM_EXTRA_ARGS": "--model 'org/x"})


def test_choosing_the_model_imports_no_vllm(tmp_path):
    code = (
        "import sys; from handler import environment; from handler.settings import Settings\n"
        "environment.prepare(Settings.from_env(), {'VLLM_EXTRA_ARGS': '--model org/x'})\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('vllm', 'huggingface_hub', 'torch')], "
        "sorted(sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


# --- engine_config: vLLM's parser, the same choice -------------------------


@pytest.mark.vllm
def test_engine_config_serves_the_embedded_model_by_default(tmp_path):
    args = config.engine_config(settings_for(tmp_path), {}).args
    assert args.model == str(tmp_path / "embedded")
    assert args.served_model_name == [EMBEDDED_SERVED_NAME]


@pytest.mark.vllm
def test_engine_config_takes_the_alias_and_vllms_name_first(tmp_path):
    settings = settings_for(tmp_path)
    args = config.engine_config(settings, {"MODEL_NAME": "org/x", "TOKENIZER_NAME": "org/tok"}).args
    assert (args.model, args.tokenizer, args.served_model_name) == ("org/x", "org/tok", None)
    args = config.engine_config(settings, {"MODEL_NAME": "alias/model", "MODEL": "real/model"}).args
    assert args.model == "real/model"


@pytest.mark.vllm
def test_engine_config_serves_the_baked_model(tmp_path):
    settings, baked_dir = bake(tmp_path, tokenizer_path=str(tmp_path / "models" / "org--baked"))
    args = config.engine_config(settings, {}).args
    assert args.model == str(baked_dir) and args.served_model_name == ["org/baked"]
    assert args.tokenizer == str(baked_dir)
    assert config.engine_config(settings, {"MODEL_NAME": "org/other"}).args.model == "org/other"


@pytest.mark.vllm
def test_extra_args_model_and_served_name_win_over_a_baked_model(tmp_path):
    settings, _ = bake(tmp_path)
    another = model_dir(tmp_path / "another")
    args = config.engine_config(settings, {"VLLM_EXTRA_ARGS": f"--model {another} --served-model-name x"}).args
    assert args.model == str(another) and args.served_model_name == ["x"]
    args = config.engine_config(settings_for(tmp_path / "b"), {"VLLM_EXTRA_ARGS": "--model=org/x"}).args
    assert args.model == "org/x" and args.served_model_name is None


@pytest.mark.vllm
def test_engine_config_serves_the_cached_snapshot(tmp_path):
    snapshot = fabricate_cache(tmp_path / "volume")
    args = config.engine_config(settings_for(tmp_path), {"MODEL_NAME": HUB_ID}).args
    assert args.model == str(snapshot) and args.served_model_name == [HUB_ID]


@pytest.mark.vllm
def test_served_name_set_by_the_user_wins_over_the_default(tmp_path):
    settings = settings_for(tmp_path)
    for environ in (
        {"SERVED_MODEL_NAME": "mine"},
        {"OPENAI_SERVED_MODEL_NAME_OVERRIDE": "mine"},
        {"VLLM_EXTRA_ARGS": "--served-model-name mine"},
    ):
        assert config.engine_config(settings, environ).args.served_model_name == ["mine"], environ


@pytest.mark.vllm
def test_cpu_defaults_apply_and_each_yields_to_its_setting(tmp_path):
    from handler import vllm_internals as vi

    if not vi.current_platform.is_cpu():
        pytest.skip("CPU defaults apply only without a GPU")
    settings = settings_for(tmp_path)
    args = config.engine_config(settings, {}).args
    assert args.enforce_eager is True and args.gpu_memory_utilization == 0.3
    args = config.engine_config(settings, {"ENFORCE_EAGER": "false", "GPU_MEMORY_UTILIZATION": "0.5"}).args
    assert args.enforce_eager is False and args.gpu_memory_utilization == 0.5
    args = config.engine_config(settings, {"VLLM_EXTRA_ARGS": "--gpu-memory-utilization 0.4"}).args
    assert args.gpu_memory_utilization == 0.4


@pytest.mark.vllm
def test_a_positional_model_tag_stops_with_one_line(tmp_path):
    with pytest.raises(ConfigError, match="name the model with MODEL or --model, not as a positional"):
        config.engine_config(settings_for(tmp_path), {"VLLM_EXTRA_ARGS": "org/x"})


@pytest.mark.vllm
def test_tensor_parallel_is_checked_against_the_chosen_model(tmp_path):
    settings, _ = bake(tmp_path)
    with pytest.raises(ConfigError, match="TENSOR_PARALLEL_SIZE=2 does not divide the model's 9 attention heads"):
        config.engine_config(settings, {"TENSOR_PARALLEL_SIZE": "2"})


@pytest.mark.vllm
def test_max_num_seqs_is_capped_at_the_concurrency_unless_the_batch_is_sized(tmp_path):
    from handler import vllm_internals as vi

    settings = settings_for(tmp_path)
    assert settings.max_concurrency == 30
    default = vi.default_max_num_seqs(config.engine_config(settings, {}).args)
    assert default > 30, "vLLM's own default on this machine (128 on the CPU)"
    assert config.engine_config(settings, {}).args.max_num_seqs == 30
    for environ, chosen in (
        ({"MAX_NUM_SEQS": "64"}, 64),
        ({"VLLM_EXTRA_ARGS": "--max-num-seqs 7"}, 7),
        ({"CUDAGRAPH_CAPTURE_SIZES": "1 2 4"}, None),
        ({"MAX_CUDAGRAPH_CAPTURE_SIZE": "16"}, None),
        ({"COMPILATION_CONFIG": '{"cudagraph_capture_sizes": [1, 2]}'}, None),
        ({"COMPILATION_CONFIG": '{"max_cudagraph_capture_size": 8}'}, None),
    ):
        assert config.engine_config(settings, environ).args.max_num_seqs == chosen, environ
    off = settings.model_copy(update={"cap_max_num_seqs": False})
    assert config.engine_config(off, {}).args.max_num_seqs is None, "CAP_MAX_NUM_SEQS=false: vLLM's default"
    wide = settings.model_copy(update={"max_concurrency": default + 1})
    assert config.engine_config(wide, {}).args.max_num_seqs is None, "never above vLLM's default"


@pytest.mark.vllm
def test_one_cpu_model_worker_runs_in_vllms_single_process_executor(tmp_path):
    from handler import vllm_internals as vi

    if not vi.current_platform.is_cpu():
        pytest.skip("vLLM picks the single-process executor for one GPU itself")
    settings = settings_for(tmp_path)
    assert config.engine_config(settings, {}).environment == {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_WORKER_MULTIPROC_METHOD": "fork",
    }
    assert config.engine_config(settings, {"DATA_PARALLEL_SIZE": "2"}).environment == {}
    # the user's vLLM multiprocessing: vLLM's executor choice and its start method, both
    assert config.engine_config(settings, {"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}).environment == {}
