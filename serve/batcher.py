"""Dynamic batching: inputs that arrive together share model calls.

Every input of every request is one queue entry carrying its token count. When the model is free, the
worker waits for the queue to hold as many entries as the previous batch had (so a lone client is not
delayed, and a crowd that is answered together gets batched together again), or `max_batch_requests`
entries, or `max_batch_tokens` tokens, but never longer than `max_queue_delay_ms` after the oldest
entry arrived; then it takes entries in arrival order within both limits. It sorts them by
length and cuts them into model calls so that little compute goes to padding (`split_by_length`), runs
the calls on the model thread (the event loop keeps accepting meanwhile) and resolves each entry.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .options import CPU_MAX_BATCH_TOKENS, DEFAULTS

# What one extra model call costs, in tokens of compute: a call is split off only when that saves more
# padding. Measured for MiniLM on CPU: ~3 ms fixed per onnxruntime call, ~150 us per token.
CALL_COST_TOKENS = 24


@dataclass
class Entry:
    item: Any
    options: Any
    tokens: int
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class BatchStats:
    """What one batch looked like, for the metrics."""

    inputs: int
    tokens: int
    padded_tokens: int
    calls: int
    queue_seconds: list[float]
    run_seconds: float


RunBatch = Callable[[list[Any], list[Any]], list[Any]]


class Batcher:
    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch_tokens: int = CPU_MAX_BATCH_TOKENS,
        max_batch_requests: int = DEFAULTS.max_batch_requests,
        max_queue_delay_ms: float = DEFAULTS.max_queue_delay_ms,
        on_batch: Callable[[BatchStats], None] | None = None,
    ):
        self.run_batch = run_batch
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_requests = max_batch_requests
        self.max_delay = max_queue_delay_ms / 1000
        self.on_batch = on_batch
        self.queue: deque[Entry] = deque()
        self.queued_tokens = 0
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._worker: asyncio.Task | None = None
        self.batches_run = 0
        self.items_run = 0
        self.last_batch_size = 1

    @property
    def alive(self) -> bool:
        return self._worker is not None and not self._worker.done()

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

    async def submit(self, items: Sequence[Any], options: Sequence[Any], tokens: Sequence[int]) -> list[Any]:
        """Queue one entry per input and wait for all of their results (in input order)."""
        loop = asyncio.get_running_loop()
        entries = [
            Entry(i, o, t, loop.create_future()) for i, o, t in zip(items, options, tokens, strict=False)
        ]
        self.queue.extend(entries)
        self.queued_tokens += sum(tokens)
        self._wakeup.set()
        try:
            return list(await asyncio.gather(*(e.future for e in entries)))
        except BaseException:
            for e in entries:  # the rest of this request is not worth computing any more
                if not e.future.done():
                    e.future.cancel()
                elif not e.future.cancelled():
                    e.future.exception()  # retrieved: no "never retrieved" warning
            raise

    def _ready(self) -> bool:
        return (
            len(self.queue) >= min(self.last_batch_size, self.max_batch_requests)
            or self.queued_tokens >= self.max_batch_tokens
        )

    def _take(self) -> list[Entry]:
        batch: list[Entry] = []
        tokens = 0
        while self.queue and len(batch) < self.max_batch_requests:
            if batch and tokens + self.queue[0].tokens > self.max_batch_tokens:
                break
            entry = self.queue.popleft()
            self.queued_tokens -= entry.tokens
            if entry.future.done():  # its request already failed or was cancelled
                continue
            batch.append(entry)
            tokens += entry.tokens
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            deadline = self.queue[0].enqueued + self.max_delay
            while not self._ready() and (remaining := deadline - time.perf_counter()) > 0:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch = self._take()
            if not batch:
                continue
            self.last_batch_size = len(batch)
            started = time.perf_counter()
            calls = split_by_length([e.tokens for e in batch], self.max_batch_tokens)
            try:
                outputs = await loop.run_in_executor(self._executor, self._run_calls, batch, calls)
            except Exception as e:  # the model call failed: every input of the batch gets the error
                for entry in batch:
                    if not entry.future.done():
                        entry.future.set_exception(e)
                continue
            for entry, output in zip(batch, outputs, strict=False):
                if not entry.future.done():
                    entry.future.set_result(output)
            self.batches_run += 1
            self.items_run += len(batch)
            if self.on_batch is not None:
                self.on_batch(
                    BatchStats(
                        inputs=len(batch),
                        tokens=sum(e.tokens for e in batch),
                        padded_tokens=sum(len(c) * max(batch[i].tokens for i in c) for c in calls),
                        calls=len(calls),
                        queue_seconds=[started - e.enqueued for e in batch],
                        run_seconds=time.perf_counter() - started,
                    )
                )

    def _run_calls(self, batch: list[Entry], calls: list[list[int]]) -> list[Any]:
        outputs: list[Any] = [None] * len(batch)
        for call in calls:
            results = self.run_batch([batch[i].item for i in call], [batch[i].options for i in call])
            for i, result in zip(call, results, strict=False):
                outputs[i] = result
        return outputs


def split_by_length(
    lengths: Sequence[int], max_tokens: int, call_cost: int = CALL_COST_TOKENS
) -> list[list[int]]:
    """Indices of `lengths` grouped into model calls: sorted by length, cut where the padding saved is worth
    more than a call, and no call's padded size (inputs x longest) over `max_tokens` unless one input is."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    ordered = [lengths[i] for i in order]
    n = len(order)
    bounds = [i for i in range(n) if i == 0 or ordered[i] != ordered[i - 1]] + [n]  # runs of one length

    def segment(start: int, end: int) -> tuple[float, int]:
        longest = ordered[end - 1]
        per_call = max(1, max_tokens // longest)
        calls = -(-(end - start) // per_call)
        return (end - start) * longest + calls * call_cost, per_call

    best = [0.0] + [float("inf")] * (len(bounds) - 1)
    cut = [0] * len(bounds)
    for k in range(1, len(bounds)):
        for i in range(k):
            cost = best[i] + segment(bounds[i], bounds[k])[0]
            if cost < best[k]:
                best[k], cut[k] = cost, i
    calls: list[list[int]] = []
    k = len(bounds) - 1
    while k > 0:
        start, end = bounds[cut[k]], bounds[k]
        per_call = segment(start, end)[1]
        while end > start:
            calls.append(order[max(start, end - per_call) : end])
            end -= per_call
        k = cut[k]
    return calls[::-1]
