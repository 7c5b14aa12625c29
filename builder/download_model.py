"""Bake a model into the image at build time (run by the Dockerfile).

With MODEL_NAME unset it prepares the embedded default model, so an image
without a baked model still starts without converting anything. With
MODEL_NAME set (a hub id, or a local directory) it puts ONE copy of the
model's weights under --dest, chosen as vLLM's weight loader chooses them,
plus every file that is not a weight (config, tokenizer, chat template, code),
and records what it put where in a manifest; the worker reads that manifest at
start and serves the model from disk with the hub switched off. TOKENIZER_NAME
brings the tokenizer's files only, never its weights.

Weights, as vLLM 0.32's default loader picks them (load format ``auto``):
a repo with ``consolidated*.safetensors`` is a Mistral-format repo and only
those are kept; otherwise the first of ``*.safetensors``, ``*.bin``, ``*.pt``
that the folder has, never two of them; a ``model.safetensors.index.json``
keeps only the shards its weight_map names. ``original/`` (vLLM's default
--ignore-patterns) and exports for other runtimes are skipped. LOAD_FORMAT
(the same variable the worker passes to vLLM) picks another format.

No Hugging Face or Xet cache is left behind: files are downloaded straight
into --dest, the caches live in a temporary directory removed at the end.
The token comes from HF_TOKEN or from --token-file (a BuildKit secret); it is
never printed and never written into the image.

    MODEL_NAME=org/model python builder/download_model.py --dest /models
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parent.parent

# Folders never baked: vLLM's default --ignore-patterns (original checkpoints
# it never loads) and exports for other runtimes.
SKIPPED_DIRS = ("original", "onnx", "openvino")
# What vLLM never reads to build a tokenizer or processor: weights and large
# assets (vLLM's own list for its non-weight snapshot, repo_utils.py; a test
# compares them). Of these, a model bakes only the weights chosen below.
HEAVY = [
    "*.safetensors",
    "*.bin",
    "*.pt",
    "*.pth",
    "*.ckpt",
    "*.gguf",
    "*.h5",
    "*.msgpack",
    "*.onnx",
    "*.onnx_data",
    "*.png",
    "*.jpg",
    "*.jpeg",
    "*.gif",
    "*.webp",
    "*.mp3",
    "*.mp4",
    "*.wav",
    "*.flac",
    "*.parquet",
    "*.arrow",
    "*.ipynb",
    "*.zip",
    "*.tar*",
]
# Weight files the loader tries, in order, per load format (default_loader.py
# ``_prepare_weights``, with its ``*.pt`` fallback); the first that matches wins.
HF = ["*.safetensors", "*.bin", "*.pt"]
LOAD_FORMATS: dict[str, list[str]] = {
    "hf": HF,
    "safetensors": ["*.safetensors"],
    "fastsafetensors": ["*.safetensors"],
    "instanttensor": ["*.safetensors"],
    "mistral": ["consolidated*.safetensors"],
    "pt": ["*.pt"],
    "npcache": ["*.bin", "*.pt"],
}
MISTRAL = "consolidated*.safetensors"
INDEX = "model.safetensors.index.json"
MISTRAL_INDEX = "consolidated.safetensors.index.json"
# weight_utils.py ``filter_files_not_needed_for_inference``
NOT_FOR_INFERENCE = ("training_args.bin", "optimizer.bin", "optimizer.pt", "scheduler.pt", "scaler.pt")
# What AutoTokenizer (or vLLM's Mistral tokenizer) reads from a tokenizer repo.
TOKENIZER_FILES = [
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.*",
    "merges.txt",
    "*.tiktoken",
    "tekken.json",
    "*.model",
    "*.jinja",
    "chat_template.json",
    "config.json",
    "*.py",
]


class BakeError(Exception):
    """A bake that cannot go on; the message says why, in one line."""


@dataclass(frozen=True)
class Selection:
    """The files of a repo to bake."""

    format: str  # what the top folder's weights are: safetensors, mistral, bin, pt, or "all"
    weights: tuple[str, ...]
    others: tuple[str, ...]  # every non-weight file kept, index files included
    indexes: tuple[str, ...] = ()  # index files whose weight_map limits the weights
    listing: tuple[str, ...] = ()  # every file of the repo

    @property
    def files(self) -> list[str]:
        return sorted(self.weights + self.others)

    @property
    def left_out(self) -> list[str]:
        return sorted(set(self.listing) - set(self.files))


def matches(path: str, patterns: Iterable[str]) -> bool:
    name = PurePosixPath(path).name
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns)


def hidden(path: str) -> bool:
    """Git's and huggingface_hub's files (.git, .cache, .gitattributes), not the model's."""
    return any(part.startswith(".") for part in PurePosixPath(path).parts)


