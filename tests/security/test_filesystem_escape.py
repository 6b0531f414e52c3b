"""Attacks on the host's files from inside a sandbox: reading its secrets,
writing outside the sandbox's root, overwriting the runtime's binaries
(CVE-2019-5736), a working directory outside the root (CVE-2024-21626),
symlinks under volume mount points, another sandbox's files, and the same
through the runner's file API. Every attack must fail or land inside the
sandbox, and the host must be unchanged."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

import sandlot
from sandlot import Image, Sandbox, SandboxError, Volume
from _attack import attack, file_digest, host_tmp_base, run, sh


@pytest.fixture
def host_dir():
    """A directory on the host's root filesystem (not /tmp or /var/tmp, which
    are fresh tmpfs inside), so the sandbox sees it through the overlay."""
    d = Path(tempfile.mkdtemp(prefix="sandlot-sec-", dir=host_tmp_base()))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_host_secrets_are_hidden(sandbox):
    # /etc/shadow and friends read as empty files; /root and /home are empty
    # but for the client's own interpreter, bound read-only when it lives there
    # (the host image promises the client's Python inside).
    from sandlot.function import _mounts

    allowed = {p.split("/")[2] for p in _mounts(None) if p.startswith(("/root/", "/home/"))}
    out = sh(
        sandbox,
        "for f in /etc/shadow /etc/gshadow /etc/shadow- /etc/gshadow- /etc/ssh/*_key; do "
        "test -e $f && printf '%s %s\\n' $f $(wc -c < $f); done; ls -A /root /home | grep -v ':$' | grep . ; echo END",
    )
    lines = out.splitlines()
    end = lines.index("END")
    visible = {n for n in lines[:end] if " " not in n}
    assert visible <= allowed, (visible, allowed)
    lines = [n for n in lines[:end] if " " in n] + ["0"]
    for line in lines[:-1]:
        path, size = line.split()
        assert size == "0", line
    if os.path.exists("/etc/shadow") and os.path.getsize("/etc/shadow") > 0:
        assert "/etc/shadow 0" in lines
        # Through the file API: the mask (/dev/null) is refused or empty.
        try:
            assert sandbox.read_file("/etc/shadow") == b""
        except SandboxError:
            pass
    # Root inside cannot unmask them (no mount, no umount).
    assert run(sandbox, "umount /etc/shadow || umount -l /etc/shadow")[0] != 0
    assert sh(sandbox, "cat /etc/shadow | wc -c") == "0\n"


def test_home_is_empty_but_writable(sandbox):
    sh(sandbox, "echo hi > /root/.sandlot-test && mkdir -p /home/u && echo x > /home/u/f")
    assert sandbox.read_file("/root/.sandlot-test") == b"hi\n"
    assert not os.path.exists("/root/.sandlot-test")
    assert not os.path.exists("/home/u/f")


def test_device_node_metadata_changes_never_reach_the_host(sandbox):
    # The sandbox's /dev/null & co. (and the /dev/null behind every file mask)
    # must not be the host's inodes behind a writable mount: a chmod 000
    # through one would break every program on the host. The attack sets the
    # mode and owner the nodes already have, so that even if it got through,
    # only the host's ctime would move (which is what the test looks at).
    nodes = ("null", "zero", "full", "random", "urandom", "tty")
    before = {n: os.stat(f"/dev/{n}") for n in nodes}
    targets = [f"/dev/{n}" for n in nodes] + ["/etc/shadow", "/etc/gshadow", "/proc/keys", "/proc/timer_list"]
    script = "".join(
        f"test -e {t} && {{ chmod $(stat -c %a {t}) {t}; chown $(stat -c %u:%g {t}) {t}; }}; " for t in targets
    )
    out = sh(sandbox, "{ " + script + "} 2>/dev/null; echo data > /dev/null && head -c 3 /dev/zero | wc -c")
    assert out == "3\n", out
    for n in nodes:
        after = os.stat(f"/dev/{n}")
        assert (after.st_mode, after.st_uid, after.st_gid, after.st_ctime_ns) == (
            before[n].st_mode,
            before[n].st_uid,
            before[n].st_gid,
            before[n].st_ctime_ns,
        ), n


def fresh_proc_modes(paths):
    """Mode and owner of /proc entries as a *new* proc mount shows them: the
    kernel keeps them in one object per entry, shared by every proc mount."""
    out = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "stat", "-c", "%n %a %u %g", *paths],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out


def test_global_proc_entries_keep_their_mode_and_owner(sandbox):
    # A chmod 000 /proc/meminfo inside would break the host's tools for every
    # user. The attack sets the mode and owner each entry already has, so that
    # it changes nothing even where it gets through; the shell reports it.
    paths = [p for p in ("/proc/buddyinfo", "/proc/meminfo", "/proc/slabinfo", "/proc/zoneinfo") if os.path.exists(p)]
    before = fresh_proc_modes(paths)
    script = "".join(
        f"chmod $(stat -c %a {p}) {p} 2>/dev/null && echo chmod {p}; "
        f"chown $(stat -c %u:%g {p}) {p} 2>/dev/null && echo chown {p}; "
        for p in paths
    )
    try:
        out = sh(sandbox, script + "echo through-proc-fd > /dev/stdout")
        assert out == "through-proc-fd\n", out
        assert fresh_proc_modes(paths) == before
    finally:
        for line in before.splitlines():  # only if the test failed: put the host back
            name, mode, uid, gid = line.split()
            os.chmod(name, int(mode, 8))
            os.chown(name, int(uid), int(gid))


def test_writes_outside_the_root_leave_the_host_unchanged(session, host_dir):
    victim = host_dir / "victim"
    victim.write_text("host\n")
    victim.chmod(0o644)
    before = file_digest(str(victim))
    # Created after the victim, so the victim is part of its lower layer.
    with Sandbox.create(timeout=120, session=session) as sandbox:
        _write_outside(sandbox, victim, host_dir)


def _write_outside(sandbox, victim, host_dir):
    before = file_digest(str(victim))
    tag = uuid.uuid4().hex
    script = f"""
