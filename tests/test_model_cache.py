"""RunPod's model cache: a hub model already on the host is served offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from handler import config, environment
from handler.config import engine_config
from handler.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
HUB_ID = "acme/smol-cached"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fabricate_cache(volume: Path, source: Path, *, complete: bool = True) -> Path:
    """The layout RunPod's model caching (and huggingface_hub) writes:
    ``hub/models--org--name/{blobs,refs/main,snapshots/<commit>/}``, the
    snapshot's files being links into ``blobs``."""
    repo = volume / "huggingface-cache" / "hub" / ("models--" + HUB_ID.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for number, file in enumerate(sorted(source.iterdir())):
        if file.name.endswith(".safetensors") and not complete:
            continue
        blob = repo / "blobs" / f"blob{number}"
        blob.symlink_to(file.resolve())
        (snapshot / file.name).symlink_to(Path("..") / ".." / "blobs" / blob.name)
    return snapshot


def test_a_cached_snapshot_is_found_and_served_offline(tmp_path):
    source = Settings.from_env().embedded_model_dir
    snapshot = fabricate_cache(tmp_path / "volume", source)
    settings = Settings(volume_dir=tmp_path / "volume", baked_model_manifest=tmp_path / "none.json")
    environ: dict[str, str] = {"MODEL_NAME": HUB_ID}
    environment.prepare(settings, environ)
    assert environ["HF_HUB_OFFLINE"] == "1"
    args = engine_config(settings, {"MODEL_NAME": HUB_ID}).args
    assert args.model == str(snapshot) and args.served_model_name == [HUB_ID]


def test_no_snapshot_for_that_revision_or_a_partial_one_leaves_the_hub_on(tmp_path):
    source = Settings.from_env().embedded_model_dir
    fabricate_cache(tmp_path / "volume", source)
    settings = Settings(volume_dir=tmp_path / "volume", baked_model_manifest=tmp_path / "none.json")
    environ = {"MODEL_NAME": HUB_ID, "MODEL_REVISION": "v2"}
    environment.prepare(settings, environ)
    assert "HF_HUB_OFFLINE" not in environ
    assert config.cached_model(settings, {"MODEL_NAME": "acme/other"}) is None

    partial = tmp_path / "partial"
    fabricate_cache(partial, source, complete=False)
    settings = Settings(volume_dir=partial, baked_model_manifest=tmp_path / "none.json")
    assert config.cached_model(settings, {"MODEL_NAME": HUB_ID}) is None, "no weights: not served"


def test_the_worker_boots_from_the_cache_with_the_hub_unreachable(tmp_path):
    source = Settings.from_env().embedded_model_dir
    snapshot = fabricate_cache(tmp_path / "volume", source)
    job = tmp_path / "job.json"
    job.write_text(
        json.dumps(
            {
                "input": {
                    "openai_route": "/v1/chat/completions",
                    "openai_input": {
                        "model": HUB_ID,
                        "temperature": 0,
                        "max_tokens": 16,
                        "messages": [{"role": "user", "content": "What is the capital of France?"}],
                    },
                }
            }
        )
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGING"))}
    env.update(
        MODEL_NAME=HUB_ID,
        VOLUME_DIR=str(tmp_path / "volume"),
        BAKED_MODEL_MANIFEST=str(tmp_path / "none.json"),
        EMBEDDED_MODEL_DIR=str(tmp_path / "unused"),
        HF_ENDPOINT="http://127.0.0.1:9",  # any hub call would fail at once
    )
    run = subprocess.run(
        [sys.executable, "-m", "handler", "run", "--input", str(job)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert f"{HUB_ID} (revision main) is in the model cache at {snapshot}" in run.stderr
    output = json.loads(run.stdout.split("[output] ", 1)[1])["output"][0]
    assert output["model"] == HUB_ID
    assert "Paris" in output["choices"][0]["message"]["content"]
    assert not (tmp_path / "unused").exists(), "the embedded model was not prepared"
