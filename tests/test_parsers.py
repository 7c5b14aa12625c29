"""The tool-call and reasoning parsers chosen from the chat template (parsers.py).

The templates are small files in each model family's syntax
(tests/fixtures/chat_templates); the parsers are chosen among those vLLM's
registries list at run time. Through ``config.engine_config`` the choice is
made for a real model directory, as at start-up. No engine.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from test_config import MODEL_CONFIG

from handler import config, parsers
from handler import vllm_internals as vi
from handler.errors import ConfigError
from handler.settings import Settings

pytestmark = pytest.mark.vllm

TEMPLATES = Path(__file__).resolve().parent / "fixtures" / "chat_templates"
GPT_OSS = ["GptOssForCausalLM"]
SHAPE = MODEL_CONFIG  # enough of a config.json for the start-up's tensor-parallel check
# template file -> (tool-call parser, reasoning parser), as vLLM's docs pair them with the family
EXPECTED = {
    "hermes_qwen2_5.jinja": ("hermes", None),
    "qwen3.jinja": ("hermes", "qwen3"),
    "qwen3_coder.jinja": ("qwen3_coder", None),
    "llama3_1_json.jinja": ("llama3_json", None),
    "llama3_2_pythonic.jinja": ("pythonic", None),
    "llama4_pythonic.jinja": ("llama4_pythonic", None),
    "llama4_json.jinja": ("llama4_json", None),
    "mistral.jinja": ("mistral", None),
    "magistral.jinja": ("mistral", "mistral"),
    "deepseek_v3.jinja": ("deepseek_v3", None),
    "deepseek_r1.jinja": ("deepseek_v3", "deepseek_r1"),
    "deepseek_v3_1.jinja": ("deepseek_v31", "deepseek_v3"),
    "gpt_oss.jinja": ("openai", "openai_gptoss"),
    "granite3_2.jinja": ("granite", "granite"),
    "granite4.jinja": ("granite4", None),
    "no_tools_smollm2.jinja": (None, None),
    "unknown_syntax.jinja": (None, None),
}


def architectures_of(name: str) -> list[str]:
    return GPT_OSS if name.startswith("gpt_oss") else ["SomeForCausalLM"]


def choice_for(template: str, architectures: list[str]) -> tuple[str | None, str | None]:
    tool, _ = parsers.tool_call_parser(template, lambda: architectures, vi.tool_parser_names())
    reasoning, _ = parsers.reasoning_parser(template, lambda: architectures, vi.reasoning_parser_names())
    return tool, reasoning


@pytest.mark.parametrize("syntax", parsers.TOOL_CALL_SYNTAXES, ids=lambda syntax: syntax.parser)
def test_each_tool_call_parser_is_in_vllms_registry(syntax: parsers.Syntax):
    assert syntax.parser in vi.tool_parser_names(), (
        f"vLLM {vi.vllm_version} has no tool-call parser named {syntax.parser!r} ({syntax.family}): "
        "find its new name in vllm/tool_parsers/__init__.py and update handler/parsers.py"
    )


@pytest.mark.parametrize("syntax", parsers.REASONING_SYNTAXES, ids=lambda syntax: f"{syntax.parser}-{syntax.family}")
def test_each_reasoning_parser_is_in_vllms_registry(syntax: parsers.Syntax):
    assert syntax.parser in vi.reasoning_parser_names(), (
        f"vLLM {vi.vllm_version} has no reasoning parser named {syntax.parser!r} ({syntax.family}): "
        "find its new name in vllm/reasoning/__init__.py and update handler/parsers.py"
    )


def test_every_fixture_has_its_expectation():
    assert sorted(path.name for path in TEMPLATES.glob("*.jinja")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_parsers_fit_the_family(name: str):
    template = (TEMPLATES / name).read_text()
    assert choice_for(template, architectures_of(name)) == EXPECTED[name]


def test_the_embedded_models_template_gets_hermes():
    assert choice_for(config.EMBEDDED_CHAT_TEMPLATE.read_text(), ["LlamaForCausalLM"]) == ("hermes", None)


def test_harmony_needs_a_gpt_oss_model():
    """vLLM parses harmony only for gpt-oss models: the same template on
    another architecture gets neither harmony parser."""
    assert choice_for((TEMPLATES / "gpt_oss.jinja").read_text(), ["LlamaForCausalLM"]) == (None, None)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("no_tools_smollm2.jinja", "the chat template renders no tools"),
        ("unknown_syntax.jinja", "in no syntax a vLLM parser is known to read"),
    ],
)
def test_no_tool_parser_says_why(name: str, reason: str):
    tool, why = parsers.tool_call_parser((TEMPLATES / name).read_text(), lambda: [], vi.tool_parser_names())
    assert tool is None and reason in why


def test_a_parser_vllm_does_not_register_is_not_chosen_and_named(caplog):
    """What a renamed or removed parser does at start-up: the next syntax
    that matches, or none, and a warning naming it (the contract test fails
    on it first, by name)."""
    registry = set(vi.tool_parser_names()) - {"hermes"}
    with caplog.at_level(logging.WARNING, logger="handler.parsers"):
        tool, _ = parsers.tool_call_parser((TEMPLATES / "hermes_qwen2_5.jinja").read_text(), lambda: [], registry)
    assert tool is None
    assert "no parser named hermes" in caplog.text


# --- at start-up: config.engine_config over a model directory -------------------------


def settings_for(tmp_path: Path) -> Settings:
    return Settings(
        volume_dir=tmp_path / "volume",
        baked_model_manifest=tmp_path / "baked.json",
        embedded_model_dir=tmp_path / "embedded",
    )


def model_with(tmp_path: Path, template: str, *, architectures: list[str], named: bool = False) -> Path:
    """A model directory whose tokenizer carries ``template``: as
    chat_template.jinja, or (``named``) as the ``tool_use`` template of
    tokenizer_config.json's list, beside a default without tools."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": architectures, **SHAPE}))
    if named:
        templates = [
            {"name": "default", "template": (TEMPLATES / "no_tools_smollm2.jinja").read_text()},
            {"name": "tool_use", "template": template},
        ]
        (model / "tokenizer_config.json").write_text(json.dumps({"chat_template": templates}))
    else:
        (model / "chat_template.jinja").write_text(template)
    return model


