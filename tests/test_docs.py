"""The docs' reference tables and facts are the code's; the site builds, with
every page in its navigation."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from handler import flags
from handler.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CONFIGURATION = (DOCS / "configuration.md").read_text()


def test_settings_table_matches_the_settings_object():
    assert Settings.reference() in CONFIGURATION, (
        "regenerate docs/configuration.md's worker settings with: "
        "python -c 'from handler.settings import Settings; print(Settings.reference())'"
    )


def test_every_alias_is_documented():
    for alias, name in flags.ALIASES.items():
        assert f"`{alias}` (`--{name.lower().replace('_', '-')}`)" in CONFIGURATION
    assert f"`{flags.EXTRA_ARGS}`" in CONFIGURATION


def test_environment_reference_matches_vllms_parser():
    assert flags.reference() in CONFIGURATION, "regenerate docs/configuration.md's flag table (command above it)"


def test_the_sdks_fitness_thresholds_are_troubleshootings():
    """Troubleshooting quotes the runpod SDK's start-up thresholds; read them
    from its source (importing it would read them from this environment)."""
    page = (DOCS / "troubleshooting.md").read_text()
    spec = importlib.util.find_spec("runpod.serverless.modules.rp_system_fitness")
    assert spec is not None and spec.origin is not None
    source = Path(spec.origin).read_text()
    for name in ("RUNPOD_MIN_MEMORY_GB", "RUNPOD_MIN_DISK_PERCENT"):
        default = re.search(rf'os\.environ\.get\("{name}", "([0-9.]+)"\)', source)
        assert default, f"the runpod SDK no longer reads {name}"
        assert f"`{name}` ({float(default.group(1)):g})" in page, name
    assert "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS" in Path(spec.origin).with_name("rp_fitness.py").read_text()
    assert "8.8.8.8" in source and "8.8.8.8:53" in page


def nav_pages() -> list[str]:
    """The pages mkdocs.yml's nav lists (read as text: the docs venv, not this
    one, has mkdocs; its YAML has tags PyYAML's safe loader refuses)."""
    text = (ROOT / "mkdocs.yml").read_text()
    nav = text[text.index("\nnav:") :]
    return re.findall(r"^\s+- (?:[^:\n]+: )?([\w./-]+\.md)$", nav, re.MULTILINE)


def test_every_page_is_in_the_sites_navigation_once():
    pages = nav_pages()
    assert sorted(pages) == sorted(path.name for path in DOCS.glob("*.md")), "add the page to nav in mkdocs.yml"
    assert len(pages) == len(set(pages))


def test_the_readme_links_every_page():
    """The README is the landing page: it links each page of the site."""
    readme = (ROOT / "README.md").read_text()
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)(?:#[\w-]+)?\)", readme))
    assert linked == {path.name for path in DOCS.glob("*.md")} - {"index.md"}
    assert len(readme.splitlines()) <= 200, "the README is a landing page; put the detail on a docs page"


def test_nested_blocks_are_indented_four_spaces():
    """mkdocs' Markdown nests a list or a code block in a list item only when
    it is indented four spaces (GitHub takes fewer): with two or three, the
    page shows it flat."""
    for page in sorted(DOCS.glob("*.md")):
        fenced = False
        for number, line in enumerate(page.read_text().splitlines(), 1):
            text = line.lstrip(" ")
            indent = len(line) - len(text)
            if text.startswith("```"):
                fenced = not fenced
                assert fenced is False or indent % 4 == 0, f"{page.name}:{number}: a fence indented {indent}"
            elif not fenced and 1 <= indent <= 3:
                assert not re.match(r"(- |\* |\d+\. )", text), f"{page.name}:{number}: a nested list indented {indent}"
