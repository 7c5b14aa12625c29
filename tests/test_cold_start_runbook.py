"""bench/gpu_cold_start.sh, the cold-start runbook for a GPU pod, run here on
the CPU: three fresh `python -m handler run` processes and one production
worker under the runpod SDK, fed by the script's own stand-in job API (the
engine boots four times), then one table of their boots, phase by phase. The
GPU's lines show "-" here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ["cold, no volume", "first start, empty volume", "warm volume", "queue worker, warm volume"]


def table(output: str) -> dict[str, list[str]]:
    """The markdown table's rows by their first cell (the header row under "phase")."""
    rows = {}
    for line in output.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


@pytest.mark.vllm
def test_the_runbook_times_a_cold_start_two_on_a_volume_and_a_queue_worker(tmp_path: Path) -> None:
    volumes, logs = tmp_path / "volumes", tmp_path / "logs"
    volumes.mkdir()
    command = ["bash", str(ROOT / "bench" / "gpu_cold_start.sh"), "--workdir", str(ROOT)]
    # the SDK's disk check would fail the queue worker on a nearly full CI disk
    command += ["--volume-parent", str(volumes), "--keep-logs", str(logs), "--min-disk-percent", "0"]
    env = {**os.environ, "PYTHON": sys.executable, "VLLM_CPU_KVCACHE_SPACE": "2"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    rows = table(result.stdout)
    assert rows["phase"] == SCENARIOS, result.stdout
    for phase in ("imports", "ready: process start -> engine serving", "total: process start -> first token"):
        assert all(float(cell) > 0 for cell in rows[phase]), (phase, rows[phase])
    assert rows["of which CUDA graph capture"] == ["-"] * 4, "a GPU's line, on the CPU"
    # on the CPU the worker forks vLLM's engine process in every start (its
    # single-process executor); the queue worker ran the SDK's fitness checks
    # in a subprocess, and the `run` starts do not use the SDK
    assert rows["engine process"] == ["forked"] * 4, rows["engine process"]
    assert rows["fitness checks"] == ["-", "-", "-", "in a subprocess"], rows["fitness checks"]
    # the worker found the volume in the last three starts only, and the runbook removed it
    names = ("cold", "first", "warm", "queue")
    on_volume = ["network volume" in (logs / f"{name}.log").read_text() for name in names]
    assert on_volume == [False, True, True, True]
    assert list(volumes.iterdir()) == []
