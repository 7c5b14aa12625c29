"""The documentation site: docs/ built by mkdocs in strict mode (from
.venv-docs, which `make docs` makes), its links checked, and the built pages
opened in headless Chromium, as the playground's test opens its page."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import serving

ROOT = Path(__file__).resolve().parent.parent
MKDOCS = ROOT / ".venv-docs" / "bin" / "mkdocs"
SITE_NAME = "vLLM worker for RunPod Serverless"


def build(config: Path, site: Path) -> subprocess.CompletedProcess:
    """`make docs`'s build: strict, so a warning fails it (never --quiet, which
    hides the warnings strict mode counts)."""
    return subprocess.run(
        [str(MKDOCS), "build", "--strict", "--config-file", str(config), "--site-dir", str(site)],
        cwd=config.parent,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def need_mkdocs() -> None:
    """Skip without .venv-docs, except under CI, where `make test` has made it."""
    if not MKDOCS.exists():
        reason = "no .venv-docs: `make docs` (which `make test` runs) makes it"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_mkdocs()
    target = tmp_path_factory.mktemp("site")
    result = build(ROOT / "mkdocs.yml", target)
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    return target


def test_every_page_is_built(site):
    for page in (ROOT / "docs").glob("*.md"):
        html = site / ("index.html" if page.stem == "index" else f"{page.stem}/index.html")
        assert html.exists(), page.name


def test_the_pages_load_nothing_from_elsewhere(site):
    """Offline: no web fonts (theme.font: false), no script or style from a CDN."""
    for html in site.rglob("*.html"):
        text = html.read_text()
        assert "fonts.googleapis.com" not in text and "fonts.gstatic.com" not in text, html
        assert not re.search(r'<(?:script|link)[^>]+(?:src|href)="https?://', text), html


def test_the_readmes_links_into_the_docs_resolve(site):
    """The README is not part of the site, so mkdocs does not check its links."""
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(docs/([\w-]+)\.md(?:#([\w-]+))?\)", readme)
    assert links
    for page, anchor in links:
        html = (site / page / "index.html").read_text()
        if anchor:
            assert f'id="{anchor}"' in html, f"docs/{page}.md has no #{anchor}"


def test_a_broken_anchor_fails_the_strict_build(tmp_path):
    """mkdocs.yml's validation settings make a link to a missing anchor a
    warning, which --strict turns into a failed build (and `make test` with it)."""
    need_mkdocs()
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    with (tmp_path / "docs" / "jobs.md").open("a") as page:
        page.write("\nSee [the tools](tools.md#no-such-section).\n")
    result = build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0
    assert "does not contain an anchor '#no-such-section'" in result.stderr


async def test_the_site_in_a_browser(site, browser, tmp_path_factory):
    from playwright.async_api import expect
    from starlette.staticfiles import StaticFiles

    async with serving(StaticFiles(directory=site, html=True)) as url:
        context = await browser.new_context(viewport={"width": 1280, "height": 800})
        page = await context.new_page()
        outside: list[str] = []

        async def loopback_only(route):
            if route.request.url.startswith(url):
                await route.continue_()
            else:
                outside.append(route.request.url)
                await route.abort()

        await page.route("**/*", loopback_only)
        await page.goto(f"{url}/deploying/")
        await expect(page).to_have_title(f"Deploying, baking and caches - {SITE_NAME}")
        await expect(page.locator("h1")).to_contain_text("Deploying, baking and caches")
        # the navigation lists every page; one click on it opens another
        nav = page.locator("nav.md-nav--primary")
        for title in ("Running locally", "Jobs and errors", "Configuration", "Troubleshooting"):
            await expect(nav.get_by_role("link", name=title, exact=True).first).to_be_attached()
        screenshot = tmp_path_factory.mktemp("site-shot") / "site.png"
        await page.screenshot(path=str(screenshot))
        print(f"documentation site screenshot: {screenshot}")
        if os.environ.get("SITE_SCREENSHOT"):
            shutil.copyfile(screenshot, os.environ["SITE_SCREENSHOT"])
        await nav.get_by_role("link", name="Load-balancing endpoints", exact=True).first.click()
        await expect(page).to_have_url(f"{url}/load-balancing/")
        await expect(page.locator("h1")).to_contain_text("Load-balancing endpoints")
        # the search index is built and answers
        await page.goto(f"{url}/")
        await page.locator("label.md-search__icon, .md-search__input").first.click()
        # the search index loads in a worker; a query typed before it is ready finds nothing
        await expect(page.locator(".md-search-result__meta")).not_to_have_text(re.compile("Initializing"))
        await page.locator("input.md-search__input").press_sequentially("LeaderWorkerSet")  # keys, as a user types
        await expect(page.locator(".md-search-result__item").first).to_be_visible()
        await page.keyboard.press("Escape")
        await page.goto(f"{url}/performance/#cold-start-measured")
        await expect(page.locator("#cold-start-measured")).to_be_visible()
        await context.close()
        assert outside == [], outside
