"""The asyncio twins: every blocking call has `.aio`, iterators work with `async for`."""

from __future__ import annotations

import asyncio
import time

import pytest
import sandlot
from sandlot import Sandbox, Secret, Volume


def arun(coro):
    return asyncio.run(coro)


def test_create_exec_wait_read_terminate(session):
    async def main():
        sb = await Sandbox.create.aio(["sleep", "60"], session=session)
        try:
            p = await sb.exec.aio(["sh", "-c", "echo out; echo err >&2; exit 2"])
            assert await p.wait.aio() == 2
            assert await p.stdout.read.aio() == "out\n"
            assert await p.stderr.read_bytes.aio() == b"err\n"
            assert await p.poll.aio() == 2
            assert await sb.poll.aio() is None
            info = await sb.info.aio()
            assert info.status == "running"
            same = await Sandbox.lookup.aio(sb.sandbox_id, session=session)
            assert same == sb
            assert sb.sandbox_id in [x.sandbox_id for x in await Sandbox.list.aio(session=session)]
        finally:
            await sb.terminate.aio()
            await sb.terminate.aio()
        with pytest.raises(sandlot.NotFoundError):
            await Sandbox.lookup.aio(sb.sandbox_id, session=session)

    arun(main())


def test_async_with_and_files(session):
    async def main():
        async with await Sandbox.create.aio(session=session) as sb:
            assert await sb.write_file.aio("/tmp/x", "async data") == 10
            assert await sb.read_file.aio("/tmp/x") == b"async data"
            p = await sb.exec.aio(["cat"])
            await p.stdin.write.aio("via stdin")
            await p.stdin.close.aio()
            assert await p.stdout.read.aio() == "via stdin"
            sid = sb.sandbox_id
        with pytest.raises(sandlot.NotFoundError):
            await Sandbox.lookup.aio(sid, session=session)

    arun(main())


def test_async_for_lines_arrive_while_running(session):
    async def main():
        async with await Sandbox.create.aio(session=session) as sb:
            code = "import time\nfor i in range(4):\n    print(i, flush=True)\n    time.sleep(0.25)\n"
            p = await sb.exec.aio(["python3", "-c", code])
            got, running_at_first = [], None
            async for line in p.stdout:
                if running_at_first is None:
                    running_at_first = (await p.poll.aio()) is None
                got.append(line)
            assert got == ["0\n", "1\n", "2\n", "3\n"]
            assert running_at_first is True
            q = await sb.exec.aio("head -c 100000 /dev/zero")
            n = 0
            async for chunk in q.stdout.iter_bytes():
                n += len(chunk)
            assert n == 100000

    arun(main())


def test_wait_timeout_and_other_tasks_keep_running(session):
    async def main():
        async with await Sandbox.create.aio(["sleep", "30"], session=session) as sb:
            ticks = 0

            async def ticker():
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.05)
                    ticks += 1

            t = asyncio.ensure_future(ticker())
            t0 = time.monotonic()
            with pytest.raises(TimeoutError):
                await sb.wait.aio(timeout=0.6)
            assert 0.5 < time.monotonic() - t0 < 5
            t.cancel()
            assert ticks >= 5  # the loop was never blocked

    arun(main())


def test_thousand_requests_in_flight(session):
    async def main():
        async with await Sandbox.create.aio(["sleep", "60"], session=session) as sb:
            t0 = time.monotonic()
            polls = await asyncio.gather(*(sb.poll.aio() for _ in range(1000)))
            assert polls == [None] * 1000
            healths = await asyncio.gather(*(session.health.aio() for _ in range(1000)))
            assert all(h["ok"] for h in healths)
            assert time.monotonic() - t0 < 60

    arun(main())


def test_many_sandboxes_concurrently(session):
    async def main():
        boxes = await asyncio.gather(*(Sandbox.create.aio(f"echo {i}; exit {i}", session=session) for i in range(10)))
        try:
            codes = await asyncio.gather(*(b.wait.aio() for b in boxes))
            outs = await asyncio.gather(*(b.stdout.read.aio() for b in boxes))
            assert codes == list(range(10))
            assert outs == [f"{i}\n" for i in range(10)]
        finally:
            await asyncio.gather(*(b.terminate.aio() for b in boxes))

    arun(main())


def test_cancelling_a_wait_leaves_the_sandbox_alone(session):
    async def main():
        async with await Sandbox.create.aio(["sleep", "30"], session=session) as sb:
            task = asyncio.ensure_future(sb.wait.aio())
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await sb.poll.aio() is None
            assert (await sb.exec.aio(["true"])).returncode is None

    arun(main())


def test_errors_and_validation_raise_on_await(session):
    async def main():
        coro = Sandbox.create.aio(timeout=-5, session=session)  # nothing happens yet
        with pytest.raises(ValueError, match="timeout"):
            await coro
        with pytest.raises(sandlot.SpawnError, match="no-such-binary-a"):
            await Sandbox.create.aio(["no-such-binary-a"], session=session)
        async with await Sandbox.create.aio(session=session) as sb:
            assert (await sb.snapshot.aio()).kind == "filesystem"  # more in test_snapshot.py
            with pytest.raises(ValueError, match="exec"):
                await sb.exec.aio([])

    arun(main())


def test_volume_and_secret_twins(session):
    async def main():
        vol = await Volume.from_name.aio("aio-vol", session=session)
        sec = Secret.from_dict({"AIO_SECRET": "v-aio"})
        async with await Sandbox.create.aio(
            'echo "$AIO_SECRET" > /data/s; cat /data/s', secrets=[sec], volumes={"/data": vol}, session=session
        ) as sb:
            assert await sb.wait.aio() == 0
            assert await sb.stdout.read.aio() == "v-aio\n"
        await vol.delete.aio()

    arun(main())
