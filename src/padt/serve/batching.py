"""Dynamic batching: requests that arrive together run as one batch, on one worker thread.

:class:`DynamicBatcher` keeps a bounded FIFO of pending jobs. Its loop takes the oldest job, waits up to
``max_wait_s`` after that job arrived for more jobs *with the same key* (up to ``max_batch_size``), and runs
them in one call of ``run_batch`` on a single worker thread, so the event loop keeps accepting requests while
the model works. While a batch runs, new jobs queue up; they have usually waited long enough by the time the
worker is free, so under load batches fill without extra delay.

The key says which jobs may share a call: the server uses the decoding options (``max_new_tokens``, the VRT
repeat penalty, masks), so two requests are merged only when one ``generate`` call with one set of options is
exactly what each would get alone. Jobs with another key wait for a later batch; the oldest job always goes
first, so none starves.

If a batch of several jobs raises, each job is run alone, so that one bad request fails by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any


class QueueFull(Exception):
    """The queue holds ``max_queue`` jobs; ``retry_after`` is a guess of the seconds until there is room."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the queue is full; retry in {retry_after} s")
        self.retry_after = retry_after


class ShuttingDown(Exception):
    """The batcher no longer accepts jobs."""


@dataclass
class BatchInfo:
    """How a job ran: its batch's size, and seconds spent queued and in the batch call."""

    batch_size: int = 0
    queued_s: float = 0.0
    run_s: float = 0.0


@dataclass(eq=False)
class _Job:
    item: Any
    key: Hashable
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)
    info: BatchInfo = field(default_factory=BatchInfo)


class DynamicBatcher:
    """Groups concurrent jobs into batches for ``run_batch(items) -> results`` (one result per item, in order).

    Args:
        run_batch: called on the worker thread with the items of one batch (all of one key).
        max_batch_size: most jobs per call.
        max_wait_s: how long the oldest job may wait for others before its batch starts.
        max_queue: most jobs waiting (not counting the running batch); :meth:`submit` raises
            :class:`QueueFull` beyond it.
        on_batch: called on the event loop after each call with ``(batch_size, seconds)``.
    """

    def __init__(
        self,
        run_batch: Callable[[list[Any]], Sequence[Any]],
        *,
        max_batch_size: int = 8,
        max_wait_s: float = 0.01,
        max_queue: int = 64,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1 and max_wait_s >= 0")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.on_batch = on_batch
        self._pending: deque[_Job] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._accepting = False
        self._running = 0
        self._seconds_per_batch = 1.0  # running mean, for Retry-After

    # ------------------------------------------------------------------ state
    @property
    def queue_length(self) -> int:
        """Jobs waiting for a batch."""
        return len(self._pending)

    @property
    def in_flight(self) -> int:
        """Jobs in the batch the worker is running."""
        return self._running

    def retry_after(self) -> int:
        """Seconds until the queue has probably drained enough to take a job (at least 1)."""
        batches = math.ceil((len(self._pending) + 1) / self.max_batch_size)
        return max(1, math.ceil(batches * self._seconds_per_batch))

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="padt-batch")
        self._accepting = True
        self._task = asyncio.create_task(self._loop(), name="padt-batcher")

    async def stop(self) -> None:
        """Stop taking jobs, finish every job already taken, then stop the worker."""
        self._accepting = False
        while self._pending or self._running:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    # ------------------------------------------------------------------ jobs
    async def submit(
        self, item: Any, key: Hashable = None, timeout: float | None = None
    ) -> tuple[Any, BatchInfo]:
        """Queue ``item`` and wait for its result. Raises :class:`QueueFull`, :class:`ShuttingDown`,
        ``TimeoutError`` (the job is dropped if it has not started; a running batch is not interrupted) or
        what ``run_batch`` raised for it."""
        if not self._accepting or self._wakeup is None:
            raise ShuttingDown("the server is shutting down")
        if len(self._pending) >= self.max_queue:
            raise QueueFull(self.retry_after())
        job = _Job(item, key, asyncio.get_running_loop().create_future())
        job.future.add_done_callback(lambda f, job=job: self._forget(job) if f.cancelled() else None)
        self._pending.append(job)
        self._wakeup.set()
        result = await asyncio.wait_for(job.future, timeout)
        return result, job.info

    def _forget(self, job: _Job) -> None:
        with contextlib.suppress(ValueError):  # already taken into a batch
            self._pending.remove(job)

    async def _loop(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            head = self._pending[0]
            deadline = head.enqueued + self.max_wait_s
            while self._count(head.key) < self.max_batch_size and head in self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            if head not in self._pending:  # its client gave up meanwhile
                continue
            batch = self._take(head.key)
            start = time.monotonic()
            for job in batch:
                job.info.queued_s = start - job.enqueued
            self._running = len(batch)
            try:
                outcomes = await loop.run_in_executor(
                    self._executor, self._run_isolated, [j.item for j in batch]
                )
            finally:
                self._running = 0
            elapsed = time.monotonic() - start
            self._seconds_per_batch = 0.8 * self._seconds_per_batch + 0.2 * elapsed
            for job, (ok, value) in zip(batch, outcomes):
                job.info.batch_size = len(batch)
                job.info.run_s = elapsed
                if job.future.done():
                    continue  # timed out while running
                if ok:
                    job.future.set_result(value)
                else:
                    job.future.set_exception(value)
            if self.on_batch is not None:
                self.on_batch(len(batch), elapsed)

    def _count(self, key: Hashable) -> int:
        return sum(1 for job in self._pending if job.key == key)

    def _take(self, key: Hashable) -> list[_Job]:
        batch, rest = [], deque()
        for job in self._pending:
            if job.key == key and len(batch) < self.max_batch_size:
                batch.append(job)
            else:
                rest.append(job)
        self._pending = rest
        return batch

    def _run_isolated(self, items: list[Any]) -> list[tuple[bool, Any]]:
        """``run_batch`` on the worker thread; if a batch of several fails, each item alone."""
        try:
            results = list(self.run_batch(items))
            if len(results) != len(items):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(items)} items")
            return [(True, r) for r in results]
        except Exception as error:
            if len(items) == 1:
                return [(False, error)]
        outcomes = []
        for item in items:
            try:
                [result] = self.run_batch([item])
                outcomes.append((True, result))
            except Exception as error:
                outcomes.append((False, error))
        return outcomes
