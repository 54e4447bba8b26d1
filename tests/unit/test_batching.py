"""The dynamic batcher, with a fake scorer (the real one is exercised by the API integration tests)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence

import numpy as np
import pytest

from core.errors import FraudserveError, RedisUnavailable
from inference_api.domain.batching import DynamicBatcher, Outcome, Overloaded
from inference_api.domain.scoring import Request


class NotFound(FraudserveError):
    code = "transaction_not_found"
    status = 404


class FakeScorer:
    """Echoes each id as an error carrying it (so outcomes can be matched), after waiting for `gate`."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: Exception | None = None

    async def __call__(self, requests: Sequence[Request]) -> list[Outcome]:
        self.batches.append([tid or "" for tid, _ in requests])
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return [NotFound(f"answer for {tid}") for tid, _ in requests]


def _ids(n: int) -> list[Request]:
    return [(f"tx{i}", None) for i in range(n)]


def test_concurrent_requests_share_batches_and_each_gets_its_own_answer() -> None:
    async def main() -> None:
        scorer = FakeScorer()
        scorer.gate.clear()  # the first batches stay in flight while the rest arrive
        batcher = DynamicBatcher(scorer, max_size=8, max_inflight=1)
        batcher.start()
        tasks = [asyncio.create_task(batcher.submit(r)) for r in _ids(20)]
        await asyncio.sleep(0.01)
        scorer.gate.set()
        outcomes = await asyncio.gather(*tasks)
        await batcher.close()
        assert [o.message for o in outcomes if isinstance(o, FraudserveError)] == [
            f"answer for tx{i}" for i in range(20)
        ]
        assert sum(len(b) for b in scorer.batches) == 20
        assert max(len(b) for b in scorer.batches) == 8  # capped at max_size
        assert len(scorer.batches) <= 4  # 1 alone (nothing else waited yet), then full batches

    asyncio.run(main())


def test_a_lone_request_is_not_held_back_without_a_delay() -> None:
    async def main() -> None:
        scorer = FakeScorer()
        batcher = DynamicBatcher(scorer, max_size=64, max_delay_s=0.0)
        batcher.start()
        for request in _ids(3):
            await asyncio.wait_for(batcher.submit(request), timeout=0.5)
        await batcher.close()
        assert scorer.batches == [["tx0"], ["tx1"], ["tx2"]]

    asyncio.run(main())


def test_max_delay_gathers_requests_that_arrive_within_it() -> None:
    async def main() -> None:
        scorer = FakeScorer()
        batcher = DynamicBatcher(scorer, max_size=64, max_delay_s=0.05)
        batcher.start()
        first = asyncio.create_task(batcher.submit(("a", None)))
        await asyncio.sleep(0.01)
        second = asyncio.create_task(batcher.submit(("b", None)))
        await asyncio.gather(first, second)
        await batcher.close()
        assert scorer.batches == [["a", "b"]]

    asyncio.run(main())


def test_a_failed_call_fails_every_request_of_its_batch_and_only_those() -> None:
    async def main() -> None:
        scorer = FakeScorer()
        batcher = DynamicBatcher(scorer, max_size=64, max_inflight=1)
        batcher.start()
        scorer.fail = RedisUnavailable("the online store (Redis) is unavailable; try again shortly")
        results = await asyncio.gather(*(batcher.submit(r) for r in _ids(5)), return_exceptions=True)
        assert all(isinstance(r, RedisUnavailable) for r in results)
        scorer.fail = None
        answer = await batcher.submit(("after", None))
        assert isinstance(answer, NotFound) and answer.message == "answer for after"
        await batcher.close()

    asyncio.run(main())


def test_waiting_requests_are_bounded_and_refused_with_overloaded() -> None:
    async def main() -> None:
        scorer = FakeScorer()
        scorer.gate.clear()
        batcher = DynamicBatcher(scorer, max_size=2, max_inflight=1, max_queue=3)
        batcher.start()
        tasks = [asyncio.create_task(batcher.submit(r)) for r in _ids(2)]
        await asyncio.sleep(0.01)  # the first is in flight (the only slot), the second waits; two more may wait
        waiting = [asyncio.create_task(batcher.submit(r)) for r in _ids(2)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded) as refused:
            await batcher.submit(("one too many", None))
        assert refused.value.status == 503 and refused.value.retry_after_s >= 1
        scorer.gate.set()
        assert len(await asyncio.gather(*tasks, *waiting)) == 4  # nothing waiting was lost
        await batcher.close()

    asyncio.run(main())


