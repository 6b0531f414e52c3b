"""Build the microVM guest: kernel, initramfs and host-root image, once.

The microVM tier (``Sandbox.create(..., isolation="microvm")``) boots a Debian
kernel under QEMU's ``microvm`` machine. Everything the guest needs comes from
Debian packages and this machine, nothing else is downloaded:

* ``vmlinuz``: from ``linux-image-amd64``, fetched with ``apt-get download``
  and unpacked with ``dpkg-deb -x`` (the package is never installed).
* ``initrd.img``: a newc cpio written here, holding ``sandlot-vminit`` (the
  guest's pid 1, static) and the kernel modules it loads in order: Debian
  builds virtio, virtio_mmio, virtio_blk, virtio_console, erofs and overlay as
  modules, not into the kernel.
* ``hostroot.erofs``: the host's root filesystem as a read-only EROFS image,
  the guest's default image (what ``image=None`` means in a container). It
  leaves out what a sandbox must not see or does not need: /root, /home,
  /tmp, /run, /proc, /sys, /dev, shadow files and private keys, the runner
  state, and big trees no sandbox uses (``EXCLUDE`` below). Built once;
  rebuilt with ``--force``.

The result lives in :func:`guest_dir` (``/var/cache/sandlot/microvm`` for
root, else ``~/.cache/sandlot/microvm``; ``$SANDLOT_MICROVM_DIR`` overrides),
where the runner looks for it. ``./dev build`` runs this module.

Example:
    >>> from sandlot._vmguest import guest_dir
    >>> guest_dir().name
    'microvm'

Command line: ``python -m sandlot._vmguest [--force] [--dir DIR]``.
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["guest_dir", "build", "MODULES"]

log = logging.getLogger("sandlot")

#: Modules the guest loads, in dependency order (paths under kernel/).
MODULES = [
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_mmio.ko",
    "drivers/block/virtio_blk.ko",
    "drivers/char/virtio_console.ko",
    "crypto/crc32c_generic.ko",
    "lib/libcrc32c.ko",
    "fs/erofs/erofs.ko",
    "fs/overlayfs/overlay.ko",
]

#: Paths (regular expressions on the path relative to /) left out of the
#: host-root image.
EXCLUDE = [
    r"^(proc|sys|dev|tmp|run|work|farm|root|home|mnt|media|old_root|boot|lost\+found|srv|opt)(/|$)",
    r"^var/(cache|lib/apt|lib/dpkg|log|tmp|lib/docker|lib/sandlot)(/|$)",
    r"^(container_info\.json|\.dockerenv|pyenv-installer)$",
    r"^usr/(include|src|local|share/(doc|man|info|locale|fonts|icons|gtk-doc|help|javascript|X11|mime|perl))(/|$)",
    r"^usr/lib/(google-cloud-sdk|jvm|llvm-[0-9]+|postgresql|gcc|x86_64-linux-gnu/(dri|gallium-pipe|libLLVM|libicudata|vdpau|perl))",
    r"^etc/(shadow|gshadow|shadow-|gshadow-|ssl/private|security/opasswd)(/|$)",
    r"^etc/ssh/.*_key$",
]


def guest_dir() -> Path:
    """Where the guest files live (the runner's ``--microvm-dir`` default).

    Example:
        >>> str(guest_dir()).endswith("microvm")
        True
    """
    env = os.environ.get("SANDLOT_MICROVM_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/cache/sandlot/microvm")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sandlot" / "microvm"


def _vminit_binary() -> Path:
    p = Path(__file__).resolve().parent / "_bin" / "sandlot-vminit"
    if not p.exists():
        raise FileNotFoundError(f"{p} is missing: build sandlot first (./dev build or pip install .)")
    return p


def _cpio_newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive of (name, mode, data) entries; directories have no data."""
    out = bytearray()
    ino = 1
    for name, mode, data in entries + [("TRAILER!!!", 0, b"")]:
        nb = name.encode() + b"\0"
        hdr = "070701" + "".join(
            f"{v:08X}"
            for v in (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0)
        )
        out += hdr.encode() + nb
        out += b"\0" * (-len(out) % 4)
        out += data
        out += b"\0" * (-len(out) % 4)
        ino += 1
    return bytes(out)


def _fetch_kernel(dest: Path) -> Path:
    """Unpack linux-image-amd64's kernel and modules under dest/kernel-pkg; the kernel path."""
    pkg_dir = dest / "kernel-pkg"
    found = glob.glob(str(pkg_dir / "boot" / "vmlinuz-*"))
    if found:
        return Path(found[0])
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        dep = subprocess.run(["apt-cache", "depends", "linux-image-amd64"], capture_output=True, text=True, check=True)
        names = [ln.split(":", 1)[1].strip() for ln in dep.stdout.splitlines() if ln.strip().startswith("Depends: linux-image-")]
        if not names:
            raise RuntimeError("apt-cache depends linux-image-amd64 names no kernel package (is apt's list current? apt-get update)")
        os.chmod(tmp, 0o755)  # apt's _apt user writes the download here
        subprocess.run(["apt-get", "download", "-q", names[0]], cwd=tmp, check=True, capture_output=True)
        debs = glob.glob(os.path.join(tmp, "*.deb"))
        stage = Path(tmp) / "x"
        subprocess.run(["dpkg-deb", "-x", debs[0], str(stage)], check=True)
        shutil.rmtree(pkg_dir, ignore_errors=True)
        shutil.move(str(stage), str(pkg_dir))
    return Path(glob.glob(str(pkg_dir / "boot" / "vmlinuz-*"))[0])


def _extract_vmlinux(bzimage: Path, out: Path) -> None:
    """Write the uncompressed ELF kernel inside a bzImage (what scripts/extract-vmlinux does).

    QEMU boots it directly through its PVH entry point (Debian sets
    CONFIG_PVH), skipping the bzImage's self-decompression: under TCG that
    stage alone took ~8.5 s of a ~11 s boot (XZ decoding, emulated).
    """
    import gzip
    import io
    import lzma

    data = bzimage.read_bytes()
    i = data.find(b"\xfd7zXZ\x00")
    if i >= 0:
        raw = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[i:])
    else:
        i = data.find(b"\x1f\x8b\x08")
        if i < 0:
            raise RuntimeError(f"{bzimage}: no XZ or gzip payload found")
        raw = gzip.GzipFile(fileobj=io.BytesIO(data[i:])).read()
    if raw[:4] != b"\x7fELF":
        raise RuntimeError(f"{bzimage}: the payload is not an ELF kernel")
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(raw)
    tmp.replace(out)


