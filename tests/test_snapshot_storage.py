"""How snapshot layers are stored: EROFS image files, or directory copies.

A runner stores new snapshots as one EROFS image each where the host can
mount an erofs image file (``--snapshot-storage auto``, the default), and as
directory copies otherwise or with ``--snapshot-storage dir``. These tests run
real runners of both kinds: every kind of entry an overlay upper dir holds
comes back identical from either; a host whose mkfs.erofs does not work falls
back to copies (auto) or refuses to start (erofs); old copies and new images
stack on each other; image mounts are made at the first restore, dropped at
delete and stop, and swept after a runner that died with them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import msgpack
import pytest

import sandlot
from sandlot import Sandbox, SandboxSnapshot

from conftest import Runner, start_runner, stop

EROFS_OK = shutil.which("mkfs.erofs") is not None and "erofs" in Path("/proc/filesystems").read_text()
needs_erofs = pytest.mark.skipif(not EROFS_OK, reason="no mkfs.erofs or no erofs in this kernel")

# Writes one of every kind of entry under /srv/t, a whiteout (a deleted image
# file) and an opaque dir (an image dir removed and made again).
MAKE = r"""
import os
os.makedirs("/srv/t/deep/er/still", exist_ok=True)
with open("/srv/t/file", "w") as f:
    f.write("payload\n")
os.chown("/srv/t/file", 1234, 5678)
os.chmod("/srv/t/file", 0o4751)
os.setxattr("/srv/t/file", "user.sandlot", b"kept")
os.link("/srv/t/file", "/srv/t/hardlink")
os.utime("/srv/t/file", ns=(978307200_123456789, 978307200_123456789))
os.symlink("../nowhere", "/srv/t/symlink")
os.mkfifo("/srv/t/fifo", 0o620)
open("/srv/t/empty", "w").close()
with open("/srv/t/deep/er/still/big", "wb") as f:
    f.write(bytes(range(256)) * 12289)
os.mkdir("/srv/t/private", 0o700)
os.chown("/srv/t/private", 4321, 4321)
os.remove("/etc/debian_version")
import shutil
shutil.rmtree("/usr/share/common-licenses")
os.mkdir("/usr/share/common-licenses")
open("/usr/share/common-licenses/only", "w").close()
"""

# Prints what MAKE made, as the sandbox sees it.
DUMP = r"""
import hashlib, json, os, stat
out = {}
for dirpath, dirs, files in os.walk("/srv/t"):
    for name in sorted(dirs + files):
        p = os.path.join(dirpath, name)
        st = os.lstat(p)
        e = {"mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid, "mtime_ns": st.st_mtime_ns,
             "xattrs": {k: os.getxattr(p, k, follow_symlinks=False).hex()
                        for k in sorted(os.listxattr(p, follow_symlinks=False)) if k.startswith("user.")}}
        if stat.S_ISREG(st.st_mode):
            e["nlink"] = st.st_nlink
            e["sha"] = hashlib.sha256(open(p, "rb").read()).hexdigest()
        if stat.S_ISLNK(st.st_mode):
            e["target"] = os.readlink(p)
        out[p] = e
out["hardlinked"] = os.stat("/srv/t/file").st_ino == os.stat("/srv/t/hardlink").st_ino
out["whiteout"] = not os.path.exists("/etc/debian_version")
out["opaque"] = sorted(os.listdir("/usr/share/common-licenses"))
print(json.dumps(out, sort_keys=True))
"""


def py(sb: Sandbox, code: str) -> str:
    p = sb.exec(["python3", "-c", code])
    code_ = p.wait()
    out, err = p.stdout.read(), p.stderr.read()
    assert code_ == 0, err
    return out


def sh(sb: Sandbox, script: str) -> str:
    p = sb.exec(["sh", "-c", script])
    assert p.wait() == 0, p.stderr.read()
    return p.stdout.read()


def mnt_of(r: Runner, snap: SandboxSnapshot) -> Path:
    return r.state_dir / "snapshots" / snap.snapshot_id / "mnt"


def fresh_base(tag: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"sl-snapstore-{tag}-"))


@contextmanager
def running(base: Path, extra: list[str] | None = None, env: dict[str, str] | None = None):
    """A runner on base's state and a session to it, stopped at the end."""
    r = start_runner(base, extra, env=env)
    s = sandlot.Session(r.url)
    try:
        yield r, s
    finally:
        s.close()
        stop(r)


