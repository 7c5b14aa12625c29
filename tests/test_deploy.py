"""What ships: the Dockerfile, the bake script, the RunPod Hub files, start-up environment."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from docker_cli import engine_or_reason, find_builder

from handler import environment, flags, jobs
from handler.config import engine_config
from handler.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
HUB = json.loads((ROOT / ".runpod" / "hub.json").read_text())
HUB_TESTS = json.loads((ROOT / ".runpod" / "tests.json").read_text())


def keys_the_worker_reads() -> set[str]:
    table = flags.flags(flags.new_parser())
    return set(table) | set(flags.ALIASES) | {flags.EXTRA_ARGS} | set(Settings.env_names())


def test_hadolint_passes():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of each Dockerfile line, continuations joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split()[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def test_dockerfile_layers_run_from_stable_to_volatile():
    """Dependencies, the model, vLLM's model-class cache, then the code: a
    code change rebuilds only the last small layer (a change to
    vllm_internals.py the cache bake too, seconds), and a model change does
    not rerun pip."""
    steps = dockerfile_instructions()
    final = max(index for index, (instruction, _) in enumerate(steps) if instruction == "FROM")
    steps = steps[final:]  # the stage both variants share
    position = {}
    for index, (instruction, arguments) in enumerate(steps):
        if instruction == "RUN" and "pip install" in arguments:
            position.setdefault("pip", index)
        if instruction == "RUN" and "bake_vllm_cache.py" in arguments:
            position["vllm_cache"] = index
        if instruction == "ARG" and arguments.startswith("MODEL_"):
            position.setdefault("model_args", index)
        if instruction == "COPY" and "download_model.py" in arguments:
            position["bake_copy"] = index
        if instruction == "RUN" and "download_model.py" in arguments:
            position["bake"] = index
        if instruction == "COPY" and arguments.split()[0] == "handler/":
            position["code"] = index
    order = ["pip", "model_args", "bake_copy", "bake", "vllm_cache", "code"]
    assert [position[step] for step in order] == sorted(position[step] for step in order), position
    bake_inputs = [a for i, a in steps[position["pip"] + 1 : position["bake"]] if i == "COPY"]
    assert bake_inputs == ["builder/download_model.py builder/", "handler/embedded_model.py handler/"], bake_inputs
    cache_inputs = [a for i, a in steps[position["bake"] + 1 : position["vllm_cache"]] if i == "COPY"]
    assert cache_inputs == [
        "builder/bake_vllm_cache.py builder/",
        "handler/__init__.py handler/vllm_internals.py handler/",
    ]
    assert not [a for i, a in steps[position["bake"] + 1 :] if i == "ARG" and a.startswith("MODEL_")]


def test_hub_defaults_fit_real_deployments():
    config = HUB["config"]
    inputs = {entry["key"]: entry["input"] for entry in config["env"]}
    assert inputs["MODEL_NAME"]["type"] == "huggingface", "the console's model picker (and RunPod's model cache)"
    # An 8B model baked in bf16 (~16 GB), the vLLM CUDA image unpacked (~30 GB,
    # an estimate: no registry is reachable here to measure it) and room for a
    # same-size model downloaded at run time without a volume (16 GB).
    assert config["containerDiskInGb"] >= 16 + 30 + 16
    assert "default" not in inputs["MAX_MODEL_LEN"], "empty means the model's own context"
    assert flags.parse({"MAX_MODEL_LEN": ""}).args.max_model_len is None


def test_every_hub_env_key_is_read_by_the_worker():
    read = keys_the_worker_reads()
    offered = [entry["key"] for entry in HUB["config"]["env"]]
    assert not [key for key in offered if key not in read]
    for preset in HUB["config"]["presets"]:
        assert set(preset["defaults"]) <= read


def test_hub_defaults_and_options_are_values_vllm_accepts():
    for entry in HUB["config"]["env"]:
        key, field = entry["key"], entry["input"]
        values = [o["value"] for o in field.get("options", [])]
        if "default" in field:
            values.append(field["default"])
        for value in values:
            text = str(value).lower() if isinstance(value, bool) else str(value)
            if key in Settings.env_names():
                Settings.from_env({key: text})
            else:
                flags.parse({key: text, **({"TOOL_CALL_PARSER": "hermes"} if key == "ENABLE_AUTO_TOOL_CHOICE" else {})})


# RunPod's Hub schema (docs.runpod.io/hub/publishing-guide): a field outside
# it is not read by the Hub, so a setting placed there would silently do nothing.
HUB_FIELDS = {"title", "description", "type", "category", "iconUrl", "config"}
HUB_CONFIG_FIELDS = {
    "runsOn",
    "containerDiskInGb",
    "cpuFlavor",
    "gpuCount",
    "gpuIds",
    "allowedCudaVersions",
    "presets",
    "env",
}
HUB_INPUT_FIELDS = {
    "name",
    "type",
    "description",
    "default",
    "advanced",
    "options",
    "min",
    "max",
    "trueValue",
    "falseValue",
    "required",
}
HUB_TESTS_CONFIG_FIELDS = {"gpuTypeId", "gpuCount", "cpuFlavor", "env", "allowedCudaVersions"}


def test_hub_files_use_only_fields_of_runpods_schema():
    assert set(HUB) <= HUB_FIELDS and HUB["type"] == "serverless"
    assert set(HUB["config"]) <= HUB_CONFIG_FIELDS
    for entry in HUB["config"]["env"]:
        assert set(entry) == {"key", "input"}, entry["key"]
        assert set(entry["input"]) <= HUB_INPUT_FIELDS, entry["key"]
        assert entry["input"]["type"] in {"string", "number", "boolean", "huggingface"}, entry["key"]
    assert set(HUB_TESTS["config"]) <= HUB_TESTS_CONFIG_FIELDS
    for test in HUB_TESTS["tests"]:
        assert set(test) <= {"name", "input", "timeout"} and isinstance(test["timeout"], int)


def test_hub_asks_for_the_token_as_a_secret_and_has_a_smollm2_preset():
    config = HUB["config"]
    token = next(e for e in config["env"] if e["key"] == "HF_TOKEN")["input"]
    assert "default" not in token and "{{ RUNPOD_SECRET_" in token["description"]
    assert any(p["defaults"].get("MODEL_NAME") == "HuggingFaceTB/SmolLM2-135M-Instruct" for p in config["presets"])


def test_the_hubs_handler_py_starts_the_worker_package():
    result = subprocess.run(
        [sys.executable, str(ROOT / ".runpod" / "handler.py"), "--help"],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "serve" in result.stdout and "plan" in result.stdout


def test_hub_tests_are_valid_jobs():
    kinds = set()
    for test in HUB_TESTS["tests"]:
        kinds.add(type(jobs.parse(test["input"])).__name__)
    assert kinds == {"NativeJob", "OpenAIJob"}


def test_network_volume_holds_the_caches(tmp_path):
    volume = tmp_path / "runpod-volume"
    volume.mkdir()
    environ: dict[str, str] = {}
    environment.prepare(Settings(volume_dir=volume, baked_model_manifest=tmp_path / "none.json"), environ)
    assert environ["HF_HOME"] == str(volume / "huggingface-cache")
    assert Path(environ["VLLM_CACHE_ROOT"]).parent == volume / "vllm-cache", "per GPU type (test_caches.py)"
    assert environ["HF_HUB_OFFLINE"] == "1"  # the embedded model needs no hub

    environ = {"MODEL_NAME": "org/some-model", "HF_HOME": "/mine"}
    environment.prepare(Settings(volume_dir=volume, baked_model_manifest=tmp_path / "none.json"), environ)
    assert environ["HF_HOME"] == "/mine", "the user's value wins"
    assert "HF_HUB_OFFLINE" not in environ, "a hub model may need the hub"
    environ = {}
    environment.prepare(Settings(volume_dir=tmp_path / "absent", baked_model_manifest=tmp_path / "none.json"), environ)
    assert "HF_HOME" not in environ


def _bake(tmp_path: Path, source: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "builder" / "download_model.py"), "--dest", str(tmp_path / "models")],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_bake_a_local_model_then_serve_it_offline(tmp_path):
    source = Settings.from_env().embedded_model_dir
    manifest = tmp_path / "models" / "baked.json"
    secret = "hf_bakingsecret42"
    result = _bake(
        tmp_path, source, MODEL_NAME=str(source), QUANTIZATION="", HF_TOKEN=secret, BAKED_MODEL_MANIFEST=str(manifest)
    )
    assert result.returncode == 0, result.stderr
    assert secret not in result.stdout + result.stderr
    record = json.loads(manifest.read_text())
    baked_dir = Path(record["path"])
    assert record["model_name"] == str(source)
    assert baked_dir.parent == tmp_path / "models" and (baked_dir / "model.safetensors").is_file()
    assert secret not in manifest.read_text()

    settings = Settings(baked_model_manifest=manifest, embedded_model_dir=tmp_path / "unused")
    environ: dict[str, str] = {}
    environment.prepare(settings, environ)
    assert environ["HF_HUB_OFFLINE"] == "1"
    args = engine_config(settings, {}).args
    assert args.model == str(baked_dir) and args.served_model_name == [str(source)]
    assert engine_config(settings, {"MODEL_NAME": "org/other"}).args.model == "org/other"

    job = tmp_path / "job.json"
    job.write_text(json.dumps({"input": {"openai_route": "/v1/models"}}))
    run = subprocess.run(
        [sys.executable, "-m", "handler", "run", "--input", str(job)],
        cwd=ROOT,
        env={**os.environ, "BAKED_MODEL_MANIFEST": str(manifest), "EMBEDDED_MODEL_DIR": str(tmp_path / "unused")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    output = json.loads(run.stdout.split("[output] ", 1)[1])["output"][0]
    assert output["data"][0]["id"] == str(source)
    assert output["data"][0]["root"] == str(baked_dir)
    assert not (tmp_path / "unused").exists(), "the embedded model was not prepared"


def has_nvidia_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    return smi is not None and subprocess.run([smi, "-L"], capture_output=True).returncode == 0


def test_docker_gpu_image_builds_and_answers():
    """The image as RunPod runs it: the official vLLM GPU base, the embedded
    model baked, one job answered. Needs a Docker engine and an NVIDIA GPU."""
    import docker

    client, no_engine = engine_or_reason()
    if client is None:
        pytest.skip(f"{no_engine}; the Dockerfile is linted by hadolint instead")
    if not has_nvidia_gpu():
        pytest.skip("no NVIDIA GPU on this host: the GPU image cannot run here")
    builder = find_builder()
    if builder is None:
        pytest.skip("no docker CLI here can build with BuildKit")
    tag = "vllm-worker:gpu-test"
    build = subprocess.run(
        builder.command("-t", tag, str(ROOT)), env=builder.env(), capture_output=True, text=True, timeout=3600
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    container = client.containers.run(
        tag,
        ["run"],
        device_requests=[docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])],
        detach=True,
    )
    try:
        status = container.wait(timeout=900)
        output = container.logs(stdout=True, stderr=False).decode()
        assert status["StatusCode"] == 0, container.logs().decode()[-3000:]
        assert "Paris" in output
    finally:
        container.remove(force=True)
        client.images.remove(tag, force=True)
