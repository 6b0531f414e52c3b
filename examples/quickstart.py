"""sandlot quick start: one sandbox, a few commands, files, exit codes; then
a Python function run remotely in warm sandboxes (remote, map, await).

Run it after installing sandlot (``pip install .``)::

    python examples/quickstart.py

With no configuration sandlot starts a runner for you (it keeps running in the
background; stop it with ``sandlot runner stop``). Set SANDLOT_URL to use
another runner.
"""

from __future__ import annotations

import asyncio
import logging

import sandlot
from sandlot import Sandbox


def main() -> None:
    # The sandbox's entry command: keep it alive for 2 minutes while we work in it.
    # `with` terminates it (and everything running in it) at the end of the block.
    with Sandbox.create(["sleep", "120"], env={"GREETING": "hello from the sandbox"}) as sb:
        print(f"created {sb.sandbox_id}")

        # A command as a list of arguments...
        uname = sb.exec(["uname", "-a"])
        print("uname -a  ->", uname.stdout.read().strip())

        # ...or as a shell string (run with /bin/sh -c).
        py = sb.exec("python3 -c \"import os, sys; print(os.environ['GREETING'], sys.version.split()[0])\"")
        print("python    ->", py.stdout.read().strip(), f"(exit code {py.wait()})")

        # exec calls share the sandbox's filesystem: write in one, read in another.
        sb.exec("echo 'written by one exec' > /tmp/shared.txt").wait()
        print("cat       ->", sb.exec(["cat", "/tmp/shared.txt"]).stdout.read().strip())

        # Files can also be moved in and out directly.
        sb.write_file("/tmp/script.sh", '#!/bin/sh\necho "args: $*"\nexit 3\n', mode=0o755)
        script = sb.exec(["/tmp/script.sh", "a", "b"])
        print("script    ->", script.stdout.read().strip(), f"(exit code {script.wait()})")
        print("read_file ->", sb.read_file("/tmp/shared.txt"))

        # poll() does not block; wait() does (and can time out).
        slow = sb.exec("sleep 1; echo done")
        print("poll()    ->", slow.poll(), "(still running)")
        try:
            slow.wait(timeout=0.1)
        except TimeoutError:
            print("wait(0.1) -> TimeoutError")
        print("wait()    ->", slow.wait(), "| poll() ->", slow.poll())

        # Output streams line by line while the command runs.
        ticker = sb.exec("for i in 1 2 3; do echo tick $i; sleep 0.2; done")
        for line in ticker.stdout:
            print("stream    ->", line.rstrip())

        # Errors say what went wrong.
        try:
            sb.exec(["no-such-program"])
        except sandlot.SpawnError as exc:
            print("SpawnError:", exc)

        # The sandbox's own processes only: the host is invisible.
        print(
            "ps        ->",
            " | ".join(sb.exec(["ps", "-eo", "pid,args", "--no-headers"]).stdout.read().split("\n")[:-1]),
        )

    print(f"terminated {sb.sandbox_id}; lookup now raises NotFoundError:", end=" ")
    try:
        Sandbox.lookup(sb.sandbox_id)
    except sandlot.NotFoundError:
        print("yes")

    # A sandbox whose entry command exits on its own: wait() returns its code.
    with Sandbox.create("echo bye; exit 7") as sb2:
        print("entry exit code ->", sb2.wait(), "| output ->", sb2.stdout.read().strip())

    # The same in asyncio: append .aio and await.
    async def concurrently() -> None:
        boxes = await asyncio.gather(*(Sandbox.create.aio(f"exit {i}") for i in range(3)))
        print("asyncio exit codes ->", await asyncio.gather(*(b.wait.aio() for b in boxes)))
        await asyncio.gather(*(b.terminate.aio() for b in boxes))

    asyncio.run(concurrently())
    remote_functions()


# A function to run in sandboxes. Defined in __main__, so it is shipped by value.
@sandlot.function()
def word_stats(text: str) -> dict:
    import os

    words = text.split()
    return {"words": len(words), "longest": max(words, key=len), "hostname": os.uname().nodename}


def remote_functions() -> None:
    ref = word_stats.remote("sandboxes start fast and hold nothing of yours")
    print("remote    ->", ref.result())  # the first call starts a warm worker sandbox
    refs = word_stats.map([(f"call number {i} of a map",) for i in range(5)])
    print("map       ->", [r.result()["words"] for r in refs])
    print("local     ->", word_stats.local("runs in this process")["hostname"] == __import__("os").uname().nodename)
    try:
        word_stats.remote(object()).result()
    except TypeError as exc:  # refused before anything is sent
        print("TypeError:", exc)

    async def awaited() -> None:
        print("await     ->", [r["longest"] for r in await sandlot.gather(*word_stats.map([("a bb ccc",), ("dddd e",)]))])

    asyncio.run(awaited())


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