@pytest.fixture(scope="module")
def runners() -> Iterator[dict[str, tuple[Runner, sandlot.Session]]]:
    kinds = ["dir"] + (["erofs"] if EROFS_OK else [])
    out: dict[str, tuple[Runner, sandlot.Session]] = {}
    try:
        for kind in kinds:
            r = start_runner(fresh_base(kind), ["--snapshot-storage", kind])
            out[kind] = (r, sandlot.Session(r.url))
        yield out
    finally:
        for r, s in out.values():
            s.close()
            stop(r)
            subprocess.run(["rm", "-rf", str(r.dir)], check=False)


@pytest.mark.parametrize("storage", ["erofs", "dir"])
def test_every_kind_of_entry_survives(runners, storage):
    if storage not in runners:
        pytest.skip("no erofs on this host")
    r, s = runners[storage]
    with Sandbox.create(timeout=60, session=s) as sb:
        py(sb, MAKE)
        want = json.loads(py(sb, DUMP))
        # Let the tree settle for a tick, so the copy path's frozen pass has
        # nothing to recopy (a recopied hard link would become two files).
        time.sleep(0.05)
        snap = sb.snapshot()
    assert snap.storage == storage and snap.kind == "filesystem"
    assert want["hardlinked"] and want["whiteout"] and want["opaque"] == ["only"]
    assert want["/srv/t/file"]["xattrs"] == {"user.sandlot": b"kept".hex()}
    with Sandbox.create(snapshot=snap, timeout=60, session=s) as sb:
        got = json.loads(py(sb, DUMP))
    assert got == want
    snap.delete()


