"""The bake step (builder/download_model.py): one copy of the weights, chosen
as vLLM's loader chooses them; tokenizer files only for TOKENIZER_NAME; no
Hugging Face cache left behind; the token never shown.

Sources are fabricated repos: local directories, and the same directories
served by a small stand-in for the Hugging Face Hub API (HF_ENDPOINT) that the
real huggingface_hub client downloads from.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from handler.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "builder" / "download_model.py"
SECRET = "hf_bakingsecret42"
COMMIT = "0123456789abcdef0123456789abcdef01234567"

spec = importlib.util.spec_from_file_location("download_model", SCRIPT)
bake = sys.modules.setdefault("download_model", importlib.util.module_from_spec(spec))
spec.loader.exec_module(bake)

SHARDS = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
BIN_SHARDS = ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]
NON_WEIGHTS = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
]


def index(*shards: str) -> str:
    return json.dumps({"metadata": {}, "weight_map": {f"layer.{i}": s for i, s in enumerate(shards)}})


def make_repo(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def plain(names: list[str]) -> dict[str, str]:
    return {name: f"contents of {name}" for name in names}


# The weights again, in other forms than the shards: none is baked.
SECOND_COPIES = [
    "model.safetensors",
    "original/consolidated.00.pth",
    "original/params.json",
    "original/tokenizer.model",
    "flax_model.msgpack",
    "tf_model.h5",
    "onnx/model.onnx",
    "openvino/openvino_model.bin",
]


def both_formats(root: Path) -> Path:
    """A repo that ships its weights three times: safetensors shards, the same
    as .bin shards, an old single model.safetensors; plus original/ and exports."""
    return make_repo(
        root,
        {
            **plain(NON_WEIGHTS + SHARDS + BIN_SHARDS + SECOND_COPIES + [".gitattributes", "training_args.bin"]),
            "model.safetensors.index.json": index(*SHARDS),
            "pytorch_model.bin.index.json": index(*BIN_SHARDS),
        },
    )


def mistral_layout(root: Path) -> Path:
    """Mistral's layout (Mistral-7B-Instruct-v0.3): HF shards + index, and the
    same weights again as consolidated.safetensors with params.json."""
    return make_repo(
        root,
        {
            **plain(
                NON_WEIGHTS + SHARDS + ["consolidated.safetensors", "params.json", "tekken.json", "tokenizer.model.v3"]
            ),
            "model.safetensors.index.json": index(*SHARDS),
        },
    )


def files_under(path: Path) -> list[str]:
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())


def run_bake(tmp_path: Path, model: str | Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    env = {
        "MODEL_NAME": str(model),
        "HF_TOKEN": SECRET,
        "HOME": str(tmp_path / "home"),
        "TMPDIR": str(tmp_path / "tmp"),
        **env,
    }
    (tmp_path / "tmp").mkdir(exist_ok=True)
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--dest", str(tmp_path / "models"), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert SECRET not in result.stdout + result.stderr
    return result


def manifest(tmp_path: Path) -> dict:
    text = (tmp_path / "models" / "baked.json").read_text()
    assert SECRET not in text
    return json.loads(text)


def assert_no_cache_left(tmp_path: Path, *baked: Path) -> None:
    for path in baked:
        assert not (path / ".cache").exists(), f"{path} keeps huggingface_hub's local_dir metadata"
    assert not (tmp_path / "home" / ".cache").exists(), "a Hugging Face cache was written under HOME"
    assert list((tmp_path / "tmp").iterdir()) == [], "the temporary HF_HOME/HF_XET_CACHE was not removed"


# --- local sources ------------------------------------------------------------


def test_both_formats_bake_only_the_indexed_safetensors_shards(tmp_path):
    source = both_formats(tmp_path / "repo")
    result = run_bake(tmp_path, source)
    assert result.returncode == 0, result.stderr
    record = manifest(tmp_path)
    baked = Path(record["path"])
    assert files_under(baked) == sorted(NON_WEIGHTS + SHARDS + ["model.safetensors.index.json"])
    assert record["weights"] == SHARDS and record["weights_format"] == "safetensors"
    assert record["files"] == files_under(baked), "the manifest lists exactly what was baked"
    assert record["commit"] is None and record["load_format"] == "auto"
    assert f"weights (safetensors): 2 file(s): {SHARDS[0]}, {SHARDS[1]}\n" in result.stdout
    assert record["left_out"] == sorted(
        BIN_SHARDS + SECOND_COPIES + ["pytorch_model.bin.index.json", "training_args.bin"]
    )
    assert_no_cache_left(tmp_path, baked)


def test_a_mistral_layout_bakes_consolidated_only_as_vllm_loads_it(tmp_path):
    """vLLM 0.32 (load format auto) serves a repo with consolidated*.safetensors
    in Mistral format from those files alone; the HF shards are the second copy."""
    source = mistral_layout(tmp_path / "repo")
    result = run_bake(tmp_path, source)
    assert result.returncode == 0, result.stderr
    record = manifest(tmp_path)
    assert record["weights"] == ["consolidated.safetensors"] and record["weights_format"] == "mistral"
    baked = files_under(Path(record["path"]))
    assert not set(SHARDS) & set(baked) and "model.safetensors.index.json" not in baked
    assert {"params.json", "tekken.json", "tokenizer.model.v3", "config.json"} <= set(baked)


def test_load_format_picks_the_hf_shards_of_a_mistral_layout(tmp_path):
    source = mistral_layout(tmp_path / "repo")
    result = run_bake(tmp_path, source, LOAD_FORMAT="safetensors")
    assert result.returncode == 0, result.stderr
    record = manifest(tmp_path)
    assert record["weights"] == SHARDS and record["load_format"] == "safetensors"
    baked = files_under(Path(record["path"]))
    assert "consolidated.safetensors" not in baked and "model.safetensors.index.json" in baked


def test_only_bin_bakes_the_bin_files_and_their_index(tmp_path):
    source = make_repo(
        tmp_path / "repo",
        {
            **plain(NON_WEIGHTS + BIN_SHARDS + ["training_args.bin", "optimizer.pt"]),
            "pytorch_model.bin.index.json": index(*BIN_SHARDS),
        },
    )
    result = run_bake(tmp_path, source)
    assert result.returncode == 0, result.stderr
    record = manifest(tmp_path)
    assert record["weights"] == BIN_SHARDS and record["weights_format"] == "bin"
    assert files_under(Path(record["path"])) == sorted(NON_WEIGHTS + BIN_SHARDS + ["pytorch_model.bin.index.json"])


def test_only_pt_bakes_the_pt_file(tmp_path):
    source = make_repo(tmp_path / "repo", plain(NON_WEIGHTS + ["model.pt", "optimizer.pt", "scheduler.pt"]))
    result = run_bake(tmp_path, source)
    assert result.returncode == 0, result.stderr
    record = manifest(tmp_path)
    assert record["weights"] == ["model.pt"] and record["weights_format"] == "pt"
    assert files_under(Path(record["path"])) == sorted(NON_WEIGHTS + ["model.pt"])


def test_tokenizer_name_bakes_tokenizer_files_only(tmp_path):
    """The tokenizer source is a whole model repo: none of its weights come along,
    and transformers loads the baked tokenizer to the same tokens."""
    from transformers import AutoTokenizer

    model = make_repo(
        tmp_path / "model", {**plain(["config.json"] + SHARDS), "model.safetensors.index.json": index(*SHARDS)}
    )
    tokenizer = Settings.from_env().embedded_model_dir  # SmolLM2: model.safetensors beside its tokenizer
    result = run_bake(tmp_path, model, TOKENIZER_NAME=str(tokenizer))
    assert result.returncode == 0, result.stderr
    record = manifest(tmp_path)
    baked = Path(record["tokenizer_path"])
    assert baked.parent == tmp_path / "models" and baked != Path(record["path"])
    assert files_under(baked) == ["chat_template.jinja", "config.json", "tokenizer.json", "tokenizer_config.json"]
    assert record["tokenizer_files"] == files_under(baked)
    text = "What is the capital of France?"
    assert (
        AutoTokenizer.from_pretrained(baked)(text)["input_ids"]
        == AutoTokenizer.from_pretrained(tokenizer)(text)["input_ids"]
    )


def test_a_tokenizer_only_source(tmp_path):
    model = make_repo(tmp_path / "model", plain(["config.json", "model.safetensors"]))
    tokenizer = make_repo(
        tmp_path / "tok",
        plain(["tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "README.md", "LICENSE"]),
    )
    result = run_bake(tmp_path, model, TOKENIZER_NAME=str(tokenizer))
    assert result.returncode == 0, result.stderr
    record = manifest(tmp_path)
    assert files_under(Path(record["tokenizer_path"])) == [
        "merges.txt",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
    ]


def test_a_tokenizer_without_tokenizer_files_is_refused(tmp_path):
    model = make_repo(tmp_path / "model", plain(["config.json", "model.safetensors"]))
    empty = make_repo(tmp_path / "tok", plain(["README.md", "model.safetensors"]))
    result = run_bake(tmp_path, model, TOKENIZER_NAME=str(empty))
    assert result.returncode == 1
    assert f"TOKENIZER_NAME={empty} has no tokenizer files" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_model_without_weights_vllm_loads_is_refused(tmp_path):
    source = make_repo(tmp_path / "repo", plain(["config.json", "model.gguf"]))
    result = run_bake(tmp_path, source)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "has no weights that vLLM loads with load format 'auto'" in result.stderr
    assert not (tmp_path / "models" / "baked.json").exists()


def test_an_index_naming_missing_shards_is_refused(tmp_path):
    source = make_repo(
        tmp_path / "repo", {**plain(["config.json", SHARDS[0]]), "model.safetensors.index.json": index(*SHARDS)}
    )
    result = run_bake(tmp_path, source)
    assert result.returncode == 1
    assert f"model.safetensors.index.json names weight files the repo does not have: {SHARDS[1]}" in result.stderr


def test_dest_inside_the_source_is_refused(tmp_path):
    source = make_repo(tmp_path / "repo", plain(["config.json", "model.safetensors"]))
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--dest", str(source / "out")],
        env={**os.environ, "MODEL_NAME": str(source)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and "over its own source" in result.stderr
    assert files_under(source) == ["config.json", "model.safetensors"]


def test_an_unknown_load_format_bakes_every_file_but_original(tmp_path):
    source = make_repo(tmp_path / "repo", plain(["config.json", "model.tensors", "original/x.pth"]))
    result = run_bake(tmp_path, source, LOAD_FORMAT="tensorizer")
    assert result.returncode == 0, result.stderr
    record = manifest(tmp_path)
    assert record["weights_format"] == "all" and files_under(Path(record["path"])) == ["config.json", "model.tensors"]


# --- a hub source ---------------------------------------------------------------


class FakeHub:
    """The few Hub routes huggingface_hub's model_info and snapshot_download
    use, serving local directories as repos at one commit; it needs the token."""

    def __init__(self, repos: dict[str, Path], token: str) -> None:
        self.repos, self.token = repos, token
        self.requests: list[tuple[str, str, str | None]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def fetched(self, repo: str) -> set[str]:
        prefix = f"/{repo}/resolve/{COMMIT}/"
        return {path[len(prefix) :] for method, path, _ in self.requests if method == "GET" and path.startswith(prefix)}

    def answer(self, method: str, path: str, auth: str | None) -> tuple[int, bytes, dict[str, str]]:
        self.requests.append((method, path, auth))
        if path == "/api/agent-harnesses":  # huggingface_hub's optional user-agent registry
            return 404, b"{}", {}
        if auth != f"Bearer {self.token}":
            return 401, b'{"error": "Invalid credentials in Authorization header"}', {}
        for repo, root in self.repos.items():
            files = files_under(root)
            if path == f"/api/models/{repo}" or path.startswith(f"/api/models/{repo}/revision/"):
                return (
                    200,
                    json.dumps({"id": repo, "sha": COMMIT, "siblings": [{"rfilename": f} for f in files]}).encode(),
                    {},
                )
            if path.startswith(f"/api/models/{repo}/tree/{COMMIT}"):
                tree = [
                    {
                        "type": "file",
                        "path": f,
                        "size": (root / f).stat().st_size,
                        "oid": hashlib.sha1((root / f).read_bytes()).hexdigest(),
                    }
                    for f in files
                ]
                return 200, json.dumps(tree).encode(), {}
            name = path.removeprefix(f"/{repo}/resolve/{COMMIT}/")
            if name != path and name in files:
                data = (root / name).read_bytes()
                return 200, data, {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha1(data).hexdigest()}"'}
        return 404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self.reply(body=False)

            def do_GET(self) -> None:
                self.reply(body=True)

            def reply(self, body: bool) -> None:
                status, data, headers = hub.answer(
                    self.command, unquote(urlparse(self.path).path), self.headers.get("Authorization")
                )
                self.send_response(status)
                for key, value in {"Content-Length": str(len(data)), **headers}.items():
                    self.send_header(key, value)
                self.end_headers()
                if body:
                    self.wfile.write(data)

        return Handler


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[FakeHub]:
    hub = FakeHub(
        {"org/model": both_formats(tmp_path / "hub-model"), "org/mistral": mistral_layout(tmp_path / "hub-mistral")},
        SECRET,
    )
    yield hub
    hub.server.shutdown()
    hub.server.server_close()


def test_a_hub_model_downloads_one_copy_and_no_cache(tmp_path, hub):
    result = run_bake(
        tmp_path,
        "org/model",
        HF_ENDPOINT=hub.url,
        HF_HUB_OFFLINE="0",
        MODEL_REVISION="main",
        TOKENIZER_NAME="org/mistral",
    )
    assert result.returncode == 0, result.stderr
    record = manifest(tmp_path)
    baked, tokenizer = Path(record["path"]), Path(record["tokenizer_path"])
    assert baked == tmp_path / "models" / "org--model" and record["commit"] == COMMIT
    assert files_under(baked) == sorted(NON_WEIGHTS + SHARDS + ["model.safetensors.index.json"])
    assert hub.fetched("org/model") == set(files_under(baked)), "only the baked files were downloaded"
    assert record["files"] == files_under(baked) and record["weights"] == SHARDS
    # the tokenizer of a repo full of weights: its tokenizer files only
    assert hub.fetched("org/mistral") == set(files_under(tokenizer)) == set(record["tokenizer_files"])
    assert files_under(tokenizer) == sorted(
        [
            "config.json",
            "chat_template.jinja",
            "special_tokens_map.json",
            "tekken.json",
            "tokenizer.json",
            "tokenizer.model.v3",
            "tokenizer_config.json",
        ]
    )
    assert all(
        auth == f"Bearer {SECRET}"
        for _, path, auth in hub.requests
        if path.startswith("/api/models") or "/resolve/" in path
    ), "every hub call carries the token"
    assert_no_cache_left(tmp_path, baked, tokenizer)


def test_a_hub_mistral_layout_downloads_consolidated_only(tmp_path, hub):
    result = run_bake(tmp_path, "org/mistral", HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0")
    assert result.returncode == 0, result.stderr
    assert manifest(tmp_path)["weights"] == ["consolidated.safetensors"]
    assert not set(SHARDS) & hub.fetched("org/mistral")


def test_a_wrong_token_fails_in_one_line_without_showing_it(tmp_path, hub):
    hub.token = "hf_theotherone"
    result = run_bake(tmp_path, "org/model", HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "org/model: not a local directory, and the hub says:" in result.stderr and "401" in result.stderr
    assert_no_cache_left(tmp_path)


# --- the selection itself --------------------------------------------------------


def test_each_folder_keeps_one_format():
    files = [
        "config.json",
        "model.safetensors",
        "modules.json",
        "2_Dense/config.json",
        "2_Dense/model.safetensors",
        "2_Dense/pytorch_model.bin",
        "original/model.safetensors",
    ]
    selection = bake.select_weights(files)
    assert selection.weights == ("2_Dense/model.safetensors", "model.safetensors")
    assert selection.files == [
        "2_Dense/config.json",
        "2_Dense/model.safetensors",
        "config.json",
        "model.safetensors",
        "modules.json",
    ]


def test_exact_names_become_exact_download_patterns():
    import fnmatch

    for name in ["model[1].safetensors", "what?.bin", "a*b.json", "plain.json"]:
        pattern = bake.fnmatch_escape(name)
        assert fnmatch.fnmatch(name, pattern)
        assert not fnmatch.fnmatch(name.replace(".", "x", 1), pattern)


def test_the_bake_uses_private_caches_and_xet_high_performance(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", "/mine")
    monkeypatch.delenv("HF_XET_HIGH_PERFORMANCE", raising=False)
    with bake.private_hub_caches() as temporary:
        assert os.environ["HF_HOME"] == str(temporary) and temporary.is_dir()
        assert os.environ["HF_XET_CACHE"] == str(temporary / "xet")
        assert os.environ["HF_XET_HIGH_PERFORMANCE"] == "1"
    assert not temporary.exists() and os.environ["HF_HOME"] == "/mine"
    monkeypatch.setenv("HF_XET_HIGH_PERFORMANCE", "0")
    with bake.private_hub_caches():
        assert os.environ["HF_XET_HIGH_PERFORMANCE"] == "0", "the user's choice wins"


# --- drift: the same choice as vLLM's own loader -----------------------------------

DRIFT_REPOS = {
    "both formats": both_formats,
    "mistral layout": mistral_layout,
    "bin only": lambda root: make_repo(root, plain(["config.json", "pytorch_model.bin", "training_args.bin"])),
    "pt only": lambda root: make_repo(root, plain(["config.json", "model.pt", "optimizer.pt"])),
    "safetensors without index": lambda root: make_repo(root, plain(["config.json", "a.safetensors", "b.bin"])),
}


@pytest.mark.parametrize("load_format", ["auto", "hf", "safetensors", "mistral", "pt", "npcache"])
@pytest.mark.vllm
def test_the_choice_matches_vllms_loader(tmp_path, load_format):
    """vLLM's DefaultModelLoader picks its weight files from each fabricated
    directory; the bake must pick the same ones (or refuse where vLLM fails)."""
    from vllm.config.load import LoadConfig
    from vllm.model_executor.model_loader.default_loader import DefaultModelLoader

    loader = DefaultModelLoader(LoadConfig(load_format=load_format))
    for name, build in DRIFT_REPOS.items():
        root = build(tmp_path / name.replace(" ", "-"))
        try:
            _, found, _, _ = loader._prepare_weights(str(root), None, None, True, None)
            theirs = sorted(Path(f).relative_to(root).as_posix() for f in found)
        except RuntimeError:  # "Cannot find any model weights"
            theirs = None
        selection = bake.select_weights(bake.local_files(root), load_format)
        try:
            selection = bake.checked(
                bake.apply_indexes(selection, bake.read_weight_maps(root, selection.indexes)), name, load_format
            )
            ours = sorted(w for w in selection.weights if "/" not in w)
        except bake.BakeError:
            ours = None
        assert ours == theirs, f"{name}, load format {load_format}"


@pytest.mark.vllm
def test_heavy_files_are_vllms_own_non_weight_list():
    from vllm.transformers_utils import repo_utils

    assert bake.HEAVY == repo_utils._WEIGHT_FILE_PATTERNS


def files_copied_for_the_bake() -> list[str]:
    dockerfile = (ROOT / "Dockerfile").read_text()
    final_stage = dockerfile[dockerfile.rindex("\nFROM ") :]
    before_bake = final_stage[: final_stage.index("download_model.py --dest")]
    after_pip = before_bake[before_bake.rindex("pip install") :]
    names = []
    for sources in re.findall(r"^COPY (.+) \S+/$", after_pip, re.MULTILINE):
        names += sources.split()
    assert "builder/download_model.py" in names, names
    return names


def test_without_model_name_it_needs_only_the_embedded_model_module(tmp_path):
    """The image copies builder/download_model.py and handler/embedded_model.py
    (nothing else of handler/) before the bake step: exactly the files the
    Dockerfile's COPY lines between its dependencies and the bake name."""
    image = tmp_path / "worker"
    for name in files_copied_for_the_bake():
        (image / name).parent.mkdir(parents=True, exist_ok=True)
        (image / name).write_text((ROOT / name).read_text())
    embedded = Settings.from_env().embedded_model_dir  # already prepared: prepare() returns at once
    result = subprocess.run(
        [sys.executable, str(image / "builder" / "download_model.py"), "--dest", str(tmp_path / "models")],
        cwd=image,
        env={**os.environ, "MODEL_NAME": "", "EMBEDDED_MODEL_DIR": str(embedded), "HOME": str(tmp_path / "home")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert f"the embedded default model is ready in {embedded}" in result.stdout
    assert not (tmp_path / "home" / ".cache").exists()