v={victim}
echo pwned > $v; echo pwned >> $v; chmod 777 $v; ln -sf /etc/passwd $v.lnk
echo pwned > /../../../..$v.dotdot
ln -s / /tmp/hostroot; echo pwned > /tmp/hostroot{host_dir}/via-symlink
echo pwned > /proc/self/root{host_dir}/via-proc-self-root
echo pwned > /proc/1/root{host_dir}/via-proc-1-root 2>/dev/null
cd /proc/self/cwd/../../../../.. && echo pwned > ./{str(host_dir).lstrip('/')}/via-cwd
echo pwned > /etc/sandlot-{tag}
rm -f $v.gone; rm -rf {host_dir}; true
"""
    assert sh(sandbox, f"cat {victim}") == "host\n"  # visible inside
    code, out, err = run(sandbox, script)
    assert code == 0, err
    # Inside, the writes happened (in the sandbox's own upper layer)...
    assert sandbox.read_file(f"/etc/sandlot-{tag}") == b"pwned\n"
    assert run(sandbox, f"test -e {host_dir}")[0] == 1
    # ...and on the host nothing changed.
    assert victim.exists() and file_digest(str(victim)) == before
    assert sorted(os.listdir(host_dir)) == ["victim"]
    assert not os.path.exists(f"/etc/sandlot-{tag}")


def test_file_api_resolves_paths_inside_the_sandbox(sandbox, host_dir):
    tag = uuid.uuid4().hex
    # Symlinks the sandbox plants for the runner (which is root on the host).
    sh(sandbox, f"mkdir -p {host_dir} && ln -s / /up && ln -s {host_dir} /tmp/hd && ln -s /proc/self/root /pr")
    sandbox.write_file(f"/../../..{host_dir}/dotdot-{tag}", b"x")
    sandbox.write_file(f"/up/up{host_dir}/abs-link-{tag}", b"x")
    sandbox.write_file(f"/tmp/hd/link-{tag}", b"x")
    try:
        sandbox.write_file(f"/pr{host_dir}/magic-{tag}", b"x")
    except SandboxError:
        pass  # refused: fine
    assert os.listdir(host_dir) == []
    # Reads likewise: the host's /etc/shadow is not behind any of these.
    for path in ("/up/etc/shadow", "/../../etc/shadow", "/pr/etc/shadow", "/proc/1/root/etc/shadow"):
        try:
            data = sandbox.read_file(path)
        except SandboxError:
            continue
        assert data == b"", path


def test_runtime_binaries_cannot_be_overwritten(session, sandbox):
    init_bin = Path(sandlot.__file__).resolve().parent / "_bin" / "sandlot-init"
    runner_bin = Path(sandlot.__file__).resolve().parent / "_bin" / "sandlotd"
    watched = [p for p in (init_bin, runner_bin, Path("/usr/bin/sleep"), Path(os.path.realpath("/usr/bin/python3"))) if p.exists()]
    before = {p: file_digest(str(p)) for p in watched}
    victim = sandbox.exec(["sleep", "300"])
    r = attack(
        sandbox,
        r"""