def test_the_embedded_model_serves_tools_by_default(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="handler.config"):
        args = config.engine_config(settings_for(tmp_path), {}).args
    assert args.chat_template == str(config.EMBEDDED_CHAT_TEMPLATE)
    assert (args.tool_call_parser, args.enable_auto_tool_choice, args.reasoning_parser) == ("hermes", True, "")
    assert args.tool_strict_level == "parameter"
    assert "parsers: tool-call hermes (auto tool choice on), reasoning none" in caplog.text
    assert "the chat template writes tool calls as Hermes / Qwen" in caplog.text


@pytest.mark.parametrize("named", [False, True])
def test_a_models_own_template_chooses(tmp_path, named):
    model = model_with(
        tmp_path, (TEMPLATES / "qwen3.jinja").read_text(), architectures=["Qwen3ForCausalLM"], named=named
    )
    args = config.engine_config(settings_for(tmp_path), {"MODEL": str(model)}).args
    assert (args.tool_call_parser, args.enable_auto_tool_choice, args.reasoning_parser) == ("hermes", True, "qwen3")


def test_the_architecture_is_read_from_the_models_config(tmp_path):
    model = model_with(tmp_path, (TEMPLATES / "gpt_oss.jinja").read_text(), architectures=GPT_OSS)
    args = config.engine_config(settings_for(tmp_path), {"MODEL": str(model)}).args
    assert (args.tool_call_parser, args.reasoning_parser) == ("openai", "openai_gptoss")


def test_chat_template_wins_over_the_models(tmp_path):
    model = model_with(tmp_path, (TEMPLATES / "qwen3.jinja").read_text(), architectures=["Qwen3ForCausalLM"])
    environ = {"MODEL": str(model), "CHAT_TEMPLATE": str(TEMPLATES / "llama3_1_json.jinja")}
    args = config.engine_config(settings_for(tmp_path), environ).args
    assert (args.tool_call_parser, args.reasoning_parser) == ("llama3_json", "")


