"""The README's reference tables are the code's."""

from __future__ import annotations

import importlib.util
import re
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


def test_the_sdks_fitness_thresholds_are_the_readmes():
    """Troubleshooting quotes the runpod SDK's start-up thresholds; read them
    from its source (importing it would read them from this environment)."""
    spec = importlib.util.find_spec("runpod.serverless.modules.rp_system_fitness")
    assert spec is not None and spec.origin is not None
    source = Path(spec.origin).read_text()
    for name in ("RUNPOD_MIN_MEMORY_GB", "RUNPOD_MIN_DISK_PERCENT"):
        default = re.search(rf'os\.environ\.get\("{name}", "([0-9.]+)"\)', source)
        assert default, f"the runpod SDK no longer reads {name}"
        assert f"`{name}` ({float(default.group(1)):g})" in README, name
    assert "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS" in Path(spec.origin).with_name("rp_fitness.py").read_text()
    assert "8.8.8.8" in source and "8.8.8.8:53" in README
