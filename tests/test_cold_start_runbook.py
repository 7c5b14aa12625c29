"""bench/gpu_cold_start.sh, the cold-start runbook for a GPU pod, run here on
the CPU: three fresh worker processes (the engine boots three times), then one
table of their boots, phase by phase. The GPU's lines show "-" here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ["cold, no volume", "first start, empty volume", "warm volume"]


def table(output: str) -> dict[str, list[str]]:
    """The markdown table's rows by their first cell (the header row under "phase")."""
    rows = {}
    for line in output.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


@pytest.mark.vllm
def test_the_runbook_times_a_cold_start_and_two_on_a_volume(tmp_path: Path) -> None:
    volumes, logs = tmp_path / "volumes", tmp_path / "logs"
    volumes.mkdir()
    command = ["bash", str(ROOT / "bench" / "gpu_cold_start.sh"), "--workdir", str(ROOT)]
    command += ["--volume-parent", str(volumes), "--keep-logs", str(logs)]
    env = {**os.environ, "PYTHON": sys.executable, "VLLM_CPU_KVCACHE_SPACE": "2"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    rows = table(result.stdout)
    assert rows["phase"] == SCENARIOS, result.stdout
    for phase in ("imports", "ready: process start -> engine serving", "total: process start -> first token"):
        assert all(float(cell) > 0 for cell in rows[phase]), (phase, rows[phase])
    assert rows["of which CUDA graph capture"] == ["-"] * 3, "a GPU's line, on the CPU"
    # the worker found the volume in the last two starts only, and the runbook removed it
    on_volume = ["network volume" in (logs / f"{name}.log").read_text() for name in ("cold", "first", "warm")]
    assert on_volume == [False, True, True]
    assert list(volumes.iterdir()) == []
