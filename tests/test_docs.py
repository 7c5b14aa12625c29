"""The README's reference tables are the code's."""

from __future__ import annotations

from pathlib import Path

from handler import flags
from handler.settings import Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_settings_table_matches_the_settings_object():
    assert Settings.reference() in README, (
        "regenerate with: python -c 'from handler.settings import Settings; print(Settings.reference())'"
    )


def test_every_alias_is_documented():
    for alias, name in flags.ALIASES.items():
        assert f"`{alias}` (`--{name.lower().replace('_', '-')}`)" in README
    assert f"`{flags.EXTRA_ARGS}`" in README


def test_environment_reference_matches_vllms_parser():
    text = (Path(__file__).resolve().parent.parent / "docs" / "ENVIRONMENT.md").read_text()
    assert flags.reference() in text, "regenerate docs/ENVIRONMENT.md (command in its header)"