def _build_initrd(dest: Path) -> None:
    mods = glob.glob(str(dest / "kernel-pkg" / "lib" / "modules" / "*" / "kernel"))
    if not mods:
        raise RuntimeError(f"no kernel modules under {dest}/kernel-pkg")
    entries: list[tuple[str, int, bytes]] = [(d, 0o40755, b"") for d in ("dev", "proc", "sys", "lib", "lib/modules")]
    order = []
    for rel in MODULES:
        data = Path(mods[0], rel).read_bytes()
        name = "lib/modules/" + os.path.basename(rel)
        entries.append((name, 0o100644, data))
        order.append("/" + name)
    entries.append(("modules.order", 0o100644, ("\n".join(order) + "\n").encode()))
    entries.append(("init", 0o100755, _vminit_binary().read_bytes()))
    tmp = dest / "initrd.img.tmp"
    tmp.write_bytes(_cpio_newc(entries))
    tmp.replace(dest / "initrd.img")


def _build_hostroot(dest: Path) -> None:
    args = ["mkfs.erofs", "--quiet", "-x-1", "--all-root"]
    args += [f"--exclude-regex={r}" for r in EXCLUDE]
    tmp = dest / "hostroot.erofs.tmp"
    subprocess.run(args + [str(tmp), "/"], check=True)
    tmp.replace(dest / "hostroot.erofs")


def build(dest: Path | None = None, force: bool = False) -> Path:
    """Make sure the guest files exist in dest (default :func:`guest_dir`); returns dest.

    The kernel and host-root image are built once (``force`` rebuilds them);
    the initramfs is rewritten every time (a second, so a rebuilt
    ``sandlot-vminit`` is always the one that boots).

    Example:
        >>> build()  # doctest: +SKIP
        PosixPath('/var/cache/sandlot/microvm')
    """
    dest = Path(dest) if dest is not None else guest_dir()
    dest.mkdir(parents=True, exist_ok=True)
    if force:
        for p in ("kernel-pkg", "hostroot.erofs", "vmlinuz", "vmlinux"):
            q = dest / p
            shutil.rmtree(q, ignore_errors=True) if q.is_dir() else q.unlink(missing_ok=True)
    kernel = _fetch_kernel(dest)
    link = dest / "vmlinuz"
    if not link.exists():
        shutil.copyfile(kernel, link)
    if not (dest / "vmlinux").exists():
        try:
            _extract_vmlinux(link, dest / "vmlinux")
        except (RuntimeError, OSError, EOFError) as exc:  # the runner falls back to vmlinuz
            log.warning("cannot extract vmlinux (%s): microVMs boot the compressed kernel", exc)
    _build_initrd(dest)
    if not (dest / "hostroot.erofs").exists():
        log.info("building the microVM host-root image %s (once, ~15 s)", dest / "hostroot.erofs")
        _build_hostroot(dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sandlot._vmguest", description=__doc__.split("\n")[0])
    ap.add_argument("--dir", type=Path, default=None, help="where to build (default: %(default)s -> guest_dir())")
    ap.add_argument("--force", action="store_true", help="rebuild the kernel and host-root image too")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(build(a.dir, a.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())
