"""Data in and out of sandboxes: read-only mounted files, shared volumes, the
volume CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest

import sandlot
from sandlot import Sandbox, Volume

from conftest import client_env


def sh(sb: Sandbox, script: str) -> tuple[int, str, str]:
    p = sb.exec(["sh", "-c", script])
    code = p.wait()
    return code, p.stdout.read(), p.stderr.read()


def test_mounted_files_are_read_only(session, tmp_path):
    f = tmp_path / "config.json"
    f.write_text('{"k": 1}\n')
    d = tmp_path / "assets"
    d.mkdir()
    (d / "a.txt").write_text("asset\n")
    mounts = {"/etc/app/config.json": str(f), "/srv/assets": d}
    with Sandbox.create(timeout=60, session=session, mounted_files=mounts) as sb:
        assert sh(sb, "cat /etc/app/config.json /srv/assets/a.txt")[1] == '{"k": 1}\nasset\n'
        code, _, err = sh(sb, "echo x >> /etc/app/config.json")
        assert code != 0 and "Read-only file system" in err
        code, _, err = sh(sb, "touch /srv/assets/new")
        assert code != 0 and "Read-only file system" in err
        # Host changes show through (a bind, not a copy).
        f.write_text("changed\n")
        assert sh(sb, "cat /etc/app/config.json")[1] == "changed\n"
    assert f.read_text() == "changed\n" and sorted(p.name for p in d.iterdir()) == ["a.txt"]


def test_mounted_files_errors(session, tmp_path):
    with pytest.raises(sandlot.InvalidArgumentError, match="no-such-file"):
        Sandbox.create(session=session, mounted_files={"/x": str(tmp_path / "no-such-file")})
    (tmp_path / "t").write_text("t")
    (tmp_path / "link").symlink_to(tmp_path / "t")
    with pytest.raises(sandlot.InvalidArgumentError, match="symlink"):
        Sandbox.create(session=session, mounted_files={"/x": str(tmp_path / "link")})
    with pytest.raises(ValueError, match="absolute"):
        Sandbox.create(session=session, mounted_files={"relative": str(tmp_path / "t")})
    with pytest.raises(TypeError, match="mapping"):
        Sandbox.create(session=session, mounted_files=[str(tmp_path / "t")])  # type: ignore[arg-type]


def test_volume_shared_by_two_live_sandboxes_and_persistent(session):
    vol = Volume.from_name("data-shared-test", session=session)
    try:
        a = Sandbox.create(timeout=60, session=session, volumes={"/mnt/v": vol})
        b = Sandbox.create(timeout=60, session=session, volumes={"/data": vol})
        try:
            assert sh(a, "echo from-a > /mnt/v/a")[0] == 0
            assert sh(b, "cat /data/a; echo from-b > /data/b")[1] == "from-a\n"
            assert sh(a, "cat /mnt/v/b")[1] == "from-b\n"  # both live at once
            with pytest.raises(sandlot.SandboxError, match="mounted"):
                vol.delete()
        finally:
            a.terminate()
            b.terminate()
        with Sandbox.create(timeout=60, session=session, volumes={"/v": vol}) as c:
            assert sh(c, "cat /v/a /v/b")[1] == "from-a\nfrom-b\n"
    finally:
        import time

        deadline = time.monotonic() + 10
        while True:
            try:
                vol.delete()
                break
            except sandlot.SandboxNotRunningError:
                assert time.monotonic() < deadline
                time.sleep(0.05)


def test_volume_cli_ls_rm(runner, session):
    Volume.from_name("data-cli-vol", session=session)
    env = client_env(runner)
    ls = subprocess.run([sys.executable, "-m", "sandlot", "volume", "ls"], env=env, capture_output=True, text=True)
    assert ls.returncode == 0 and "data-cli-vol" in ls.stdout and "NAME" in ls.stdout
    rm = subprocess.run(
        [sys.executable, "-m", "sandlot", "volume", "rm", "data-cli-vol", "data-no-such-vol"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert rm.returncode == 1 and rm.stdout.strip() == "data-cli-vol" and "data-no-such-vol" in rm.stderr
    ls = subprocess.run(
        [sys.executable, "-m", "sandlot", "volume", "ls", "-q"], env=env, capture_output=True, text=True
    )
    assert "data-cli-vol" not in ls.stdout.split()


def test_image_cli_ls_rm(runner, session, tmp_path):
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    session.request("POST", "/v1/images", {"name": "data-cli-img", "source": str(root)}).result()
    env = client_env(runner)
    ls = subprocess.run([sys.executable, "-m", "sandlot", "image", "ls"], env=env, capture_output=True, text=True)
    assert ls.returncode == 0 and "data-cli-img" in ls.stdout
    rm = subprocess.run(
        [sys.executable, "-m", "sandlot", "image", "rm", "data-cli-img", "data-no-img"], env=env, capture_output=True, text=True
    )
    assert rm.returncode == 1 and rm.stdout.strip() == "data-cli-img" and "data-no-img" in rm.stderr