def bakeable(path: str) -> bool:
    return not hidden(path) and PurePosixPath(path).parts[0] not in SKIPPED_DIRS


def folder(path: str) -> str:
    parent = str(PurePosixPath(path).parent)
    return "" if parent == "." else parent


def weights_in(names: list[str], patterns: list[str]) -> tuple[str, list[str]]:
    """The first pattern that matches, and its files (vLLM's loop over allow_patterns)."""
    for pattern in patterns:
        found = [name for name in names if matches(name, [pattern])]
        if found:
            return pattern, found
    return "", []


def select_weights(files: Iterable[str], load_format: str = "auto") -> Selection:
    """The files to bake from a repo's file list, before index filtering
    (``apply_indexes``): one weight format per folder, as vLLM picks it."""
    listing = tuple(sorted(f for f in files if not hidden(f)))
    files = [f for f in listing if bakeable(f)]
    if load_format not in ("auto", *LOAD_FORMATS):
        # a loader of its own (gguf, tensorizer, a plugin...): it picks its files
        return Selection("all", (), tuple(files), listing=listing)
    mistral = load_format == "mistral" or (load_format == "auto" and any(matches(f, [MISTRAL]) for f in files))
    top = LOAD_FORMATS["mistral" if mistral else "hf" if load_format == "auto" else load_format]
    weights: list[str] = []
    indexes: list[str] = []
    for place in sorted({folder(f) for f in files}):
        here = [f for f in files if folder(f) == place and matches(f, HF)]
        pattern, found = weights_in(here, top if place == "" else HF)
        if pattern.endswith(".safetensors"):
            index = str(PurePosixPath(place) / (MISTRAL_INDEX if mistral and place == "" else INDEX))
            indexes += [index] if index in files else []
        else:
            found = [f for f in found if not f.endswith(NOT_FOR_INFERENCE)]
        weights += found
    others = [
        f for f in files if not matches(f, HEAVY) and (not is_index(f) or f in indexes or keeps_index(f, weights))
    ]
    return Selection(format_of(weights, mistral), tuple(sorted(weights)), tuple(others), tuple(indexes), listing)


def is_index(path: str) -> bool:
    name = PurePosixPath(path).name
    return name.endswith(".index.json") and matches(name.removesuffix(".index.json"), HF)


def keeps_index(index: str, weights: list[str]) -> bool:
    """A ``.bin``/``.pt`` index stays with its weights (transformers reads it);
    the index of a format not baked goes."""
    name = PurePosixPath(index).name.removesuffix(".index.json")
    suffix = PurePosixPath(name).suffix
    return suffix != ".safetensors" and any(folder(w) == folder(index) and w.endswith(suffix) for w in weights)


def format_of(weights: list[str], mistral: bool) -> str:
    top = [w for w in weights if folder(w) == ""]
    if not top:
        return ""
    suffix = PurePosixPath(top[0]).suffix.lstrip(".")
    return "mistral" if mistral and suffix == "safetensors" else suffix


def apply_indexes(selection: Selection, weight_maps: Mapping[str, Mapping[str, str]]) -> Selection:
    """Keep only the safetensors files an index's weight_map names (vLLM's
    ``filter_duplicate_safetensors_files``): that drops, say, a
    ``consolidated.safetensors`` or an old ``model.safetensors`` beside shards."""
    weights = list(selection.weights)
    for index, weight_map in weight_maps.items():
        place = folder(index)
        named = {str(PurePosixPath(place) / name) for name in weight_map.values()}
        missing = sorted(named - set(weights))
        if missing:
            raise BakeError(f"{index} names weight files the repo does not have: {', '.join(missing)}")
        weights = [w for w in weights if folder(w) != place or not w.endswith(".safetensors") or w in named]
    return replace(selection, weights=tuple(weights))


def select_tokenizer(files: Iterable[str]) -> list[str]:
    """The files a tokenizer needs, at the top of the repo (and transformers'
    ``additional_chat_templates/``): never weights."""
    return sorted(
        f
        for f in files
        if bakeable(f)
        and folder(f) in ("", "additional_chat_templates")
        and matches(f, TOKENIZER_FILES)
        and not matches(f, HEAVY)
    )


# --- sources: a local directory or a hub repo --------------------------------


def local_files(source: Path) -> list[str]:
    found = []
    for base, dirs, names in os.walk(source, followlinks=True):
        rel = Path(base).relative_to(source)
        dirs[:] = [d for d in dirs if not hidden(d)]
        found += [(rel / n).as_posix() for n in names if not hidden(n)]
    return sorted(found)


def read_weight_maps(root: Path, indexes: Iterable[str]) -> dict[str, dict[str, str]]:
    maps = {}
    for index in indexes:
        try:
            maps[index] = json.loads((root / index).read_text())["weight_map"]
        except (OSError, ValueError, KeyError) as error:
            raise BakeError(f"{index} is not a weight index ({type(error).__name__}: {error})") from None
    return maps


