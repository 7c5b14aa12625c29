"""A worker's second boot on a network volume reuses what the first one
cached there, in the directory of its GPU type (handler/caches.py).

Two real boots (``python -m handler run``) on one volume, with a stand-in
``nvidia-smi`` naming the GPU and no baked cache, so that the first boot has
to inspect the model's class (vLLM's subprocess) and the second must not. On
the CPU the model-class facts are what a boot caches; on a GPU the same
directory also takes the compile, JIT and startup-plan caches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_caches import H100, fake_nvidia_smi

from handler import caches

ROOT = Path(__file__).resolve().parent.parent
LLAMA = "vllm.model_executor.models.llama.LlamaForCausalLM"
# vLLM's own debug lines (model_executor/models/registry.py) for a cache hit
# and for a miss, after which it inspects the class in a subprocess
HIT = f"Loaded model info for class {LLAMA} from cache"
MISS = f"Cache model info for class {LLAMA} miss"


def boot(tmp_path: Path, name: str) -> str:
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"input": {"prompt": "Hi", "sampling_params": {"max_tokens": 1}}}))
    bin_dir = fake_nvidia_smi(tmp_path / "bin", H100)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "VOLUME_DIR": str(tmp_path / "volume"),
        "BAKED_VLLM_CACHE": str(tmp_path / "no-baked-cache"),
        "VLLM_LOGGING_LEVEL": "DEBUG",
    }
    env.pop("VLLM_CACHE_ROOT", None)
    result = subprocess.run(
        [sys.executable, "-m", "handler", "run", "--input", str(job)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    (tmp_path / f"{name}.log").write_text(result.stderr)
    return result.stderr


@pytest.mark.vllm
def test_the_second_boot_on_a_volume_reuses_the_first_ones_cache(tmp_path):
    (tmp_path / "volume").mkdir()
    first = boot(tmp_path, "first")
    assert MISS in first and HIT not in first, "an empty volume: vLLM inspects the class in a subprocess"
    key = caches.device_key(H100, caches.version("vllm"), caches.version("torch"))
    cached = (
        tmp_path
        / "volume"
        / "vllm-cache"
        / key
        / "modelinfos"
        / "vllm-model_executor-models-llama-LlamaForCausalLM.json"
    )
    assert cached.is_file(), sorted(str(p) for p in (tmp_path / "volume").rglob("*"))[:20]

    second = boot(tmp_path, "second")
    assert HIT in second and MISS not in second, "the second boot reads the first one's entry"
