"""Jobs of the local endpoint: a queue, a bounded number of runners, and the
states RunPod reports (IN_QUEUE -> IN_PROGRESS -> COMPLETED, FAILED,
CANCELLED or TIMED_OUT).

Each job runs through the real handler (``Worker.handle``). As with
``return_aggregate_stream``, a job's output is the list of items the handler
yielded; a yielded ``{"error": ...}`` fails the job with that error.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

IN_QUEUE, IN_PROGRESS = "IN_QUEUE", "IN_PROGRESS"
COMPLETED, FAILED, CANCELLED, TIMED_OUT = "COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"
FINAL = frozenset({COMPLETED, FAILED, CANCELLED, TIMED_OUT})

Handler = Callable[[dict[str, Any]], AsyncIterator[Any]]


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


@dataclass
class Job:
    input: Any
    webhook: str | None = None
    execution_timeout_s: float | None = None
    id: str = field(default_factory=lambda: f"local-{uuid.uuid4()}")
    status: str = IN_QUEUE
    items: list[Any] = field(default_factory=list)
    error: str | None = None
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    streamed: int = 0  # items already handed out by /stream
    task: asyncio.Task | None = field(default=None, repr=False)
    _changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def done(self) -> bool:
        return self.status in FINAL

    def changed(self) -> None:
        """Wake everyone waiting on this job."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_change(self, timeout: float | None = None) -> None:
        event = self._changed
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass

    async def wait_done(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            await self.wait_change(left)
        return True

    def take_stream(self) -> list[Any]:
        """Items produced since the last call, as RunPod's /stream returns them."""
        fresh = self.items[self.streamed :]
        self.streamed = len(self.items)
        return fresh

    def view(self) -> dict[str, Any]:
        """The job as RunPod's /status shows it."""
        now = time.monotonic()
        body: dict[str, Any] = {"id": self.id, "status": self.status, "workerId": "local"}
        if self.started is not None:
            body["delayTime"] = _ms(self.started - self.created)
            body["executionTime"] = _ms((self.finished or now) - self.started)
        if self.status == COMPLETED:
            body["output"] = self.items
        if self.error is not None:
            body["error"] = self.error
        return body


class JobQueue:
    """Queued jobs run by ``concurrency`` runners; finished jobs are kept for
    ``retention_s`` seconds, and at most ``max_finished`` of them. A job that
    ends, other than by a purge, is handed to ``on_finished`` in a task of its
    own (the local endpoint posts webhooks with it)."""

    def __init__(
        self,
        handler: Handler,
        concurrency: int,
        *,
        retention_s: float = 1800.0,
        max_finished: int = 1000,
        on_finished: Callable[[Job], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        self.handler = handler
        self.concurrency = concurrency
        self.retention_s = retention_s
        self.max_finished = max_finished
        self.on_finished = on_finished
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self.counts = {COMPLETED: 0, FAILED: 0, CANCELLED: 0, TIMED_OUT: 0}
        self.running = 0
        self.peak_running = 0
        self._queue: asyncio.Queue[Job] = asyncio.Queue()
        self._runners: list[asyncio.Task] = []

    def start(self) -> None:
        if not self._runners:
            self._runners = [asyncio.create_task(self._runner()) for _ in range(self.concurrency)]

    async def stop(self) -> None:
        for job in list(self.jobs.values()):
            if not job.done:
                self.cancel(job)
        for runner in self._runners:
            runner.cancel()
        await asyncio.gather(*self._runners, return_exceptions=True)
        self._runners = []

    def submit(self, job: Job) -> Job:
        self._evict()
        self.jobs[job.id] = job
        self._queue.put_nowait(job)
        return job

    def get(self, job_id: str) -> Job | None:
        self._evict()
        return self.jobs.get(job_id)

    def cancel(self, job: Job) -> None:
        if job.done:
            return
        if job.task is not None:
            job.task.cancel()  # the runner marks it CANCELLED
        else:
            self._finish(job, CANCELLED)

    def purge(self) -> int:
        removed = 0
        for job in list(self.jobs.values()):
            if job.status == IN_QUEUE:
                self._finish(job, CANCELLED, count=False)
                del self.jobs[job.id]
                removed += 1
        return removed

    def health(self) -> dict[str, Any]:
        queued = sum(1 for job in self.jobs.values() if job.status == IN_QUEUE)
        return {
            "jobs": {
                "completed": self.counts[COMPLETED],
                "failed": self.counts[FAILED] + self.counts[TIMED_OUT],
                "cancelled": self.counts[CANCELLED],
                "inProgress": self.running,
                "inQueue": queued,
                "retried": 0,
            },
            "workers": {
                "idle": 0 if self.running else 1,
                "running": 1 if self.running else 0,
                "ready": 1,
                "initializing": 0,
                "throttled": 0,
                "unhealthy": 0,
            },
        }

    async def _runner(self) -> None:
        while True:
            job = await self._queue.get()
            if job.status != IN_QUEUE:
                continue  # cancelled or purged while it waited
            self.running += 1
            self.peak_running = max(self.peak_running, self.running)
            try:
                job.task = asyncio.create_task(self._run(job))
                await asyncio.wait({job.task})
            finally:
                self.running -= 1

    async def _run(self, job: Job) -> None:
        job.status = IN_PROGRESS
        job.started = time.monotonic()
        job.changed()
        try:
            async with asyncio.timeout(job.execution_timeout_s):
                async for item in self.handler({"id": job.id, "input": job.input}):
                    if isinstance(item, dict) and "error" in item:
                        job.error = str(item["error"])
                        self._finish(job, FAILED)
                        return
                    job.items.append(item)
                    job.changed()
            self._finish(job, COMPLETED)
        except asyncio.CancelledError:
            self._finish(job, CANCELLED)
        except TimeoutError:
            job.error = f"the job ran longer than its executionTimeout ({job.execution_timeout_s} s)"
            self._finish(job, TIMED_OUT)
        except Exception as error:  # noqa: BLE001 - the handler yields errors; this is a bug guard
            logger.exception("job %s crashed", job.id)
            job.error = f"{type(error).__name__}: {error}"
            self._finish(job, FAILED)

    def _finish(self, job: Job, status: str, *, count: bool = True) -> None:
        if job.done:
            return
        job.status = status
        job.finished = time.monotonic()
        if count:
            self.counts[status] += 1
        job.changed()
        if self.on_finished is not None and count:
            asyncio.get_running_loop().create_task(self.on_finished(job))

    def _evict(self) -> None:
        now = time.monotonic()
        finished = [job for job in self.jobs.values() if job.done]
        excess = len(finished) - self.max_finished
        for job in finished:
            if excess > 0 or (job.finished is not None and now - job.finished > self.retention_s):
                del self.jobs[job.id]
                excess -= 1