def checked(selection: Selection, name: str, load_format: str) -> Selection:
    if selection.format == "":
        patterns = ", ".join(LOAD_FORMATS.get(load_format, HF))
        raise BakeError(
            f"{name} has no weights that vLLM loads with load format {load_format!r} "
            f"({patterns} at the top of the repo)"
        )
    return selection


def copy_files(source: Path, target: Path, files: Iterable[str]) -> None:
    for name in files:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / name, target / name)


def copy_model(source: Path, target: Path, load_format: str) -> Selection:
    selection = select_weights(local_files(source), load_format)
    selection = apply_indexes(selection, read_weight_maps(source, selection.indexes))
    copy_files(source, target, checked(selection, str(source), load_format).files)
    return selection


@dataclass(frozen=True)
class Hub:
    """One hub repo at one resolved commit, downloaded file by file into a folder."""

    repo: str
    commit: str
    files: tuple[str, ...]
    token: str | None

    @classmethod
    def open(cls, repo: str, revision: str | None, token: str | None) -> Hub:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError, HFValidationError, OfflineModeIsEnabled

        try:
            info = HfApi().model_info(repo, revision=revision, token=token)
        except (HFValidationError, HfHubHTTPError, OfflineModeIsEnabled) as error:
            said = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
            raise BakeError(
                f"{repo}: not a local directory, and the hub says: {said or type(error).__name__}"
            ) from None
        return cls(repo, info.sha, tuple(s.rfilename for s in info.siblings or ()), token)

    def download(self, target: Path, files: Iterable[str]) -> None:
        from huggingface_hub import snapshot_download

        wanted = [fnmatch_escape(name) for name in files]
        if wanted:
            snapshot_download(
                repo_id=self.repo, revision=self.commit, local_dir=target, token=self.token, allow_patterns=wanted
            )