def overwrite(path):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, b'#!/bin/sh\necho pwned\n')
    finally:
        os.close(fd)
try_os('/proc/1/exe', overwrite, '/proc/1/exe')
try_os('/proc/1/exe trunc', os.truncate, '/proc/1/exe', 0)
try_os('/proc/self/exe', overwrite, '/proc/self/exe')
try_os('/proc/sleep/exe', overwrite, '/proc/%d/exe')
try_os('/proc/1/map_files', os.listdir, '/proc/1/map_files')
"""
        % victim.info().pid,
    )
    # init's exe (a sealed memfd) cannot even be opened: it holds capabilities
    # we lack. Our own exe and a sibling's are busy (ETXTBSY) or get copied up
    # into the sandbox's layer - never written through to the host.
    assert r["/proc/1/exe"] != 0 and r["/proc/1/exe trunc"] != 0 and r["/proc/1/map_files"] != 0, r
    victim.kill()
    for p in watched:
        assert file_digest(str(p)) == before[p], p
    # And the next sandbox still starts the genuine init.
    with Sandbox.create(["true"], session=session) as sb:
        assert sb.wait(30) == 0


WORKDIRS = (
    [f"/proc/self/fd/{n}" for n in range(0, 12)]
    + [f"/proc/1/fd/{n}" for n in range(0, 8)]
    + ["/proc/1/cwd", "/proc/1/root", "/proc/self/root", "/proc/thread-self/cwd", "/proc/1/map_files"]
)


@pytest.mark.parametrize("workdir", WORKDIRS)
def test_workdir_through_proc_fd_stays_inside(sandbox, workdir):
    # CVE-2024-21626: a runtime fd to a host directory, leaked into the new
    # process, made workdir=/proc/self/fd/N a cwd outside the container.
    try:
        code, out, err = run(
            sandbox, "pwd -P; readlink /proc/self/cwd; cd ../../../../../../../..; stat -c %d:%i . /", workdir=workdir
        )
    except sandlot.SpawnError:
        return  # refused: fine
    if code != 0:
        return
    pwd, link, here, root = out.splitlines()
    assert not pwd.startswith("(unreachable)") and not link.startswith("(unreachable)"), out
    # Wherever it is, ".." stops at the sandbox's own root.
    assert here == root, out


@pytest.mark.parametrize("workdir", ["/proc/self/fd/3", "/proc/self/fd/5", "/proc/1/fd/3"])
def test_entry_command_workdir_through_proc_fd_stays_inside(session, workdir):
    try:
        sb = Sandbox.create(["sh", "-c", "pwd -P; readlink /proc/self/cwd"], workdir=workdir, session=session)
    except SandboxError:
        return
    try:
        sb.wait(30)
        out = sb.stdout.read()
        assert "(unreachable)" not in out, out
    finally:
        sb.terminate()


def test_volume_at_a_symlinked_path_is_refused(session):
    tag = uuid.uuid4().hex[:12]
    vol = Volume.from_name(f"sec-{tag}", session=session)
    try:
        # Merged /usr: /bin -> usr/bin. A mount there would follow the link.
        if os.path.islink("/bin"):
            with pytest.raises(SandboxError):
                Sandbox.create(volumes={f"/bin/sandlot-{tag}": vol}, session=session)
            assert not os.path.exists(f"/usr/bin/sandlot-{tag}")
    finally:
        vol.delete()
        if os.path.isdir(f"/usr/bin/sandlot-{tag}"):  # only if the test failed
            os.rmdir(f"/usr/bin/sandlot-{tag}")


def test_volume_under_an_image_symlink_to_the_host_is_refused(session, host_dir):
    tag = uuid.uuid4().hex[:12]
    img = host_dir / "image"
    (img / "bin").mkdir(parents=True)
    # Absolute and relative links out of the image, to a host directory.
    target = host_dir / "target"
    target.mkdir()
    os.symlink(str(target), img / "abs")
    os.symlink("../../../../../../../.." + str(target), img / "rel")
    vol = Volume.from_name(f"sec-{tag}", session=session)
    try:
        for link in ("abs", "rel"):
            try:
                sb = Sandbox.create(image=Image.from_directory(str(img)), volumes={f"/{link}/v": vol}, session=session)
            except SandboxError:
                continue  # refused: fine
            sb.terminate()
        assert os.listdir(target) == [], "a mount point was created through the image's symlink"
    finally:
        vol.delete()


def test_symlink_planted_in_a_volume_does_not_redirect_a_mount(session):
    tag = uuid.uuid4().hex[:12]
    data = Volume.from_name(f"sec-data-{tag}", session=session)
    other = Volume.from_name(f"sec-other-{tag}", session=session)
    try:
        with Sandbox.create(volumes={"/data": data}, session=session) as sb:
            sh(sb, f"ln -s /etc /data/link && ln -s /usr/bin /data/bin-{tag}")
        # The next sandbox mounts the same volume, then another one below the link.
        for target in ("/data/link/sandlot-" + tag, f"/data/bin-{tag}/sandlot-{tag}"):
            try:
                sb = Sandbox.create(volumes={"/data": data, target: other}, session=session)
            except SandboxError:
                continue
            sb.terminate()
        assert not os.path.exists(f"/etc/sandlot-{tag}")
        assert not os.path.exists(f"/usr/bin/sandlot-{tag}")
    finally:
        data.delete()
        other.delete()
        for leftover in (f"/etc/sandlot-{tag}", f"/usr/bin/sandlot-{tag}"):  # only if the test failed
            if os.path.isdir(leftover):
                os.rmdir(leftover)


def test_another_sandboxs_files_are_unreachable(session, runner):
    tag = uuid.uuid4().hex
    with Sandbox.create(["sleep", "300"], session=session) as a, Sandbox.create(["sleep", "300"], session=session) as b:
        sh(a, f"echo secret-{tag} > /etc/secret-{tag}; echo secret-{tag} > /tmp/secret-{tag}")
        a_pid = a.info().pid
        upper = Path(runner.state_dir) / "sandboxes" / a.sandbox_id / "upper" / "etc" / f"secret-{tag}"
        probes = [
            f"/proc/{a_pid}/root/etc/secret-{tag}",
            f"/proc/{a_pid}/root/tmp/secret-{tag}",
            str(upper),
            f"/etc/secret-{tag}",
        ]
        script = "; ".join(f"cat {p} 2>/dev/null" for p in probes) + "; true"
        assert f"secret-{tag}" not in sh(b, script)
        # The runner's state dir (every sandbox's layers) is not visible at all.
        assert sh(b, f"ls -A {runner.state_dir} 2>/dev/null | wc -l") == "0\n"


def test_snapshot_of_a_symlink_swapping_sandbox_holds_no_host_file(session):
    # The runner builds a snapshot from the sandbox's upper dir on the host,
    # as root, while the sandbox runs. A sandbox that keeps swapping a
    # directory for a symlink to a host directory it cannot see (/root is
    # masked inside) would, if the build followed it, get the host's files
    # back in any sandbox restored from that snapshot.
    secret = "sl-host-only-" + uuid.uuid4().hex
    marker = Path("/root") / f"sl-marker-{uuid.uuid4().hex[:8]}"
    marker.write_text(secret)
    swapper = (
        "mkdir -p /srv/a; i=0; while :; do "
        "mkdir -p /srv/a/real && echo mine > /srv/a/real/f && rm -rf /srv/a/d && mv /srv/a/real /srv/a/d; "
        "ln -sfn /root /srv/a/link && mv -T /srv/a/link /srv/a/d; i=$((i+1)); done"
    )
    try:
        with Sandbox.create(["sh", "-c", swapper], timeout=120, session=session) as sb:
            assert sh(sb, f"cat /root/{marker.name} 2>/dev/null || echo masked").strip() == "masked"
            snaps = [sb.snapshot() for _ in range(3)]
        for snap in snaps:
            with Sandbox.create(["sleep", "30"], snapshot=snap, timeout=60, session=session) as r:
                # What came back is the sandbox's own: a dir with its file, or the symlink.
                found = sh(r, f"grep -rl {secret} /srv 2>/dev/null; ls -la /srv/a; true")
                assert secret not in found and marker.name not in found, found
            snap.delete()
    finally:
        marker.unlink()
