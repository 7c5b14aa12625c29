"""A 2-layer Llama with 4 attention heads (2 KV heads) beside the embedded
model's tokenizer, for the engine to load with dummy weights
(``LOAD_FORMAT=dummy``). Its tokens are random, but it splits into tensor
parallel ranks (the embedded model's 9 heads do not), and on this CPU it
makes tokens about seven times as fast as the embedded model, near the rate
a GPU feeds the front end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from handler import embedded_model
from handler.settings import Settings

FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")


def fabricate(target: Path) -> Path:
    """Write the tiny model's files into ``target``; returns it."""
    embedded = embedded_model.prepare(Settings.from_env().embedded_model_dir, progress=False)
    target.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copy(embedded / name, target / name)
    config = json.loads((embedded / "config.json").read_text())
    config.update(
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        hidden_size=256,
        head_dim=64,
        intermediate_size=512,
        max_position_embeddings=2048,
    )
    (target / "config.json").write_text(json.dumps(config))
    return target