def fnmatch_escape(name: str) -> str:
    """A pattern matching exactly ``name`` (allow_patterns are fnmatch patterns)."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def download_model(hub: Hub, target: Path, load_format: str) -> Selection:
    selection = select_weights(hub.files, load_format)
    hub.download(target, selection.others)  # index files first: they pick the shards
    selection = apply_indexes(selection, read_weight_maps(target, selection.indexes))
    hub.download(target, checked(selection, hub.repo, load_format).weights)
    return selection


def local_name(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "--", model.strip("/"))


def fresh(target: Path, source: Path | None) -> None:
    """Empty ``target``, refusing when it overlaps the source it copies from."""
    if source is not None:
        a, b = target.resolve(), source.resolve()
        if a == b or a in b.parents or b in a.parents:
            raise BakeError(f"--dest would put {target} over its own source {source}; pick another --dest")
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)


def tidy(target: Path) -> None:
    """Remove the metadata folder that local_dir downloads leave behind."""
    shutil.rmtree(target / ".cache" / "huggingface", ignore_errors=True)
    if (target / ".cache").is_dir() and not any((target / ".cache").iterdir()):
        (target / ".cache").rmdir()


def fetch_model(
    model: str, revision: str | None, target: Path, token: str | None, load_format: str
) -> tuple[Selection, str | None]:
    source = Path(model)
    if source.is_dir():
        fresh(target, source)
        return copy_model(source, target, load_format), None
    hub = Hub.open(model, revision, token)
    fresh(target, None)
    selection = download_model(hub, target, load_format)
    tidy(target)
    return selection, hub.commit


def fetch_tokenizer(tokenizer: str, target: Path, token: str | None) -> list[str]:
    source = Path(tokenizer)
    if source.is_dir():
        files = select_tokenizer(local_files(source))
        fresh(target, source)
        copy_files(source, target, files)
    else:
        hub = Hub.open(tokenizer, None, token)
        files = select_tokenizer(hub.files)
        fresh(target, None)
        hub.download(target, files)
        tidy(target)
    if not files:
        raise BakeError(f"TOKENIZER_NAME={tokenizer} has no tokenizer files ({', '.join(TOKENIZER_FILES[:6])}, ...)")
    return files


@contextmanager
def private_hub_caches() -> Iterator[Path]:
    """Point every Hugging Face and Xet cache at a temporary directory, removed
    at the end, so no cache lands in the image layer; turn on hf_xet's
    high-performance mode unless the user chose. huggingface_hub reads these
    variables when it is imported, so this runs before that import."""
    temporary = Path(tempfile.mkdtemp(prefix="bake-hf-"))
    saved = {k: os.environ.get(k) for k in ("HF_HOME", "HF_HUB_CACHE", "HF_XET_CACHE", "HF_ASSETS_CACHE")}
    os.environ.update(
        HF_HOME=str(temporary),
        HF_HUB_CACHE=str(temporary / "hub"),
        HF_XET_CACHE=str(temporary / "xet"),
        HF_ASSETS_CACHE=str(temporary / "assets"),
    )
    os.environ.setdefault("HF_XET_HIGH_PERFORMANCE", "1")
    try:
        yield temporary
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def read_token(token_file: str | None) -> str | None:
    if token_file and Path(token_file).is_file():
        token = Path(token_file).read_text().strip()
        if token:
            return token
    return os.environ.get("HF_TOKEN") or None


def bake(
    model: str,
    *,
    revision: str | None,
    tokenizer: str | None,
    quantization: str | None,
    load_format: str = "auto",
    dest: Path,
    manifest: Path,
    token: str | None,
) -> dict:
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / local_name(model)
    selection, commit = fetch_model(model, revision, path, token, load_format)
    tokenizer_path, tokenizer_files = None, None
    if tokenizer:
        tokenizer_path = dest / local_name(tokenizer)
        if tokenizer_path == path:  # the model's own tokenizer is already there
            tokenizer_files = select_tokenizer(selection.files)
        else:
            tokenizer_files = fetch_tokenizer(tokenizer, tokenizer_path, token)
    record = {
        "model_name": model,
        "path": str(path),
        "revision": revision,
        "commit": commit,
        "tokenizer_name": tokenizer,
        "tokenizer_path": str(tokenizer_path) if tokenizer_path else None,
        "quantization": quantization,
        "load_format": load_format,
        "weights_format": selection.format,
        "weights": list(selection.weights),
        "files": selection.files,
        "left_out": selection.left_out,
        "tokenizer_files": tokenizer_files,
    }
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps(record, indent=2) + "\n")
    return record


def listed(names: list[str], most: int = 6) -> str:
    shown = ", ".join(names[:most])
    more = f", ... (+{len(names) - most})" if len(names) > most else ""
    return f"{len(names)} file(s)" + (f": {shown}{more}" if names else "")


def summary(record: dict, manifest: Path) -> str:
    weights = record["weights"]
    others = [f for f in record["files"] if f not in weights]
    lines = [
        f"baked {record['model_name']} into {record['path']}",
        f"  weights ({record['weights_format']}): {listed(weights)}",
        f"  other files: {listed(others)}",
        f"  left out: {listed(record['left_out'])}",
    ]
    if record["tokenizer_path"]:
        lines.append(
            f"  tokenizer {record['tokenizer_name']} into {record['tokenizer_path']}: "
            f"{listed(record['tokenizer_files'])}"
        )
    lines.append(f"  manifest {manifest}")
    return "\n".join(lines)


def prepare_embedded_model() -> Path:
    """Prepare the embedded default model in EMBEDDED_MODEL_DIR (the image sets
    it, and copies only handler/embedded_model.py before this step), else in
    the worker's default place."""
    sys.path.insert(0, str(ROOT))
    from handler import embedded_model

    if os.environ.get("EMBEDDED_MODEL_DIR"):
        return embedded_model.prepare(Path(os.environ["EMBEDDED_MODEL_DIR"]))
    from handler.settings import Settings

    return embedded_model.prepare(Settings.from_env().embedded_model_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=os.environ.get("MODEL_NAME") or None)
    parser.add_argument("--revision", default=os.environ.get("MODEL_REVISION") or None)
    parser.add_argument("--tokenizer", default=os.environ.get("TOKENIZER_NAME") or None)
    parser.add_argument("--quantization", default=os.environ.get("QUANTIZATION") or None)
    parser.add_argument(
        "--load-format",
        default=os.environ.get("LOAD_FORMAT") or "auto",
        help="which weights to bake, as vLLM's --load-format (default: LOAD_FORMAT, or auto)",
    )
    parser.add_argument("--dest", type=Path, default=Path("/models"))
    parser.add_argument("--manifest", type=Path, default=None, help="default: BAKED_MODEL_MANIFEST, or DEST/baked.json")
    parser.add_argument("--token-file", default=None, help="a file holding the HF token")
    args = parser.parse_args(argv)
    manifest = args.manifest or Path(os.environ.get("BAKED_MODEL_MANIFEST") or args.dest / "baked.json")

    if not args.model:
        with private_hub_caches():
            target = prepare_embedded_model()
        print(f"no MODEL_NAME: the embedded default model is ready in {target}")
        return 0
    with private_hub_caches():
        try:
            record = bake(
                args.model,
                revision=args.revision,
                tokenizer=args.tokenizer,
                quantization=args.quantization,
                load_format=args.load_format,
                dest=args.dest,
                manifest=manifest,
                token=read_token(args.token_file),
            )
        except BakeError as error:
            print(f"download_model.py: {error}", file=sys.stderr)
            return 1
    print(summary(record, manifest))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
