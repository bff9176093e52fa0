"""LatestValue: newest-value fan-out with skipped intermediates and bounded memory."""

from __future__ import annotations

import trio
import trio.testing

from miningproxy.latest import LatestValue


async def test_empty_then_publish():
    latest: LatestValue[int] = LatestValue()
    assert latest.current is None and latest.version == 0
    latest.publish(5)
    assert latest.current == 5 and latest.version == 1
    latest.publish(6)
    assert latest.current == 6 and latest.version == 2


async def test_subscribe_yields_current_first_then_new_values():
    latest: LatestValue[str] = LatestValue()
    latest.publish("a")
    seen: list[str] = []

    async def consume():
        async for v in latest.subscribe():
            seen.append(v)
            if v == "c":
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        await trio.testing.wait_all_tasks_blocked()
        assert seen == ["a"]
        latest.publish("b")
        await trio.testing.wait_all_tasks_blocked()
        latest.publish("c")
    assert seen == ["a", "b", "c"]


async def test_subscribe_before_any_value_waits():
    latest: LatestValue[int] = LatestValue()
    got: list[int] = []

    async def consume():
        async for v in latest.subscribe():
            got.append(v)
            return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        latest.publish(0)  # a falsy value is still a value
    assert got == [0]


async def test_slow_subscriber_sees_only_the_latest(autojump_clock):
    latest: LatestValue[int] = LatestValue()
    fast: list[int] = []
    slow: list[int] = []

    async def consume(out: list[int], delay: float):
        async for v in latest.subscribe():
            out.append(v)
            if v == 99:
                return
            await trio.sleep(delay)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume, fast, 0)
        nursery.start_soon(consume, slow, 10)
        for i in range(100):
            latest.publish(i)
            await trio.sleep(1)  # the fast one keeps up; the slow one sleeps through 10 publishes
    assert fast == list(range(100))
    assert slow[-1] == 99
    assert len(slow) <= 11  # one every 10 s, never a backlog
    assert slow == sorted(set(slow))  # newest-first means strictly increasing, no repeats


async def test_many_subscribers_and_version_counter():
    latest: LatestValue[int] = LatestValue()
    results: list[list[int]] = [[] for _ in range(50)]

    async def consume(out: list[int]):
        async for v in latest.subscribe():
            out.append(v)
            if v == 3:
                return

    async with trio.open_nursery() as nursery:
        for out in results:
            nursery.start_soon(consume, out)
        await trio.testing.wait_all_tasks_blocked()
        for i in range(4):
            latest.publish(i)
            await trio.testing.wait_all_tasks_blocked()
    assert all(out == [0, 1, 2, 3] for out in results)
    assert latest.version == 4


async def test_burst_between_waits_is_collapsed():
    latest: LatestValue[int] = LatestValue()
    sub = latest.subscribe()
    for i in range(1000):
        latest.publish(i)
    assert await sub.__anext__() == 999
    with trio.move_on_after(0.01) as scope:
        await sub.__anext__()
    assert scope.cancelled_caught  # nothing newer


async def test_wait_newer_returns_version_and_value():
    latest: LatestValue[str] = LatestValue()
    latest.publish("x")
    assert await latest.wait_newer(0) == (1, "x")
    async with trio.open_nursery() as nursery:
        result = []

        async def waiter():
            result.append(await latest.wait_newer(1))

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        latest.publish("y")
    assert result == [(2, "y")]


async def test_cancelled_subscriber_leaves_nothing_behind():
    latest: LatestValue[int] = LatestValue()
    with trio.move_on_after(0.01):
        async for _ in latest.subscribe():
            pass
    latest.publish(1)  # no waiter left to wake; nothing raises
    assert latest.current == 1
