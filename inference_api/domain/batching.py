"""Dynamic batching, as Triton's dynamic batcher: concurrent single requests share one lookup and one model call.

Each `POST /v1/fraud/score` submits its request and awaits its own outcome. A loop takes what is waiting (up to
`max_size`; after at most `max_delay_s` for more to arrive) and scores it with `score_requests`: one transaction
lookup, one feature fetch, one prediction and one explanation for the whole batch. At most `max_inflight` batches
run at once, so while they await Redis or the model, new requests gather for the next batch: under load batches
grow by themselves, and a lone request is not held back: with the default delay of 0, a request that finds a free
slot and nobody waiting is scored right in its own coroutine, without a hand-off to the loop.

Errors stay per request: an unknown id fails only its own request; an error of the whole call (Redis down, no
model) fails every request of that batch with it, as it would have failed each alone. The wait is bounded: past
`max_queue` waiting requests, new ones are refused with `Overloaded` (503 and Retry-After) instead of queueing
without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from core.errors import FraudserveError
from inference_api.domain.scoring import Request, Score

log = logging.getLogger("fraudserve.batching")

Outcome = Score | FraudserveError
ScoreMany = Callable[[Sequence[Request]], Awaitable[list[Outcome]]]


class Overloaded(FraudserveError):
    code = "overloaded"
    status = 503

    def __init__(self, waiting: int, retry_after_s: int = 1) -> None:
        super().__init__(
            f"the API has {waiting} requests waiting to be scored, its limit; retry after {retry_after_s} s "
            "or add API replicas",
            {"waiting": waiting, "retry_after_s": retry_after_s},
        )
        self.retry_after_s = retry_after_s


class DynamicBatcher:
    def __init__(
        self,
        score_many: ScoreMany,
        max_size: int = 64,
        max_delay_s: float = 0.0,
        max_inflight: int = 2,
        max_queue: int = 2048,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.score_many = score_many
        self.max_size = max_size
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self.on_batch = on_batch
        self._waiting: list[tuple[Request, asyncio.Future[Outcome]]] = []
        self._work = asyncio.Event()
        self._slots = asyncio.Semaphore(max_inflight)
        self._loop_task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._loop(), name="dynamic-batcher")

    async def close(self) -> None:
        """Stop taking batches; the batches in flight finish and every waiting request gets an answer."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        while self._waiting:
            await self._run(self._take())
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def submit(self, request: Request) -> Outcome:
        if len(self._waiting) >= self.max_queue:
            raise Overloaded(len(self._waiting))
        if self.max_delay_s == 0 and not self._waiting and not self._slots.locked():
            # A free slot and nobody waiting: score it here, without handing it to the loop and back (each hop is
            # an event-loop turn of latency). Under load the slots are busy and requests gather as usual.
            await self._slots.acquire()
            try:
                if self.on_batch is not None:
                    self.on_batch(1)
                (outcome,) = await self.score_many([request])
                return outcome
            finally:
                self._slots.release()
                if self._waiting:
                    self._work.set()
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waiting.append((request, future))
        self._work.set()
        if self._loop_task is None:  # not started (a test client without lifespan): score it now
            await self._run(self._take())
        return await future

    def _take(self) -> list[tuple[Request, asyncio.Future[Outcome]]]:
        batch, self._waiting = self._waiting[: self.max_size], self._waiting[self.max_size :]
        if not self._waiting:
            self._work.clear()
        return batch

    async def _loop(self) -> None:
        while True:
            await self._work.wait()
            if self.max_delay_s > 0 and len(self._waiting) < self.max_size:
                await asyncio.sleep(self.max_delay_s)
            await self._slots.acquire()
            batch = self._take()
            if not batch:
                self._slots.release()
                continue
            task = asyncio.create_task(self._run(batch, release=True))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[tuple[Request, asyncio.Future[Outcome]]], release: bool = False) -> None:
        try:
            if self.on_batch is not None:
                self.on_batch(len(batch))
            outcomes = await self.score_many([request for request, _ in batch])
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if not future.done():
                    future.set_result(outcome)
        except BaseException as exc:  # the whole call failed: each request of the batch fails with it
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else asyncio.CancelledError())
            if not isinstance(exc, Exception):
                raise
        finally:
            if release:
                self._slots.release()
