"""Set-up on a user's machine: builder/setup_venv.sh and builder/torch_cpu.sh.

Run against local stand-ins for the package indexes, so they say what a fresh
machine would see: PyPI without "+cpu" builds of torch, PyTorch's CPU index
with them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TORCH_PIN = re.search(r"^torch==(\S+)$", (ROOT / "builder" / "constraints-cpu.txt").read_text(), re.MULTILINE).group(1)


def fake_wheel(directory: Path, name: str, version: str) -> Path:
    """A minimal, installable wheel: enough for pip to resolve it."""
    directory.mkdir(parents=True, exist_ok=True)
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        archive.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        archive.writestr(f"{info}/RECORD", "")
    # a PEP 503 project page, as an index serves it
    (directory / "index.html").write_text(f'<a href="{wheel.name}">{wheel.name}</a>\n')
    return wheel


def install_torch(tmp_path: Path, default_index: Path, cpu_index: Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    env.update(
        PIP_CONFIG_FILE=os.devnull,  # this machine's pip settings (local wheels) are not a user's
        PIP_INDEX_URL=default_index.as_uri(),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        TORCH_CPU_INDEX_URL=cpu_index.as_uri(),
    )
    script = (
        'source builder/torch_cpu.sh && install_torch_cpu "$0" builder/constraints-cpu.txt '
        "--dry-run --no-deps --ignore-installed"
    )
    return subprocess.run(
        ["bash", "-c", script, sys.executable], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def test_torch_comes_from_pytorchs_cpu_index_when_the_default_index_lacks_it(tmp_path):
    pypi = tmp_path / "pypi"
    fake_wheel(pypi / "torch", "torch", TORCH_PIN.split("+")[0])  # PyPI: torch, but no +cpu build
    cpu_index = tmp_path / "pytorch-cpu"
    fake_wheel(cpu_index / "torch", "torch", TORCH_PIN)
    result = install_torch(tmp_path, pypi, cpu_index)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is not on the default index; taking it from PyTorch's CPU index" in result.stdout
    assert f"Would install torch-{TORCH_PIN}" in result.stdout


def test_torch_from_the_default_index_needs_no_other(tmp_path):
    default = tmp_path / "mirror"
    fake_wheel(default / "torch", "torch", TORCH_PIN)
    result = install_torch(tmp_path, default, tmp_path / "unused")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PyTorch's CPU index" not in result.stdout
    assert f"Would install torch-{TORCH_PIN}" in result.stdout


def test_torch_found_nowhere_fails_with_pips_error(tmp_path):
    (tmp_path / "empty").mkdir()
    result = install_torch(tmp_path, tmp_path / "empty", tmp_path / "empty")
    assert result.returncode != 0
    assert "taking it from PyTorch's CPU index" in result.stdout, "both indexes were tried"
    assert "no matching distribution" in (result.stdout + result.stderr).lower()


def test_setup_refuses_an_unsupported_python_in_one_line(tmp_path):
    for name in ("builder", "Dockerfile"):
        source = ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, tmp_path / name)
    pyproject = (ROOT / "pyproject.toml").read_text()
    (tmp_path / "pyproject.toml").write_text(
        re.sub(r'requires-python = "[^"]+"', 'requires-python = ">=3.99"', pyproject)
    )
    result = subprocess.run(
        ["bash", "builder/setup_venv.sh"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
        timeout=60,
    )
    assert result.returncode != 0
    have = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(f"setup: {sys.executable} is Python {have}; this project needs Python >=3.99")
    )
    assert not (tmp_path / ".venv").exists()


def test_the_supported_python_range_is_stated_once_and_documented():
    spec = re.search(r'requires-python = "([^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    low, high = re.fullmatch(r">=(\d+\.\d+),<(\d+\.\d+)", spec).groups()
    last = f"{high.split('.')[0]}.{int(high.split('.')[1]) - 1}"
    for page in ("README.md", "docs/local.md"):
        assert f"Python {low}–{last}" in (ROOT / page).read_text(), page
