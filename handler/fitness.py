"""The runpod SDK's start-up fitness checks, run in a subprocess.

runpod 1.10 runs its checks in the worker's own process before its job loop
(``rp_fitness.run_fitness_checks``). On a GPU they import torch, put a tensor
on every GPU and time a matmul there: CUDA is then initialised in the process
that builds the engine, and vLLM must start its engine process by spawn,
which imports torch and vLLM all over again, instead of fork. So the worker
runs the same checks, the SDK's own code and thresholds, in a subprocess it
starts first thing, beside vLLM's import; the SDK's in-process run is given a
single check that reports the subprocess's verdict, so a failure still ends
the worker the SDK's way ("Worker is unhealthy, exiting.", exit 1). The
engine build waits for the subprocess before vLLM starts its engine process,
so the checks' GPU memory is free again before vLLM measures it.

Only where the SDK itself would run the checks: on RunPod
(``RUNPOD_WEBHOOK_GET_JOB`` set) with no ``--rp_*`` arguments.
"""

from __future__ import annotations

import atexit
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Mapping, MutableMapping

logger = logging.getLogger(__name__)

# The SDK's own run of its checks (the subprocess keeps its output and exit code).
SCRIPT = (
    "import asyncio\n"
    "from runpod.serverless.modules.rp_fitness import run_fitness_checks\n"
    "asyncio.run(run_fitness_checks())\n"
)
# What keeps the SDK's automatic checks out of the worker's process once the
# subprocess runs them: the system checks (the CUDA ones among them) and the
# GPU binary's check.
SKIP_IN_PROCESS = {"RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true", "RUNPOD_SKIP_GPU_CHECK": "true"}
FAILED = "Fitness check failed:"


def wanted(environ: Mapping[str, str], argv: list[str]) -> bool:
    """Whether the SDK will run its checks: on RunPod, with no ``--rp_*`` arguments."""
    return bool(environ.get("RUNPOD_WEBHOOK_GET_JOB")) and not argv


class Checks:
    """The checks' subprocess: started at once, its output passed on to this
    process's stdout as it comes (the SDK's log lines, as they would read)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", SCRIPT],
            env=dict(os.environ if environ is None else environ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.failures: list[str] = []
        self._relay = threading.Thread(target=self._pass_on, name="fitness-checks", daemon=True)
        self._relay.start()
        atexit.register(self._end)  # a worker that stops early (a bad setting) leaves no checks running

    def _end(self) -> None:
        if self.process.poll() is None:
            self.process.kill()

    def _pass_on(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if FAILED in line:
                self.failures.append(line.split(FAILED, 1)[1].strip())

    def wait(self) -> int:
        """Wait for the checks to end; their exit code."""
        code = self.process.wait()
        self._relay.join()
        return code

    def verdict(self) -> None:
        """Raise the subprocess's failure, as the SDK's check that stands in for it."""
        code = self.wait()
        if code != 0:
            reason = "; ".join(self.failures) or f"the fitness checks exited {code}"
            raise RuntimeError(f"in a subprocess: {reason}")

    def hand_to(self, environ: MutableMapping[str, str]) -> None:
        """Make the SDK's in-process run report this subprocess's verdict
        instead of running its automatic checks again (call before its loop
        starts; the SDK reads these at that point)."""
        from runpod.serverless import register_fitness_check

        environ.update(SKIP_IN_PROCESS)

        def fitness_checks_in_a_subprocess() -> None:
            self.verdict()

        register_fitness_check(fitness_checks_in_a_subprocess)
