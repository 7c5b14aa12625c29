"""Environment variables -> vLLM's serve namespace, checked against vLLM's real parser."""

from __future__ import annotations

import argparse
import logging

import pytest

from handler import flags
from handler.errors import ConfigError


@pytest.fixture(scope="module")
def table() -> dict[str, flags.Flag]:
    return flags.flags(flags.new_parser())


def test_every_long_option_of_vllm_serve_has_an_env_var(table):
    parser = flags.new_parser()
    table = flags.flags(parser)
    reached = {id(flag.action) for flag in table.values()}
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or not action.option_strings:
            continue
        assert id(action) in reached, f"{action.option_strings} has no env var"
    assert len(table) > 250  # vLLM 0.32 has ~310 serve flags
    assert table["MAX_MODEL_LEN"].option == "--max-model-len"
    assert table["TENSOR_PARALLEL_SIZE"].option == "--tensor-parallel-size"


@pytest.mark.parametrize(
    "kind",
    ["value", "choice", "bool", "store_true", "list", "append"],
)
def test_each_kind_of_flag_parses_from_env(table, kind):
    """One real parse per kind of argparse action vLLM uses."""
    samples = {
        "value": ({"MAX_MODEL_LEN": "2048"}, "max_model_len", 2048),
        "choice": ({"DTYPE": "float32"}, "dtype", "float32"),
        "bool": ({"ENFORCE_EAGER": "yes"}, "enforce_eager", True),
        "store_true": ({"DISABLE_LOG_STATS": "1"}, "disable_log_stats", True),
        "list": ({"SERVED_MODEL_NAME": "alpha beta"}, "served_model_name", ["alpha", "beta"]),
        "append": ({"MIDDLEWARE": "a.b c.d"}, "middleware", ["a.b", "c.d"]),
    }
    environ, dest, expected = samples[kind]
    assert getattr(flags.parse(environ).args, dest) == expected


@pytest.mark.parametrize(
    "value",
    [
        "my-adapter=/adapters/a",
        '{"name": "my-adapter", "path": "/adapters/a"}',
        '[{"name": "my-adapter", "path": "/adapters/a"}]',  # worker-vllm's form
    ],
)
def test_lora_modules_take_vllm_and_worker_vllm_forms(value):
    args = flags.parse({"ENABLE_LORA": "true", "LORA_MODULES": value}).args
    assert [(m.name, m.path) for m in args.lora_modules] == [("my-adapter", "/adapters/a")]


def test_a_json_array_gives_a_list_flag_one_word_per_item():
    args = flags.parse({"SERVED_MODEL_NAME": '["alpha", "beta gamma"]'}).args
    assert args.served_model_name == ["alpha", "beta gamma"]


def test_aliases_from_worker_vllm():
    args = flags.parse(
        {
            "MODEL_NAME": "org/model",
            "MODEL_REVISION": "abc123",
            "TOKENIZER_NAME": "org/tok",
            "OPENAI_SERVED_MODEL_NAME_OVERRIDE": "my-model",
            "CUSTOM_CHAT_TEMPLATE": "{{ messages }}",
        }
    ).args
    assert args.model == "org/model"
    assert args.revision == "abc123"
    assert args.tokenizer == "org/tok"
    assert args.served_model_name == ["my-model"]
    assert args.chat_template == "{{ messages }}"


def test_vllm_name_wins_over_alias(caplog):
    with caplog.at_level(logging.WARNING):
        args = flags.parse({"MODEL_NAME": "alias/model", "MODEL": "real/model"}).args
    assert args.model == "real/model"
    assert "MODEL_NAME and MODEL are both set" in caplog.text


@pytest.mark.parametrize(
    "value,expected",
    [("true", True), ("1", True), ("yes", True), ("TRUE", True), ("false", False), ("0", False), ("no", False)],
)
def test_booleans(value, expected):
    assert flags.parse({"ENFORCE_EAGER": value}).args.enforce_eager is expected


def test_false_overrides_a_worker_default():
    parsed = flags.parse({"ENFORCE_EAGER": "false"}, defaults={"enforce_eager": True})
    assert parsed.args.enforce_eager is False
    assert flags.parse({}, defaults={"enforce_eager": True}).args.enforce_eager is True


def test_empty_value_means_unset():
    assert flags.parse({"MAX_MODEL_LEN": "", "ENFORCE_EAGER": ""}).args.max_model_len is None


@pytest.mark.parametrize(
    "environ,must_say",
    [
        ({"MAX_MODEL_LEN": "abc"}, ["MAX_MODEL_LEN='abc'", "integer"]),
        ({"ENFORCE_EAGER": "maybe"}, ["ENFORCE_EAGER='maybe'", "true", "false"]),
        ({"DTYPE": "float99"}, ["DTYPE='float99'", "bfloat16"]),
        ({"MODEL_NAME": "m", "MAX_NUM_SEQS": "-x"}, ["MAX_NUM_SEQS='-x'", "integer"]),
        ({"VLLM_EXTRA_ARGS": "--max-num-seqs lots"}, ["VLLM_EXTRA_ARGS", "--max-num-seqs", "lots"]),
        ({"ENABLE_AUTO_TOOL_CHOICE": "true"}, ["ENABLE_AUTO_TOOL_CHOICE", "--tool-call-parser"]),
    ],
)
def test_bad_values_give_one_line_naming_the_variable(environ, must_say):
    with pytest.raises(ConfigError) as raised:
        flags.parse(environ)
    message = str(raised.value)
    assert "\n" not in message
    for part in must_say:
        assert part in message, message


def test_extra_args_are_a_raw_escape_hatch():
    args = flags.parse({"MAX_MODEL_LEN": "1024", "VLLM_EXTRA_ARGS": "--max-model-len 512 --seed 7"}).args
    assert args.max_model_len == 512  # later wins, as on a command line
    assert args.seed == 7


def test_removed_flag_warns_and_does_not_crash(caplog):
    with caplog.at_level(logging.WARNING):
        args = flags.parse({"SWAP_SPACE": "4", "DEFAULT_BATCH_SIZE": "50"}).args
    assert not hasattr(args, "swap_space")
    assert "SWAP_SPACE is set, but vLLM" in caplog.text
    assert "STREAM_BATCH_MAX_EVENTS" in caplog.text


def test_secrets_are_redacted_in_the_logged_configuration():
    parsed = flags.parse({"HF_TOKEN": "hf_verysecret", "API_KEY": "sk-alsosecret", "MAX_MODEL_LEN": "1024"})
    line = parsed.describe()
    assert "hf_verysecret" not in line and "sk-alsosecret" not in line
    assert "'hf_token': '***'" in line
    assert "'max_model_len': 1024" in line
    assert parsed.sources["hf_token"] == "HF_TOKEN"


def test_secret_values_are_not_echoed_in_errors():
    with pytest.raises(ConfigError) as raised:
        flags.parse({"VLLM_EXTRA_ARGS": "--hf-token hf_secretvalue --max-num-seqs x"})
    assert "hf_secretvalue" not in str(raised.value)
