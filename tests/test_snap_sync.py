"""The frozen second pass of a snapshot (csrc/runner/snapshots/snap_sync.c), on real trees.

The binary is built here with ASan and UBSan from the sources. A tree with
every kind of entry an overlay upper dir holds (files, dirs, symlinks, fifos,
whiteouts = char 0/0 devices, opaque dirs = trusted.overlay.opaque xattrs) is
copied with ``cp -a`` (the first pass), then changed in every way, then synced:
the copy must equal the source again, and entries untouched since t0 must not
have been recopied.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def sync_bin(tmp_path_factory) -> Path:
    if os.geteuid() != 0:
        pytest.skip("needs root (device nodes, trusted.* xattrs)")
    out = tmp_path_factory.mktemp("bin") / "snap_sync"
    cmd = [
        "gcc", "-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror", "-Wno-missing-field-initializers",
        "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
        f"-I{ROOT}/csrc/runner", *(f"-I{d}" for d in sorted(ROOT.glob("csrc/runner/*/"))), f"-I{ROOT}/csrc/sandbox", f"-I{ROOT}/csrc/common", f"-I{ROOT}/csrc/codec",
        str(ROOT / "tests/c/snap_sync_main.c"), str(ROOT / "csrc/runner/snapshots/snap_sync.c"),
        str(ROOT / "csrc/sandbox/sl_rmrf.c"), "-o", str(out),
    ]  # fmt: skip
    subprocess.run(cmd, check=True)
    return out


def snapshot_of(tree: Path) -> dict[str, tuple]:
    """Everything a layer copy must preserve, per relative path."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames + ([""] if dirpath == str(tree) else []):
            p = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(p)
            kind = stat.S_IFMT(st.st_mode)
            data: object = None
            if stat.S_ISREG(st.st_mode):
                data = Path(p).read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                data = os.readlink(p)
            elif stat.S_ISCHR(st.st_mode):
                data = st.st_rdev
            xattrs = {}
            if not stat.S_ISLNK(st.st_mode):
                for x in sorted(os.listxattr(p, follow_symlinks=False)):
                    xattrs[x] = os.getxattr(p, x, follow_symlinks=False)
            mtime = None if stat.S_ISLNK(st.st_mode) else st.st_mtime_ns
            out[os.path.relpath(p, tree)] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, data, xattrs, mtime)
    return out


def test_sync_makes_the_copy_equal_and_skips_unchanged(sync_bin, tmp_path):
    src, dst = tmp_path / "upper", tmp_path / "layer"
    src.mkdir()
    (src / "keep").write_bytes(b"unchanged\n")
    (src / "rewrite").write_bytes(b"old\n")
    (src / "delete").write_bytes(b"bye\n")
    (src / "retype").write_bytes(b"file\n")
    (src / "dir").mkdir()
    (src / "dir" / "a").write_bytes(b"a\n")
    (src / "deep" / "er").mkdir(parents=True)
    (src / "deep" / "er" / "f").write_bytes(b"deep\n")
    (src / "deep" / "er" / "same").write_bytes(b"same\n")
    os.symlink("keep", src / "link")
    os.mknod(src / "whiteout", stat.S_IFCHR | 0o000, os.makedev(0, 0))
    os.mkfifo(src / "fifo")
    (src / "opaque").mkdir()
    os.setxattr(src / "opaque", "trusted.overlay.opaque", b"y")
    os.setxattr(src / "keep", "user.tag", b"1")
    os.setxattr(src / "rewrite", "user.gone", b"1")
    os.chown(src / "deep", 1234, 5678)
    time.sleep(1.1)
    t0 = int(time.time())
    subprocess.run(["cp", "-a", "--", str(src), str(dst)], check=True)
    assert snapshot_of(src) == snapshot_of(dst)
    ino_keep = os.lstat(dst / "keep").st_ino
    ino_same = os.lstat(dst / "deep" / "er" / "same").st_ino

    # Every kind of change the sandbox can make between the passes.
    (src / "rewrite").write_bytes(b"new contents\n")
    os.chmod(src / "rewrite", 0o600)
    os.removexattr(src / "rewrite", "user.gone")
    (src / "delete").unlink()
    (src / "retype").unlink()
    (src / "retype").mkdir()
    (src / "retype" / "inside").write_bytes(b"in\n")
    (src / "dir").rename(src / "moved")
    (src / "created").write_bytes(b"c\n")
    (src / "deep" / "er" / "f").write_bytes(b"deeper\n")
    os.unlink(src / "link")
    os.symlink("moved/a", src / "link")
    os.unlink(src / "whiteout")
    os.mknod(src / "whiteout2", stat.S_IFCHR | 0o000, os.makedev(0, 0))
    os.removexattr(src / "opaque", "trusted.overlay.opaque")
    os.setxattr(src / "moved", "trusted.overlay.opaque", b"y")
    (src / "newdir" / "sub").mkdir(parents=True)
    (src / "newdir" / "sub" / "x").write_bytes(b"x" * 100000)
    os.chown(src / "created", 42, 43)
    os.chmod(src / "created", 0o4755)

    r = subprocess.run([str(sync_bin), str(src), str(dst), str(t0)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert snapshot_of(src) == snapshot_of(dst)
    # Untouched since t0: not recopied (the point of the frozen pass being short).
    assert os.lstat(dst / "keep").st_ino == ino_keep
    assert os.lstat(dst / "deep" / "er" / "same").st_ino == ino_same


def test_sync_into_empty_copy_and_errors(sync_bin, tmp_path):
    src = tmp_path / "upper"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "c").write_bytes(b"c")
    os.mknod(src / "a" / "wh", stat.S_IFCHR, os.makedev(0, 0))
    dst = tmp_path / "copy"
    r = subprocess.run([str(sync_bin), str(src), str(dst), "0"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert snapshot_of(src) == snapshot_of(dst)
    r = subprocess.run([str(sync_bin), str(tmp_path / "missing"), str(dst), "0"], capture_output=True, text=True)
    assert r.returncode == 1 and "missing" in r.stderr and "No such file" in r.stderr
    shutil.rmtree(dst)

