"""GPUs handed to sandboxes (csrc/runner/sandboxes/gpu.c, ``resources.gpu``).

This machine has no GPU. The runner is given *stand-in devices*: character
device nodes the test makes with ``mknod`` (major 1, minor 5: what /dev/zero
is), so every step the runner takes for a real ``/dev/nvidia0`` is taken:
the node is checked to be a character device, held by one sandbox at a
time, bound into that sandbox's ``/dev`` path without ``nodev`` (reading it
returns the device's bytes), and absent from every other sandbox. What is not
tried here is a CUDA program on a real GPU (driver libraries, the vendor's
control nodes).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

import sandlot
from conftest import client_env, run_cli, start_runner, stop

ZERO = os.makedev(1, 5)


def _stand_in(path: Path) -> str:
    os.mknod(path, 0o666 | 0o020000, ZERO)  # S_IFCHR
    return str(path)


@pytest.fixture(scope="module")
def gpus(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("mknod of a stand-in device needs root")
    base = tmp_path_factory.mktemp("gpu")
    devdir = base / "dev"
    devdir.mkdir()
    devs = [_stand_in(devdir / f"nv{i}") for i in range(2)]
    (base / "r").mkdir()
    r = start_runner(base / "r", ["--gpu", f"{devs[0]}=T4", "--gpu", f"{devs[1]}=T4"])
    sess = sandlot.Session(r.url)
    sess.runner = r  # for the CLI test
    try:
        yield sess, devs
    finally:
        sess.close()
        stop(r)


def _sees(sb: sandlot.Sandbox, path: str) -> str:
    """What the sandbox finds at ``path``: 'absent', or whether it is a
    character device and what reading 4 bytes from it gives."""
    p = sb.exec(["sh", "-c", f'test -e {path} || {{ echo absent; exit 0; }}; test -c {path} && echo chr; '
                 f'head -c 4 {path} | od -An -tx1'])
    assert p.wait() == 0, p.stderr.read()
    return " ".join(p.stdout.read().split())


def test_health_and_status_show_the_gpus(gpus):
    sess, _ = gpus
    lim = sess.health()["limits"]
    assert lim["gpu"] is True
    assert lim["gpus"] == {"total": 2, "free": 2, "types": ["T4"]}
    out = run_cli(["runner", "status"], client_env(sess.runner))
    assert "gpus:      2 of 2 free (T4)" in out.stdout, out.stdout + out.stderr


def test_a_sandbox_gets_the_gpus_it_asked_for_and_only_those(gpus):
    sess, devs = gpus
    a = sandlot.Sandbox.create(session=sess, resources={"gpu": 1})
    b = sandlot.Sandbox.create(session=sess, resources={"gpu": "T4"})
    plain = sandlot.Sandbox.create(session=sess)
    try:
        assert a.info().resources == {"gpu": 1}
        assert b.info().resources == {"gpu": "T4:1"}
        seen_a = {d: _sees(a, d) for d in devs}
        seen_b = {d: _sees(b, d) for d in devs}
        # Each holds one device, a different one, readable inside (no nodev).
        assert sorted(seen_a.values()) == ["absent", "chr 00 00 00 00"], seen_a
        held_a = [d for d, s in seen_a.items() if s != "absent"]
        held_b = [d for d, s in seen_b.items() if s != "absent"]
        assert len(held_a) == 1 and len(held_b) == 1 and held_a != held_b
        # A sandbox that asked for none has no node and cannot make one.
        assert all(_sees(plain, d) == "absent" for d in devs)
        p = plain.exec(["sh", "-c", "mknod /tmp/g c 1 5 && head -c 1 /tmp/g"])
        assert p.wait() != 0
        assert sess.health()["limits"]["gpus"]["free"] == 0
        # Both held: the next one does not fit, and says why.
        with pytest.raises(sandlot.PlacementError, match="no free GPU: 1 asked, 0 of 2"):
            sandlot.Sandbox.create(session=sess, resources={"gpu": 1})
        a.terminate()
        a.wait(timeout=30)
        # Freed when the holder ends: a new sandbox gets that device.
        c = sandlot.Sandbox.create(session=sess, resources={"gpu": 1})
        try:
            assert [d for d in devs if _sees(c, d) != "absent"] == held_a
        finally:
            c.terminate()
    finally:
        for sb in (a, b, plain):
            sb.terminate()


def test_type_and_count_spellings(gpus):
    sess, devs = gpus
    both = sandlot.Sandbox.create(session=sess, resources={"gpu": "T4:2"})
    try:
        assert all(_sees(both, d) != "absent" for d in devs)
    finally:
        both.terminate()
    with pytest.raises(sandlot.InvalidArgumentError, match="no GPU of type 'A100'"):
        sandlot.Sandbox.create(session=sess, resources={"gpu": "A100"})
    with pytest.raises(sandlot.InvalidArgumentError, match="3 asked, this runner has 2"):
        sandlot.Sandbox.create(session=sess, resources={"gpu": 3})
    for bad in ("T4:x", "T4:0", ":2", "a b"):
        with pytest.raises(ValueError, match="resources.gpu"):
            sandlot.Sandbox.create(session=sess, resources={"gpu": bad})
    with pytest.raises(sandlot.InvalidArgumentError, match="bad count"):
        sess.request("POST", "/v1/sandboxes", {"cmd": None, "resources": {"gpu": "T4:-1"}}).result()
    assert sess.health()["limits"]["gpus"]["free"] == 2  # nothing held by the refused creates


def test_function_workers_hold_a_gpu_each(gpus):
    sess, devs = gpus

    def which(paths):
        import os as o

        return [p for p in paths if o.path.exists(p)]

    f = sandlot.function(which, session=sess, resources={"gpu": 1}, max_workers=1)
    try:
        held = f.remote(devs).result(timeout=120)
        assert len(held) == 1 and held[0] in devs
    finally:
        f.delete()


def test_a_runner_without_gpus_refuses_the_request(session):
    with pytest.raises(sandlot.InvalidArgumentError, match="this runner has no GPU"):
        sandlot.Sandbox.create(session=session, resources={"gpu": 1})
    assert session.health()["limits"]["gpus"]["total"] == 0


def test_a_bad_gpu_device_stops_the_runner_at_start(tmp_path):
    not_a_device = tmp_path / "nvidia0"
    not_a_device.write_text("")
    from conftest import runner_binary

    out = subprocess.run([runner_binary(), "--socket", str(tmp_path / "s"), "--state-dir", str(tmp_path / "st"),
                          "--gpu", str(not_a_device)], capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert "not a character device" in out.stderr
