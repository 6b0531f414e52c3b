"""The runner's pool of pre-set-up sandboxes (``sandlotd --pool``, default 2).

A default create is served by a sandbox that was set up before the request
came (namespaces, overlay root, cgroup, init waiting). What a user relies on:
such a sandbox is exactly as clean and isolated as one made on request (its
own id and hostname, an empty writable layer, nothing left of an earlier
user), the request's env, workdir and command apply, a request with options a
pooled sandbox was not made with is started afresh with them, and a mounted
host file replaced meanwhile is never shown stale. The session runner runs
with the default pool, so every other test exercises pooled sandboxes too.
"""

from __future__ import annotations

import os
import time

import pytest
from sandlot import Sandbox


def sh(sb: Sandbox, cmd: str) -> str:
    p = sb.exec(["/bin/sh", "-c", cmd])
    out = p.stdout.read()
    assert p.wait() == 0, (cmd, out, p.stderr.read())
    return out


def pool(session) -> dict:
    return session.health()["pool"]


def wait_full(session, timeout: float = 30) -> dict:
    """Until the pool holds its --pool shells again (it refills in the loop)."""
    deadline = time.monotonic() + timeout
    while True:
        p = pool(session)
        if p["shells"] >= p["size"] or time.monotonic() > deadline:
            return p
        time.sleep(0.02)


def create_pooled(session, **kw) -> Sandbox:
    """Create with kw and check the sandbox came from the pool."""
    before = wait_full(session)["taken"]
    sb = Sandbox.create(timeout=120, session=session, **kw)
    assert pool(session)["taken"] == before + 1, "this create was not served by the pool"
    return sb


@pytest.fixture
def primed(session):
    """The pool keeps shells for this client's mount set (its interpreter
    binds): one default create makes it so."""
    assert pool(session)["size"] >= 1
    Sandbox.create(timeout=60, session=session).terminate()
    return session


def test_default_creates_are_served_by_the_pool(primed):
    for _ in range(3):
        sb = create_pooled(primed)
        try:
            assert sh(sb, "echo ok").strip() == "ok"
        finally:
            sb.terminate()


def test_a_pooled_sandbox_keeps_nothing_of_an_earlier_one(primed):
    a = create_pooled(primed)
    try:
        a_host = sh(a, "hostname").strip()
        assert a_host == a.sandbox_id
        # Leave traces everywhere a later user could look.
        sh(
            a,
            "echo secret > /etc/pool-marker; echo secret > /tmp/pool-marker; "
            "echo secret > /root/pool-marker; echo secret > /dev/shm/pool-marker; "
            "echo secret > /var/tmp/pool-marker",
        )
        a.exec(["sleep", "300"])
    finally:
        a.terminate()
    b = create_pooled(primed)
    try:
        assert b.sandbox_id != a.sandbox_id
        b_host = sh(b, "hostname").strip()
        assert b_host == b.sandbox_id and b_host != a_host
        out = sh(
            b,
            "for f in /etc /tmp /root /dev/shm /var/tmp; do "
            "[ -e $f/pool-marker ] && echo found $f; done; true",
        )
        assert out == "", out
        # A fresh pid namespace: only init and this shell's own processes.
        ps = sh(b, "ps -eo args")
        assert "sleep 300" not in ps, ps
    finally:
        b.terminate()


def test_pooled_sandboxes_at_once_are_all_distinct(primed):
    boxes = []
    try:
        for _ in range(5):  # more than --pool: some come fresh, some pooled
            boxes.append(Sandbox.create(timeout=120, session=primed))
        ids = {b.sandbox_id for b in boxes}
        hosts = {sh(b, "hostname").strip() for b in boxes}
        assert len(ids) == 5 and hosts == ids
        for i, b in enumerate(boxes):
            sh(b, f"echo {i} > /tmp/me")
        for i, b in enumerate(boxes):
            assert sh(b, "cat /tmp/me").strip() == str(i)
    finally:
        for b in boxes:
            b.terminate()


def test_a_pooled_sandbox_applies_the_requests_env_workdir_and_command(primed):
    sb = create_pooled(primed, env={"POOL_VAR": "from-request"}, workdir="/tmp")
    try:
        assert sh(sb, "echo $POOL_VAR; pwd").split() == ["from-request", "/tmp"]
    finally:
        sb.terminate()
    before = wait_full(primed)["taken"]
    with Sandbox.create(["/bin/sh", "-c", "exit 7"], timeout=60, session=primed) as sb:
        assert pool(primed)["taken"] == before + 1
        assert sb.wait() == 7


def test_options_a_pooled_sandbox_lacks_start_afresh_with_them(primed):
    before = wait_full(primed)["taken"]
    with Sandbox.create(timeout=60, session=primed, resources={"pids": 64}) as sb:
        assert pool(primed)["taken"] == before
        assert dict(sb.info().resources or {}) == {"pids": 64}
        assert sh(sb, "echo ok").strip() == "ok"


def test_a_replaced_mounted_file_is_never_shown_stale(primed, tmp_path):
    f = tmp_path / "data.txt"
    f.write_text("one\n")
    mounts = {"/data/data.txt": str(f)}
    # First create with this mount set: fresh, and the pool now keeps it.
    with Sandbox.create(timeout=60, session=primed, mounted_files=mounts) as sb:
        assert sh(sb, "cat /data/data.txt") == "one\n"
    sb = create_pooled(primed, mounted_files=mounts)
    try:
        assert sh(sb, "cat /data/data.txt") == "one\n"
    finally:
        sb.terminate()
    wait_full(primed)
    # Replace the file (a new inode, as editors and atomic writers do): the
    # shells bound the old one and must not be handed out.
    new = tmp_path / "data.new"
    new.write_text("two\n")
    os.rename(new, f)
    with Sandbox.create(timeout=60, session=primed, mounted_files=mounts) as sb:
        assert sh(sb, "cat /data/data.txt") == "two\n"