@needs_erofs
def test_broken_mkfs_erofs_falls_back_to_copies(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "mkfs.erofs").write_text("#!/bin/sh\necho 'no erofs here' >&2\nexit 1\n")
    (fake / "mkfs.erofs").chmod(0o755)
    env = {"PATH": f"{fake}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    base = fresh_base("fallback")
    try:
        # Asked for erofs explicitly: refuse to start rather than be slow.
        with pytest.raises(RuntimeError, match="not usable on this host"):
            start_runner(base, ["--snapshot-storage", "erofs"], env=env)
        with running(base, env=env) as (r, s):
            assert "stored as directory copies" in r.log_tail(200)
            with Sandbox.create(timeout=60, session=s) as sb:
                sh(sb, "echo kept > /srv/kept")
                snap = sb.snapshot()
            assert snap.storage == "dir"
            assert (r.state_dir / "snapshots" / snap.snapshot_id / "layer").is_dir()
            with Sandbox.create(snapshot=snap, timeout=60, session=s) as sb:
                assert sh(sb, "cat /srv/kept") == "kept\n"
            snap.delete()
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


@needs_erofs
def test_copies_and_images_stack_across_runner_restarts():
    """A copy taken by an older (or erofs-less) runner restores under an erofs
    runner, and an image taken on top of it stacks on it. The copy's meta is
    rewritten without "storage", as runners before that field wrote it."""
    base = fresh_base("stack")
    try:
        with running(base, ["--snapshot-storage", "dir"]) as (r, s):
            with Sandbox.create(timeout=60, session=s) as sb:
                sh(sb, "echo one > /srv/one && echo doomed > /srv/doomed")
                parent = sb.snapshot()
        assert parent.storage == "dir"
        meta = base / "state" / "snapshots" / parent.snapshot_id / "meta"
        m = msgpack.unpackb(meta.read_bytes())
        del m["storage"]
        meta.write_bytes(msgpack.packb(m))
        with running(base) as (r, s):
            assert SandboxSnapshot.lookup(parent.snapshot_id, session=s).storage == "dir"
            with Sandbox.create(snapshot=parent, timeout=60, session=s) as sb:
                sh(sb, "echo two > /srv/two && rm /srv/doomed")
                child = sb.snapshot()
            assert child.storage == "erofs" and child.parent == parent.snapshot_id
            with Sandbox.create(snapshot=child, timeout=60, session=s) as sb:
                assert sh(sb, "cat /srv/one /srv/two; ls /srv/doomed 2>&1 || true").startswith("one\ntwo\n")
                assert "No such file" in sh(sb, "ls /srv/doomed 2>&1 || true")
            with pytest.raises(sandlot.SandboxNotRunningError, match="parent"):
                SandboxSnapshot.lookup(parent.snapshot_id, session=s).delete()
            SandboxSnapshot.lookup(child.snapshot_id, session=s).delete()
            SandboxSnapshot.lookup(parent.snapshot_id, session=s).delete()
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


@needs_erofs
def test_image_mounts_follow_restores_deletes_stops_and_crashes():
    base = fresh_base("mounts")
    try:
        with running(base) as (r, s):
            with Sandbox.create(timeout=60, session=s) as sb:
                sh(sb, "echo a > /srv/a")
                doomed = sb.snapshot()
                kept = sb.snapshot()
            assert (r.state_dir / "snapshots" / kept.snapshot_id / "layer.erofs").is_file()
            assert not os.path.ismount(mnt_of(r, kept))  # mounted at first use only
            boxes = [Sandbox.create(snapshot=doomed, timeout=60, session=s) for _ in range(3)]
            assert os.path.ismount(mnt_of(r, doomed))
            for i, b in enumerate(boxes):  # one mount, many isolated sandboxes
                sh(b, f"echo {i} > /srv/a")
            assert [sh(b, "cat /srv/a") for b in boxes] == ["0\n", "1\n", "2\n"]
            for b in boxes:
                b.terminate()
            doomed.delete()
            assert not os.path.ismount(mnt_of(r, doomed))
            assert not (r.state_dir / "snapshots" / doomed.snapshot_id).exists()
            with Sandbox.create(snapshot=kept, timeout=60, session=s) as sb:
                assert os.path.ismount(mnt_of(r, kept))
        assert not os.path.ismount(mnt_of(r, kept))  # a clean stop drops it

        # A runner killed with its image mounted: the next one detaches the
        # leftover at start and mounts again at the next restore.
        r = start_runner(base)
        s = sandlot.Session(r.url)
        with Sandbox.create(snapshot=kept, timeout=60, session=s) as sb:
            assert sh(sb, "cat /srv/a") == "a\n"
        s.close()
        assert os.path.ismount(mnt_of(r, kept))
        r.proc.send_signal(signal.SIGKILL)
        r.proc.wait()
        assert os.path.ismount(mnt_of(r, kept))
        with running(base) as (r, s):
            assert not os.path.ismount(mnt_of(r, kept))
            with Sandbox.create(snapshot=kept, timeout=60, session=s) as sb:
                assert sh(sb, "cat /srv/a") == "a\n"
            SandboxSnapshot.lookup(kept.snapshot_id, session=s).delete()
            assert not os.path.ismount(mnt_of(r, kept))
    finally:
        # Whatever a failed assertion left mounted.
        for m in base.glob("state/snapshots/*/mnt"):
            subprocess.run(["umount", "-l", str(m)], check=False, capture_output=True)
        subprocess.run(["rm", "-rf", str(base)], check=False)


@needs_erofs
def test_sparse_tree_is_stored_as_a_copy(runners):
    """mkfs.erofs would write a sparse file's holes out as zeros; such a tree
    is stored as a copy, which keeps it sparse."""
    r, s = runners["erofs"]
    with Sandbox.create(timeout=60, session=s) as sb:
        sh(sb, "mkdir -p /srv/db && truncate -s 1G /srv/db/prealloc && echo tail >> /srv/db/prealloc")
        snap = sb.snapshot()
    assert snap.storage == "dir"
    assert f"snapshot {snap.snapshot_id} of" in r.log_tail(50) and "holes in sparse files" in r.log_tail(50)
    with Sandbox.create(snapshot=snap, timeout=60, session=s) as sb:
        size, blocks = sh(sb, "stat -c '%s %b' /srv/db/prealloc; tail -c 5 /srv/db/prealloc").split()[:2]
        assert int(size) == (1 << 30) + 5 and int(blocks) * 512 < 1 << 20
        assert sh(sb, "tail -c 5 /srv/db/prealloc") == "tail\n"
    snap.delete()
