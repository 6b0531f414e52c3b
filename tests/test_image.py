"""The chainable image builder: a real rootfs tarball, layer cache hits and
invalidation, copies, env, workdir, build output, errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

import sandlot
from sandlot import Image, Sandbox
from sandlot._build import ImageBuildError


@pytest.fixture(scope="module")
def busybox_tar(tmp_path_factory) -> Path:
    """A rootfs tarball: busybox-static and its applet links, nothing else."""
    bb = shutil.which("busybox")
    if bb is None or "static" not in subprocess.run(["file", "-L", bb], capture_output=True, text=True).stdout:
        pytest.fail("needs busybox-static (apt-get install busybox-static; ./dev test installs it)")
    root = tmp_path_factory.mktemp("bbroot")
    (root / "bin").mkdir()
    shutil.copy2(bb, root / "bin" / "busybox")
    applets = subprocess.run([bb, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for a in applets:
        if a != "busybox":
            os.symlink("busybox", root / "bin" / a)
    for d in ("etc", "tmp", "root"):
        (root / d).mkdir()
    (root / "etc" / "os-release").write_text("NAME=busybox-test\n")
    out = tmp_path_factory.mktemp("tar") / "rootfs.tar"
    with tarfile.open(out, "w") as t:
        t.add(root, arcname=".")
    return out


def logger():
    lines: list[str] = []
    return lines, lines.append


def sh(sb: Sandbox, script: str) -> tuple[int, str]:
    p = sb.exec(["sh", "-c", script])
    return p.wait(), p.stdout.read()


def test_from_tar_runs_commands_and_caches(session, busybox_tar):
    img = Image.from_tar(busybox_tar).run_commands("echo built-once; echo hello > /etc/greeting")
    log, out = logger()
    t0 = time.monotonic()
    img.build(session=session, output=out)
    first = time.monotonic() - t0
    text = "".join(log)
    assert "built-once\n" in log  # the step's output streamed to us, line by line
    assert "unpacking" in text
    with Sandbox.create(image=img, timeout=60, session=session) as sb:
        assert sh(sb, "cat /etc/greeting /etc/os-release; test -e /usr/bin/python3 || echo not-host") == (
            0,
            "hello\nNAME=busybox-test\nnot-host\n",
        )
    log, out = logger()
    t0 = time.monotonic()
    img.build(session=session, output=out)
    second = time.monotonic() - t0
    text = "".join(log)
    assert "built-once\n" not in log and "(cached)" in text and "cached as image" in text
    assert second < max(0.5, first / 2), (first, second)


def test_changed_step_rebuilds_from_there(session, busybox_tar):
    base = Image.from_tar(busybox_tar).run_commands("echo step-one; date +%s%N > /one")
    a = base.run_commands("echo step-two-a; echo a > /two")
    b = base.run_commands("echo step-two-b; echo b > /two")
    log, out = logger()
    a.build(session=session, output=out)
    log, out = logger()
    b.build(session=session, output=out)
    assert "step-one\n" not in log and "step-two-b\n" in log
    with Sandbox.create(image=a, timeout=60, session=session) as sa, Sandbox.create(
        image=b, timeout=60, session=session
    ) as sb2:
        one_a, one_b = sh(sa, "cat /one /two")[1].split(), sh(sb2, "cat /one /two")[1].split()
        assert one_a[0] == one_b[0]  # step one ran once, shared
        assert (one_a[1], one_b[1]) == ("a", "b")


def test_copies_env_and_workdir(session, busybox_tar, tmp_path):
    f = tmp_path / "conf.txt"
    f.write_text("v1\n")
    d = tmp_path / "app"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "x.py").write_text("print(1)\n")
    img = (
        Image.from_tar(busybox_tar)
        .copy_local_file(f, "/etc/app/conf.txt")
        .copy_local_dir(d, "/srv/app")
        .env({"APP_MODE": "test"})
        .workdir("/srv/app")
        .run_commands("echo $APP_MODE > mode.txt")
    )
    log, out = logger()
    img.build(session=session, output=out)
    with Sandbox.create(image=img, timeout=60, session=session, env={"EXTRA": "1"}) as sb:
        assert sh(sb, "pwd; cat /etc/app/conf.txt sub/x.py mode.txt; echo $APP_MODE $EXTRA; ls /tmp") == (
            0,
            "/srv/app\nv1\nprint(1)\ntest\ntest 1\n",
        )
    # Changing the copied file's bytes invalidates that step (and later ones) only.
    f.write_text("v2\n")
    log, out = logger()
    img.build(session=session, output=out)
    text = "".join(log)
    steps = [ln for ln in log if ln.startswith("[sandlot image] step")]
    assert len(steps) == 4 and not any("(cached)" in ln for ln in steps), steps  # all from copy_file on
    with Sandbox.create(image=img, timeout=60, session=session) as sb:
        assert sh(sb, "cat /etc/app/conf.txt")[1] == "v2\n"


def test_failing_step_is_a_clear_error(session, busybox_tar):
    img = Image.from_tar(busybox_tar).run_commands("echo about-to-fail; exit 7")
    with pytest.raises(ImageBuildError, match=r"exited with 7(.|\n)*about-to-fail"):
        Sandbox.create(image=img, session=session)


def test_immutable_chaining():
    a = Image.host()
    b = a.run_commands("true")
    assert a._steps == () and len(b._steps) == 1 and b != a
    assert a.run_commands("true") == b  # same steps, same image
    with pytest.raises(TypeError):
        a.run_commands()
    with pytest.raises(ValueError, match="absolute"):
        a.workdir("rel")


def test_unknown_named_image_lists_what_exists(session, tmp_path):
    root = tmp_path / "r"
    (root / "bin").mkdir(parents=True)
    session.request("POST", "/v1/images", {"name": "img-listed", "source": str(root)}).result()
    try:
        with pytest.raises(sandlot.NotFoundError, match=r"no-such-image.*img-listed"):
            Sandbox.create(image=Image.named("no-such-image"), session=session)
    finally:
        session.request("POST", "/v1/images/img-listed/delete", {}).result()


def test_register_name_resolves_and_cli_lists(runner, session, busybox_tar):
    from conftest import client_env

    img = Image.from_tar(busybox_tar).run_commands("echo reg > /reg").env({"REG": "yes"}).workdir("/etc")
    named = img.register("busy-reg", session=session, output=lambda s: None)
    assert named == Image.named("busy-reg")
    with Sandbox.create(image=named, timeout=60, session=session) as sb:
        assert sh(sb, "cat /reg; echo $REG; pwd") == (0, "reg\nyes\n/etc\n")
    with pytest.raises(sandlot.SandboxError, match="already exists"):
        img.register("busy-reg", session=session, output=lambda s: None)
    env = client_env(runner)
    ls = subprocess.run(["python3", "-m", "sandlot", "image", "ls"], env=env, capture_output=True, text=True)
    assert "busy-reg" in ls.stdout, ls.stderr
    rm = subprocess.run(["python3", "-m", "sandlot", "image", "rm", "busy-reg"], env=env, capture_output=True, text=True)
    assert rm.returncode == 0, rm.stderr
    with pytest.raises(sandlot.NotFoundError, match="busy-reg.*registered images"):
        Sandbox.create(image=Image.named("busy-reg"), session=session)