def test_close_answers_what_is_still_waiting() -> None:
    async def main() -> None:
        scorer = FakeScorer()
        scorer.gate.clear()
        batcher = DynamicBatcher(scorer, max_size=1, max_inflight=1)
        batcher.start()
        tasks = [asyncio.create_task(batcher.submit(r)) for r in _ids(3)]
        await asyncio.sleep(0.01)
        scorer.gate.set()
        await batcher.close()  # the loop no longer takes batches: close itself answers the two still waiting
        assert len(await asyncio.wait_for(asyncio.gather(*tasks), timeout=0.5)) == 3
        assert scorer.batches == [["tx0"], ["tx1"], ["tx2"]]

    asyncio.run(main())


# ------------------------------------------------------------------------------ the batch path's columnar decoding
def _cells(values: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lengths = np.array([len(v) for v in values], dtype=np.int64)
    starts = np.cumsum(lengths) - lengths
    return np.frombuffer(b"".join(values) + bytes(32), dtype=np.uint8), starts, lengths


def test_feast_values_decode_column_wise_as_decode_value_decodes_each() -> None:
    """Every kind of numeric ValueProto Feast or the stream writes, decoded for a whole column at once, equals
    `decode_value` per value (a boolean is 1.0, null and empty are NaN), through int64's two's complement."""
    from feast.protos.feast.types.Value_pb2 import Null, Value

    from inference_api.domain.redis_source import decode_numbers
    from pipelines.online_layout import decode_value

    protos = [Value(double_val=v) for v in (0.0, -0.0, 1.5, -2.25e-300, 1e308, math.inf, -math.inf, math.nan)]
    protos += [Value(float_val=v) for v in (0.0, 3.1415927, -1e-38)]
    protos += [Value(int64_val=v) for v in (0, 1, 127, 128, 300, -1, -(2**40), 2**53 + 1, 2**63 - 1, -(2**63))]
    protos += [Value(int32_val=v) for v in (0, 5, -7, 2**31 - 1, -(2**31))]
    protos += [Value(bool_val=True), Value(bool_val=False), Value(unix_timestamp_val=1_764_633_600)]
    protos += [Value(null_val=Null.NULL), Value()]
    raw = [p.SerializeToString() for p in protos] + [b""]
    buf, starts, lengths = _cells(raw)
    values, odd = decode_numbers(buf, starts, lengths)
    assert not odd.any()
    for cell, got in zip(raw, values, strict=True):
        want = decode_value(cell)
        expected = np.nan if want is None else float(want)
        same_sign = math.copysign(1, got) == math.copysign(1, expected)
        assert (math.isnan(got) and math.isnan(expected)) or (got == expected and same_sign), (cell, got, want)
    text, _, _ = _cells([Value(string_val="m_1").SerializeToString()])
    assert decode_numbers(text, np.array([0]), np.array([5]))[1].all()  # not a number: left to decode_value


def test_feast_timestamps_decode_column_wise_as_decode_ts_decodes_each() -> None:
    from google.protobuf.timestamp_pb2 import Timestamp

    from inference_api.domain.redis_source import decode_stamps
    from pipelines.online_layout import decode_ts

    pairs = ((1_764_633_600, 0), (1_764_633_600, 123_000_000), (0, 5), (0, 0), (1, 999_999_999), (-5, 0))
    stamps = [Timestamp(seconds=s, nanos=n) for s, n in pairs]
    raw = [t.SerializeToString() for t in stamps] + [b""]
    buf, starts, lengths = _cells(raw)
    values, odd = decode_stamps(buf, starts, lengths)
    assert not odd.any()
    for cell, got in zip(raw, values, strict=True):
        want = decode_ts(cell)
        assert (want is None and math.isnan(got)) or got == want, (cell, got, want)


def test_single_values_and_timestamps_decode_as_feasts_decoders() -> None:
    """The single score's per-value readers (`_value`, `_stamp`) give exactly what `decode_value` and `decode_ts`
    give, type included, on every kind, on a value that has two fields (the last wins), and on broken bytes."""
    from feast.protos.feast.types.Value_pb2 import Null, Value
    from google.protobuf.timestamp_pb2 import Timestamp

    from inference_api.domain.redis_source import _stamp, _value
    from pipelines.online_layout import decode_ts, decode_value

    protos = [Value(double_val=v) for v in (0.0, -0.0, 1.5, -2.25e-300, 1e308, math.inf, -math.inf)]
    protos += [Value(int64_val=v) for v in (0, 1, 127, 128, 300, -1, -(2**40), 2**53 + 1, 2**63 - 1, -(2**63))]
    protos += [Value(string_val=v) for v in ("", "m_1", "é" * 100, "card_" + "x" * 300)]
    protos += [Value(float_val=3.5), Value(int32_val=-7), Value(bool_val=True), Value(bool_val=False)]
    protos += [Value(unix_timestamp_val=1_764_633_600), Value(null_val=Null.NULL), Value()]
    raw = [p.SerializeToString() for p in protos]
    raw += [b"", Value(double_val=2.5).SerializeToString() + Value(int64_val=3).SerializeToString()]
    for cell in raw:
        got, want = _value(cell), decode_value(cell)
        assert type(got) is type(want) and got == want, (cell, got, want)
        if isinstance(want, float):
            assert math.copysign(1, got) == math.copysign(1, want), (cell, got, want)
    nan = Value(double_val=math.nan).SerializeToString()
    assert math.isnan(_value(nan)) and math.isnan(decode_value(nan))
    pairs = ((1_764_633_600, 0), (1_764_633_600, 123_000_000), (0, 5), (0, 0), (1, 999_999_999), (-5, 0), (-5, -3))
    stamps = [Timestamp(seconds=s, nanos=n).SerializeToString() for s, n in pairs]
    for cell in [*stamps, b"", stamps[1] + stamps[0]]:
        assert _stamp(cell) == decode_ts(cell), cell
    for broken in (b"\x29\x00", b"\x20\xff", b"\x12\x05ab"):  # cut short: Feast's decoder raises, so does this
        with pytest.raises(Exception) as theirs:
            decode_value(broken)
        with pytest.raises(type(theirs.value)):
            _value(broken)


def test_batch_admission_bounds_items_in_flight_and_refuses_with_overloaded() -> None:
    from inference_api.domain.admission import Admission, BatchOverloaded

    admission = Admission(limit=512)
    with admission.admit(1000), pytest.raises(BatchOverloaded), admission.admit(1):  # 1000 > limit, but alone: in
        pass
    with admission.admit(256), admission.admit(256):
        assert admission.in_flight == 512
        with pytest.raises(Overloaded) as refused, admission.admit(256):  # the batcher's error class
            pass
        assert (refused.value.code, refused.value.status, refused.value.retry_after_s) == ("overloaded", 503, 1)
        assert refused.value.details == {"in_flight": 512, "limit": 512, "items": 256, "retry_after_s": 1}
    assert admission.in_flight == 0 and admission.refused == 2
    with pytest.raises(RuntimeError), admission.admit(10):
        raise RuntimeError("a failed batch gives its items back")
    assert admission.in_flight == 0


def test_a_busy_event_loop_does_not_count_against_the_store_budget() -> None:
    """The batch read's budget: a reply that came while other work held the loop past the deadline is still read;
    a store that does not answer while the loop is free times out at the budget; lag beyond the allowance does too."""
    import time

    from inference_api.domain.features import within_budget

    async def main() -> None:
        loop = asyncio.get_running_loop()

        async def reply_at(seconds: float) -> str:
            await asyncio.sleep(seconds)
            return "answer"

        def hog(seconds: float) -> None:  # another request's CPU work on the loop
            time.sleep(seconds)

        loop.call_later(0.01, hog, 0.3)  # busy from 10 ms to 310 ms; the reply comes at 50 ms, the budget is 100 ms
        assert await within_budget(reply_at(0.05), 0.1, loop_lag_s=2.0) == "answer"
        with pytest.raises(RedisUnavailable):  # the same without the allowance: the old behaviour
            loop.call_later(0.01, hog, 0.3)
            await within_budget(reply_at(0.05), 0.1)
        started = loop.time()
        with pytest.raises(RedisUnavailable, match="did not answer within 100 ms"):
            await within_budget(asyncio.sleep(10), 0.1, loop_lag_s=2.0)  # a free loop, a store that never answers
        assert loop.time() - started < 0.3
        started = loop.time()
        loop.call_later(0.01, hog, 0.4)
        with pytest.raises(RedisUnavailable):  # the loop lags by 0.3 s past the deadline; only 0.1 s is allowed
            await within_budget(asyncio.sleep(10), 0.1, loop_lag_s=0.1)
        assert loop.time() - started < 0.8

    asyncio.run(main())
