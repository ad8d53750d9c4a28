"""Dynamic batching: requests that arrive together share one model call.

HTTP handlers `submit()` their texts and await the result. One worker task takes the first waiting
request, then keeps collecting until the batch holds `max_batch_size` texts or `max_wait_ms` has passed
since that first request, runs the model in a worker thread (so the event loop keeps accepting), and
hands each request its slice of the output.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence


class QueueFull(Exception):
    pass


@dataclass
class _Request:
    items: Sequence[Any]
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    def __init__(self, run_batch: Callable[[list[Any]], list[Any]], *, max_batch_size: int = 32,
                 max_wait_ms: float = 5.0, max_queue: int = 1024):
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.queue: asyncio.Queue[_Request] = asyncio.Queue(maxsize=max_queue)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._worker: asyncio.Task | None = None
        self.batches_run = 0
        self.items_run = 0

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    async def submit(self, items: Sequence[Any]) -> list[Any]:
        future = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait(_Request(items, future))
        except asyncio.QueueFull:
            raise QueueFull() from None
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            size = len(batch[0].items)
            deadline = batch[0].enqueued + self.max_wait
            while size < self.max_batch_size:
                remaining = deadline - time.perf_counter()
                try:
                    request = self.queue.get_nowait() if remaining <= 0 else await asyncio.wait_for(
                        self.queue.get(), remaining)
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
                batch.append(request)
                size += len(request.items)
            items = [item for r in batch for item in r.items]
            try:
                outputs = await loop.run_in_executor(self._executor, self.run_batch, items)
            except Exception as e:  # the model call failed: every request in the batch gets the error
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(e)
                continue
            self.batches_run += 1
            self.items_run += len(items)
            start = 0
            for r in batch:
                if not r.future.done():  # a client may have gone away
                    r.future.set_result(outputs[start:start + len(r.items)])
                start += len(r.items)
