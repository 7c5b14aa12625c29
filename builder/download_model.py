"""Bake a model into the image at build time (run by the Dockerfile).

With MODEL_NAME unset it prepares the embedded default model, so an image
without a baked model still starts without converting anything. With
MODEL_NAME set (a hub id, or a local directory) it downloads the model (and
TOKENIZER_NAME's tokenizer, if given) under --dest and records what it put
where in a manifest; the worker reads that manifest at start and serves the
model from disk with the hub switched off.

The Hugging Face token comes from HF_TOKEN or from --token-file (a BuildKit
secret); it is never printed and never written into the image.

    MODEL_NAME=org/model python builder/download_model.py --dest /models
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# vLLM's own default for --ignore-patterns: original checkpoints it never loads.
IGNORE_PATTERNS = ["original/**/*", "original/*"]


def read_token(token_file: str | None) -> str | None:
    if token_file and Path(token_file).is_file():
        token = Path(token_file).read_text().strip()
        if token:
            return token
    return os.environ.get("HF_TOKEN") or None


def local_name(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "--", model.strip("/"))


def fetch(model: str, revision: str | None, dest: Path, token: str | None) -> Path:
    """The model's files under ``dest``: copied from a local directory, or
    downloaded from the hub."""
    target = dest / local_name(model)
    if Path(model).is_dir():
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(model, target)
        return target
    from huggingface_hub import snapshot_download

    snapshot_download(
        repo_id=model,
        revision=revision,
        local_dir=target,
        token=token,
        ignore_patterns=IGNORE_PATTERNS,
    )
    return target


def bake(
    model: str,
    *,
    revision: str | None,
    tokenizer: str | None,
    quantization: str | None,
    dest: Path,
    manifest: Path,
    token: str | None,
) -> dict:
    dest.mkdir(parents=True, exist_ok=True)
    path = fetch(model, revision, dest, token)
    record = {
        "model_name": model,
        "path": str(path),
        "revision": revision,
        "tokenizer_name": tokenizer,
        "tokenizer_path": str(fetch(tokenizer, None, dest, token)) if tokenizer else None,
        "quantization": quantization,
    }
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=os.environ.get("MODEL_NAME") or None)
    parser.add_argument("--revision", default=os.environ.get("MODEL_REVISION") or None)
    parser.add_argument("--tokenizer", default=os.environ.get("TOKENIZER_NAME") or None)
    parser.add_argument("--quantization", default=os.environ.get("QUANTIZATION") or None)
    parser.add_argument("--dest", type=Path, default=Path("/models"))
    parser.add_argument("--manifest", type=Path, default=None,
                        help="default: BAKED_MODEL_MANIFEST, or DEST/baked.json")
    parser.add_argument("--token-file", default=None, help="a file holding the HF token")
    args = parser.parse_args(argv)
    manifest = args.manifest or Path(os.environ.get("BAKED_MODEL_MANIFEST") or args.dest / "baked.json")

    if not args.model:
        sys.path.insert(0, str(ROOT))
        from handler import embedded_model
        from handler.settings import Settings

        target = embedded_model.prepare(Settings.from_env().embedded_model_dir)
        print(f"no MODEL_NAME: the embedded default model is ready in {target}")
        return 0
    record = bake(
        args.model,
        revision=args.revision,
        tokenizer=args.tokenizer,
        quantization=args.quantization,
        dest=args.dest,
        manifest=manifest,
        token=read_token(args.token_file),
    )
    print(f"baked {record['model_name']} into {record['path']}; manifest {manifest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
