"""S3 buckets mounted into sandboxes with s3fs, against a real S3-compatible
server on loopback (moto's server mode, started here)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any, Iterator

import pytest

import sandlot
from sandlot import Sandbox

import boto3  # from moto[server], in the test extra; ./dev installs it

# Missing tools are a broken set-up, not a reason to skip: ./dev installs both.
assert shutil.which("s3fs") and shutil.which("moto_server"), "needs s3fs (apt) and moto[server] (pip): run ./dev test"

BUCKET = "sandlot-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Moto:
    def __init__(self, url: str, key: str, secret: str) -> None:
        self.url, self.key, self.secret = url, key, secret

    def client(self, svc: str = "s3") -> Any:
        return boto3.client(svc, endpoint_url=self.url, aws_access_key_id=self.key,
                            aws_secret_access_key=self.secret, region_name="us-east-1")

    def set_auth(self, on: bool) -> None:
        """moto checks signatures against its IAM users once "reset-auth" is 0
        (and accepts anything at "inf")."""
        req = urllib.request.Request(self.url + "/moto-api/reset-auth", data=b"0" if on else b"inf",
                                     method="POST", headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(req, timeout=10).read()

    def spec(self, **kw: Any) -> dict[str, Any]:
        d = {"bucket": BUCKET, "endpoint_url": self.url, "access_key_id": self.key,
             "secret_access_key": self.secret}
        d.update(kw)
        return d


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    proc = subprocess.Popen([shutil.which("moto_server") or "moto_server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)
        boot = Moto(url, "boot", "boot")
        iam = boot.client("iam")
        iam.create_user(UserName="sandlot")
        iam.put_user_policy(
            UserName="sandlot", PolicyName="s3",
            PolicyDocument='{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}')
        k = iam.create_access_key(UserName="sandlot")["AccessKey"]
        m = Moto(url, k["AccessKeyId"], k["SecretAccessKey"])
        s3 = m.client()
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key="hello.txt", Body=b"hello from s3\n")
        s3.put_object(Bucket=BUCKET, Key="data/a.txt", Body=b"A")
        s3.put_object(Bucket=BUCKET, Key="data/sub/b.txt", Body=b"B")
        s3.put_object(Bucket=BUCKET, Key="other/c.txt", Body=b"C")
        yield m
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def wait_unmounted() -> None:
    """Every s3fs mount of the runner is gone (teardown runs when init is reaped,
    just after terminate returns)."""
    deadline = time.monotonic() + 10
    while True:
        with open("/proc/self/mountinfo") as f:
            if "fuse.s3fs" not in f.read():
                return
        assert time.monotonic() < deadline, "s3fs mount left behind"
        time.sleep(0.1)


def sh(sb: Sandbox, script: str) -> tuple[int, str, str]:
    p = sb.exec(["sh", "-c", script])
    code = p.wait()
    return code, p.stdout.read(), p.stderr.read()


def test_read_and_write_through_the_mount(session, moto):
    with Sandbox.create(timeout=60, session=session, s3_mounts={"/mnt/s3": moto.spec()}) as sb:
        code, out, err = sh(sb, "cat /mnt/s3/hello.txt && ls /mnt/s3")
        assert code == 0, err
        assert out.startswith("hello from s3\n")
        assert sorted(out.split("\n")[1:-1]) == ["data", "hello.txt", "other"]
        code, _, err = sh(sb, "printf 'written inside' > /mnt/s3/from-sandbox.txt && mkdir -p /mnt/s3/d "
                              "&& echo x > /mnt/s3/d/y.txt")
        assert code == 0, err
    obj = moto.client().get_object(Bucket=BUCKET, Key="from-sandbox.txt")
    assert obj["Body"].read() == b"written inside"
    assert moto.client().get_object(Bucket=BUCKET, Key="d/y.txt")["Body"].read() == b"x\n"
    # Credentials never show in the sandbox's listing.
    with Sandbox.create(timeout=30, session=session, s3_mounts={"/mnt/s3": moto.spec()}) as sb:
        listed = repr(session.request("GET", "/v1/sandboxes").result())
        assert sb.sandbox_id in listed and moto.secret not in listed and moto.key not in listed
        env = sh(sb, "cat /proc/1/environ | tr '\\0' '\\n'; env")[1]
        assert moto.secret not in env


def test_prefix_shows_only_keys_under_it(session, moto):
    spec = moto.spec(prefix="data/", read_only=True)
    with Sandbox.create(timeout=60, session=session, s3_mounts={"/data": spec}) as sb:
        code, out, err = sh(sb, "cd /data && find . -type f | sort && cat a.txt sub/b.txt")
        assert code == 0, err
        assert out == "./a.txt\n./sub/b.txt\nAB"
        code, _, err = sh(sb, "echo no > /data/new.txt")
        assert code != 0 and "Read-only file system" in err


def test_bad_credentials_fail_the_create_quickly(session, moto):
    moto.set_auth(True)
    try:
        # The server really checks: the valid key still works with boto3 ...
        moto.client().head_object(Bucket=BUCKET, Key="hello.txt")
        bad = moto.spec(access_key_id="AKIAIOSFODNN7BADBAD0", secret_access_key="not-the-secret-1234")
        t0 = time.monotonic()
        with pytest.raises(sandlot.SpawnError) as ei:
            Sandbox.create(timeout=60, session=session, s3_mounts={"/mnt/s3": bad})
        took = time.monotonic() - t0
    finally:
        moto.set_auth(False)
    msg = str(ei.value)
    assert "s3fs could not access bucket 'sandlot-test'" in msg and "credentials" in msg
    assert "not-the-secret-1234" not in msg and "AKIAIOSFODNN7BADBAD0" not in msg
    assert took < 15, took
    # Nothing is left mounted after the failed create.
    wait_unmounted()


def test_unreachable_endpoint_fails_quickly(session, moto):
    spec = moto.spec(endpoint_url=f"http://127.0.0.1:{free_port()}")
    t0 = time.monotonic()
    with pytest.raises(sandlot.SpawnError) as ei:
        Sandbox.create(timeout=60, session=session, s3_mounts={"/mnt/s3": spec})
    assert time.monotonic() - t0 < 10
    assert "unreachable" in str(ei.value) and "Connection refused" in str(ei.value)


def test_mount_is_gone_after_terminate(session, moto):
    sb = Sandbox.create(timeout=60, session=session, s3_mounts=[dict(moto.spec(), mount_path="/b")])
    assert sh(sb, "cat /b/other/c.txt")[1] == "C"
    sb.terminate()
    wait_unmounted()


def test_bad_arguments_are_refused_before_sending(session):
    with pytest.raises(ValueError):
        Sandbox.create(session=session, s3_mounts={"/m": {"bucket": "b"}})
    with pytest.raises(ValueError):
        Sandbox.create(session=session, s3_mounts={"/m": {"bucket": "bkt", "endpoint_url": "http://x",
                                                          "access_key_id": "k"}})
    with pytest.raises(TypeError):
        Sandbox.create(session=session, s3_mounts=3)
    # The runner checks too (endpoint with a comma would inject s3fs options).
    with pytest.raises(sandlot.InvalidArgumentError):
        Sandbox.create(session=session, s3_mounts={"/m": {"bucket": "bkt", "endpoint_url": "http://x,allow_root"}})


def test_remote_function_s3_mount(session, moto):
    from sandlot import RemoteFunction

    def _read_s3(path: str) -> str:  # local: shipped by value (this module skips itself in a sandbox)
        with open(path) as f:
            return f.read()

    spec = dict(moto.spec(prefix="data"), mount_path="/s3data")
    f = RemoteFunction(_read_s3, session=session, s3_mount=spec)
    try:
        assert f.remote("/s3data/a.txt").result(timeout=60) == "A"
        assert f.remote("/s3data/sub/b.txt").result(timeout=60) == "B"
        info = repr(f.info())
        assert "sandlot-test" in info and moto.secret not in info and moto.key not in info
    finally:
        f.delete()
    bad = RemoteFunction(_read_s3, session=session,
                         s3_mount=dict(moto.spec(endpoint_url=f"http://127.0.0.1:{free_port()}"), mount_path="/m"))
    try:
        with pytest.raises(sandlot.SandboxError) as ei:
            bad.remote("/m/hello.txt").result(timeout=60)
        assert "unreachable" in str(ei.value)
    finally:
        bad.delete()