def test_a_template_without_tools_keeps_vllms_defaults(tmp_path, caplog):
    model = model_with(tmp_path, (TEMPLATES / "no_tools_smollm2.jinja").read_text(), architectures=["LlamaForCausalLM"])
    with caplog.at_level(logging.INFO, logger="handler.config"):
        args = config.engine_config(settings_for(tmp_path), {"MODEL": str(model)}).args
    assert (args.tool_call_parser, args.enable_auto_tool_choice, args.reasoning_parser) == (None, False, "")
    assert "the chat template renders no tools" in caplog.text


def test_a_model_without_a_template_keeps_vllms_defaults(tmp_path, caplog):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(SHAPE))
    with caplog.at_level(logging.INFO, logger="handler.config"):
        args = config.engine_config(settings_for(tmp_path), {"MODEL": str(model)}).args
    assert (args.tool_call_parser, args.reasoning_parser) == (None, "")
    assert "the model has no chat template" in caplog.text


def test_a_hub_model_that_cannot_be_read_keeps_vllms_defaults(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with caplog.at_level(logging.INFO, logger="handler.config"):
        args = config.engine_config(settings_for(tmp_path), {"MODEL": "acme/not-downloaded"}).args
    assert (args.tool_call_parser, args.reasoning_parser) == (None, "")
    assert "the chat template could not be read" in caplog.text


# --- the user's settings win ----------------------------------------------------------


def embedded(tmp_path: Path, **environ: str):
    return config.engine_config(settings_for(tmp_path), environ).args


def test_the_users_parsers_win_and_come_with_auto_tool_choice(tmp_path):
    args = embedded(tmp_path, TOOL_CALL_PARSER="pythonic", REASONING_PARSER="deepseek_r1")
    assert (args.tool_call_parser, args.enable_auto_tool_choice, args.reasoning_parser) == (
        "pythonic",
        True,
        "deepseek_r1",
    )
    args = embedded(tmp_path, VLLM_EXTRA_ARGS="--tool-call-parser llama3_json --enable-auto-tool-choice")
    assert (args.tool_call_parser, args.enable_auto_tool_choice) == ("llama3_json", True)


def test_none_means_no_parser(tmp_path):
    args = embedded(tmp_path, TOOL_CALL_PARSER="none", REASONING_PARSER="none")
    assert (args.tool_call_parser, args.enable_auto_tool_choice, args.reasoning_parser) == (None, False, "")
    with pytest.raises(ConfigError, match="TOOL_CALL_PARSER=none"):
        embedded(tmp_path, TOOL_CALL_PARSER="none", ENABLE_AUTO_TOOL_CHOICE="true")


def test_the_hubs_parser_options_are_vllms(tmp_path):
    """The Hub form's choices: "" (from the chat template), none, or a
    parser vLLM's registry has."""
    hub = json.loads((Path(__file__).resolve().parent.parent / ".runpod" / "hub.json").read_text())
    inputs = {entry["key"]: entry["input"] for entry in hub["config"]["env"]}
    for key, registered in (
        ("TOOL_CALL_PARSER", vi.tool_parser_names()),
        ("REASONING_PARSER", vi.reasoning_parser_names()),
    ):
        values = [option["value"] for option in inputs[key]["options"]]
        assert values[:2] == ["", "none"] and inputs[key]["default"] == ""
        assert not [value for value in values[2:] if value not in registered], key
    assert "ENABLE_AUTO_TOOL_CHOICE" not in inputs, "on with a tool-call parser; a boolean field would always set it"


def test_auto_tool_choice_turned_off_stays_off(tmp_path):
    args = embedded(tmp_path, ENABLE_AUTO_TOOL_CHOICE="false")
    assert (args.tool_call_parser, args.enable_auto_tool_choice) == ("hermes", False)
    args = embedded(tmp_path, VLLM_EXTRA_ARGS="--no-enable-auto-tool-choice")
    assert (args.tool_call_parser, args.enable_auto_tool_choice) == ("hermes", False)


def test_the_users_tool_strict_level_and_template_win(tmp_path):
    args = embedded(tmp_path, TOOL_STRICT_LEVEL="auto", CHAT_TEMPLATE=str(TEMPLATES / "no_tools_smollm2.jinja"))
    assert args.tool_strict_level == "auto"
    assert (args.chat_template, args.tool_call_parser) == (str(TEMPLATES / "no_tools_smollm2.jinja"), None)
