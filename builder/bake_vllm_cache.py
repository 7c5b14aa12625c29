"""Bake vLLM's cache of model-class facts into the image (run by the Dockerfile).

With a cold cache, vLLM's boot imports the served model's class in a
subprocess to learn what it supports, several seconds on every cold start of
an image without a network volume. This fills that cache
(``VLLM_CACHE_ROOT/modelinfos``) for every architecture vLLM's registry lists,
so the image's boot skips it for any of them: the embedded model, a baked
one, or one named at run time. Each entry is keyed by its model file's hash:
it holds for the image's vLLM on any device. The worker uses the directory
as ``VLLM_CACHE_ROOT`` (BAKED_VLLM_CACHE; see handler/caches.py).

    python3 builder/bake_vllm_cache.py --dest /models/vllm-cache

vLLM's other caches cannot be made here: torch.compile and CUDA-graph work,
Triton, Inductor and FlashInfer JIT kernels and the startup plan all need the
GPU they run on (docs/deploying.md: Cold start).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, default=Path("/models/vllm-cache"), help="the cache directory to fill")
    dest = parser.parse_args().dest.resolve()
    os.environ["VLLM_CACHE_ROOT"] = str(dest)  # read by vLLM, which is imported below
    sys.path.insert(0, str(ROOT))
    began = time.monotonic()
    from handler import vllm_internals as vi

    inspected, failed = vi.inspect_model_classes()
    entries = len(list((dest / "modelinfos").glob("*.json")))
    print(
        f"vLLM {vi.vllm_version}: inspected {inspected} model classes into {dest / 'modelinfos'} "
        f"({entries} entries) in {time.monotonic() - began:.1f} s"
    )
    if failed:
        print(f"{len(failed)} architecture(s) do not import here; vLLM inspects them at boot, as without this cache:")
        for architecture, reason in sorted(failed.items()):
            print(f"  {architecture}: {reason}")
    if not inspected:
        print("no model class could be inspected: vLLM's registry is not what this script expects", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
