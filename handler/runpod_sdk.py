"""The runpod SDK: its job loop, and the state it keeps between processes."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import runpod
from runpod.serverless.modules.worker_state import JobsProgress

from . import event_loop

if TYPE_CHECKING:
    from .worker import Worker

logger = logging.getLogger(__name__)


def start(worker: Worker) -> None:
    """Serve RunPod's queue with ``worker`` until the SDK's loop returns."""
    forget_jobs_of_earlier_processes()
    event_loop.use_fast_loop()  # the SDK runs its job loop with asyncio.run
    runpod.serverless.start(
        {
            "handler": worker.handle,
            "concurrency_modifier": worker.concurrency,
            "return_aggregate_stream": True,
        }
    )


def forget_jobs_of_earlier_processes() -> None:
    """Empty the runpod SDK's record of jobs in progress.

    The SDK keeps that record in ``.runpod_jobs.pkl`` in the working directory
    and loads it at import. Entries left by a process that died mid-job (a
    fatal engine error, a kill) never finish, and runpod 1.10 will not raise
    its concurrency above 1 while any job is in progress: a restarted worker
    would wait on them forever without taking a job.
    """
    progress = JobsProgress()
    if len(progress):
        logger.warning(
            "forgetting %d job(s) left in progress by an earlier worker process: %s",
            len(progress),
            ", ".join(sorted(str(job) for job in progress)),
        )
        progress.clear()
