"""Image.from_registry against a real registry (Debian's docker-registry on
127.0.0.1), filled with images assembled here (tests/_oci.py)."""

from __future__ import annotations

import base64
import json
import os
import socket
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import sandlot
from sandlot import Image, ImagePullError, Sandbox, Secret

from _oci import Entry, Registry, busybox_layer, start_registry, stop_registry, tar_layer


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    reg = start_registry(tmp_path_factory.mktemp("registry"))
    yield reg
    stop_registry(reg)


@pytest.fixture(scope="module")
def bb() -> bytes:
    return busybox_layer()


def sh(sb: Sandbox, script: str) -> tuple[int, str]:
    p = sb.exec(["sh", "-c", script])
    return p.wait(), p.stdout.read() + p.stderr.read()


def leftovers(runner) -> list[str]:  # type: ignore[no-untyped-def]
    """Half-written things a failed pull must not leave: tmp layers, tmp aliases."""
    st = Path(runner.state_dir)
    return sorted(p.name for d in ("snapshots", "images") for p in (st / d).glob(".tmp-*"))


def snap_ids(session: sandlot.Session) -> set[str]:
    return {s["snapshot_id"] for s in session.request("GET", "/v1/snapshots").result()["snapshots"]}


def test_busybox_image_runs_its_own_userland(session, registry, bb):
    registry.push_image("bb", "1", [bb], config={"Env": ["PATH=/bin", "HELLO=from-image"], "WorkingDir": "/etc"})
    img = Image.from_registry(f"{registry.host}/bb:1")
    with Sandbox.create(image=img, timeout=60, session=session) as sb:
        code, out = sh(sb, "echo $HELLO; pwd; cat /etc/os-release; readlink /bin/sh; ls /usr /lib 2>&1; true")
        assert code == 0
        lines = out.splitlines()
        assert lines[:4] == ["from-image", "/etc", "NAME=sandlot-busybox-image", "busybox"]
        # nothing of the host's userland is there (the host has /usr and /lib)
        assert "No such file or directory" in lines[4] and "No such file or directory" in lines[5]
    # the call's env and workdir win over the image's
    with Sandbox.create(image=img, timeout=60, session=session, env={"HELLO": "call"}, workdir="/tmp") as sb:
        assert sh(sb, "echo $HELLO; pwd") == (0, "call\n/tmp\n")
    # registered under a name: Image.named(...) starts it with its Env and WorkingDir too
    names = [im["name"] for im in session.request("GET", "/v1/images").result()["images"]]
    name = f"127.0.0.1_{registry.port}_bb_1"
    assert name in names
    with Sandbox.create(image=Image.named(name), timeout=60, session=session, env={"X": "1"}) as sb:
        assert sh(sb, "echo $HELLO $X; pwd; readlink /bin/sh") == (0, "from-image 1\n/etc\nbusybox\n")


def test_whiteouts_hardlinks_owners_modes_xattrs(session, registry, bb, runner):
    l2 = tar_layer(
        [
            Entry("a", tarfile.DIRTYPE, mode=0o755),
            Entry("a/f1", data=b"one"),
            Entry("a/f2", data=b"two"),
            Entry("d", tarfile.DIRTYPE, mode=0o755),
            Entry("d/x", data=b"x"),
            Entry("h1", data=b"linked"),
            Entry("h2", tarfile.LNKTYPE, link="h1"),
            Entry("own", data=b"#!/bin/sh\n", mode=0o4755, uid=1234, gid=5678),
            Entry("xa", data=b"x", xattrs={"user.sandlot": "yes"}),
            Entry("abs", tarfile.SYMTYPE, link="/etc/os-release"),
        ]
    )
    l3 = tar_layer(
        [
            Entry("a", tarfile.DIRTYPE, mode=0o755),
            Entry("a/.wh.f1"),
            Entry("d", tarfile.DIRTYPE, mode=0o755),
            Entry("d/.wh..wh..opq"),
            Entry("d/y", data=b"y"),
        ]
    )
    registry.push_image("layers", "1", [bb, l2, l3], config={"Env": ["PATH=/bin"]})
    res = Image.from_registry(f"{registry.host}/layers:1").pull(session=session, progress=False)
    with Sandbox.create(image=Image.from_registry(f"{registry.host}/layers:1"), timeout=60, session=session) as sb:
        code, out = sh(
            sb,
            "ls /a; echo --; ls /d; echo --; stat -c '%i %h' /h1 /h2; stat -c '%u %g %a' /own; cat /h2; echo; cat /abs",
        )
        assert code == 0, out
        a, d, rest = out.split("--\n")
        assert a.split() == ["f2"]  # .wh.f1 hid the lower f1
        assert d.split() == ["y"]  # the opaque dir hid the lower x
        r = rest.splitlines()
        assert r[0].split()[0] == r[1].split()[0] and r[0].split()[1] == "2"  # one inode, two links
        assert r[2] == "1234 5678 4755"
        assert r[3] == "linked"
        assert r[4] == "NAME=sandlot-busybox-image"  # an absolute symlink resolves inside the image
        # the xattr survived: read it from the mounted middle layer on the host
        mid = session.request("GET", f"/v1/snapshots/{res.snapshot_id}").result()["snapshot"]
        mid = session.request("GET", f"/v1/snapshots/{mid['parent']}").result()["snapshot"]
        leaf = "mnt" if mid["storage"] == "erofs" else "layer"
        assert os.getxattr(Path(runner.state_dir) / "snapshots" / mid["snapshot_id"] / leaf / "xa", "user.sandlot") == b"yes"


def test_layers_shared_between_images(session, registry, bb):
    registry.push_image("shared-a", "1", [bb, tar_layer([Entry("a.txt", data=b"a")])])
    registry.push_image("shared-b", "1", [bb, tar_layer([Entry("b.txt", data=b"b")])])
    Image.from_registry(f"{registry.host}/shared-a:1").pull(session=session, progress=False)
    before = snap_ids(session)
    seen: list[list[dict]] = []
    res = Image.from_registry(f"{registry.host}/shared-b:1").pull(session=session, progress=seen.append)
    after = snap_ids(session)
    assert len(after - before) == 1  # only b's own layer is new: busybox is stored once
    assert seen[-1][0]["phase"] == "cached" and seen[-1][1]["phase"] == "done"
    assert res.snapshot_id in after - before


def test_multi_arch_index_picks_the_platform(session, registry, bb):
    amd = registry.push_image("multi", "amd", [bb, tar_layer([Entry("arch", data=b"amd64")])], arch="amd64")
    arm = registry.push_image("multi", "arm", [bb, tar_layer([Entry("arch", data=b"arm64")])], arch="arm64")
    registry.push_index("multi", "1", [arm, amd])
    ref = f"{registry.host}/multi:1"
    with Sandbox.create(image=Image.from_registry(ref), timeout=60, session=session) as sb:
        assert sh(sb, "cat /arch") == (0, "amd64")
    res = Image.from_registry(ref, platform="linux/arm64").pull(session=session, progress=False)
    assert res.digest == arm["digest"]
    with pytest.raises(ImagePullError) as ei:
        Image.from_registry(ref, platform="linux/s390x").pull(session=session, progress=False)
    assert ei.value.status == 404 and "linux/amd64" in str(ei.value) and "s390x" in str(ei.value)
    # by digest, no tag
    res = Image.from_registry(f"{registry.host}/multi@{amd['digest']}").pull(session=session, progress=False)
    assert res.digest == amd["digest"]


def test_zstd_and_uncompressed_layers(session, registry, bb):
    registry.push_image("zst", "1", [bb, tar_layer([Entry("z", data=b"zstd layer")])], compress="zstd")
    registry.push_image("raw", "1", [bb, tar_layer([Entry("r", data=b"plain layer")])], compress="none")
    with Sandbox.create(image=Image.from_registry(f"{registry.host}/zst:1"), timeout=60, session=session) as sb:
        assert sh(sb, "cat /z") == (0, "zstd layer")
    with Sandbox.create(image=Image.from_registry(f"{registry.host}/raw:1"), timeout=60, session=session) as sb:
        assert sh(sb, "cat /r") == (0, "plain layer")


@pytest.mark.parametrize(
    "entries, why",
    [
        ([Entry("../escaped", data=b"x")], "path traversal"),
        ([Entry("ok/../../escaped", data=b"x")], "path traversal"),
        ([Entry("esc", tarfile.SYMTYPE, link="/tmp"), Entry("esc/escaped", data=b"x")], "symbolic link"),
        ([Entry("esc", tarfile.SYMTYPE, link="../../../../.."), Entry("esc/tmp/escaped", data=b"x")], "symbolic link"),
        ([Entry("hl", tarfile.LNKTYPE, link="../../../../etc/passwd")], "out of the layer"),
    ],
    ids=["dotdot", "inner-dotdot", "abs-symlink-write", "rel-symlink-write", "hardlink-out"],
)
def test_unsafe_layers_are_refused(session, registry, bb, runner, entries, why, tmp_path):
    repo = f"evil-{abs(hash(why + str(len(entries)))) % 10**6}-{len(entries)}"
    registry.push_image(repo, "1", [bb, tar_layer(entries)])
    before = snap_ids(session)
    names = {im["name"] for im in session.request("GET", "/v1/images").result()["images"]}
    with pytest.raises(ImagePullError) as ei:
        Image.from_registry(f"{registry.host}/{repo}:1").pull(session=session, progress=False)
    assert ei.value.status == 422 and why in str(ei.value), str(ei.value)
    assert not Path("/tmp/escaped").exists()
    # only the (valid, content-addressed) busybox layer may be new; nothing else
    new = snap_ids(session) - before
    assert all(session.request("GET", f"/v1/snapshots/{s}").result()["snapshot"]["parent"] is None for s in new)
    assert {im["name"] for im in session.request("GET", "/v1/images").result()["images"]} == names
    assert leftovers(runner) == []
    assert session.health()["ok"]


def test_corrupt_truncated_and_wrong_digest_refused(session, registry, bb, runner):
    extra = tar_layer([Entry("data", data=os.urandom(50_000))])
    im = registry.push_image("corrupt", "1", [bb, extra], compress="none")
    ref = f"{registry.host}/corrupt:1"
    blob = registry.blob_file(im["layers"][1]["digest"])
    good = blob.read_bytes()
    # a flipped byte: the blob's sha256 no longer matches
    blob.write_bytes(good[:1000] + bytes([good[1000] ^ 0xFF]) + good[1001:])
    with pytest.raises(ImagePullError) as ei:
        Image.from_registry(ref).pull(session=session, progress=False)
    assert ei.value.status == 422 and "corrupt" in str(ei.value)
    # truncated: fewer bytes than the manifest says
    blob.write_bytes(good[:20_000])
    with pytest.raises(ImagePullError) as ei:
        Image.from_registry(ref).pull(session=session, progress=False)
    assert ei.value.status in (422, 502) and ("truncated" in str(ei.value) or "bytes" in str(ei.value))
    blob.write_bytes(good)
    # refused content is not kept for a resume
    assert not list((Path(runner.state_dir) / "oci" / "blobs").glob(im["layers"][1]["digest"][7:] + "*"))
    # a config whose diff_id does not match the layer's content
    bad = registry.push_image("corrupt", "2", [bb, extra], diff_ids=[im_diff(bb), "sha256:" + "0" * 64])
    with pytest.raises(ImagePullError) as ei:
        Image.from_registry(f"{registry.host}/corrupt:2").pull(session=session, progress=False)
    assert ei.value.status == 422 and "config says" in str(ei.value)
    # a manifest that is not what its digest names
    mfile = registry.blob_file(bad["digest"])
    m = json.loads(mfile.read_bytes())
    m["annotations"] = {"tampered": "yes"}
    mfile.write_bytes(json.dumps(m).encode())
    with pytest.raises(ImagePullError) as ei:
        Image.from_registry(f"{registry.host}/corrupt@{bad['digest']}").pull(session=session, progress=False)
    assert ei.value.status == 422 and "wrong digest" in str(ei.value)
    # a tag that is not there
    with pytest.raises(ImagePullError) as ei:
        Image.from_registry(f"{registry.host}/corrupt:nope").pull(session=session, progress=False)
    assert ei.value.status == 404 and "nope" in str(ei.value)
    assert leftovers(runner) == []
    # the intact image still pulls and runs
    with Sandbox.create(image=Image.from_registry(ref), timeout=60, session=session) as sb:
        assert sh(sb, "wc -c < /data") == (0, "50000\n")


def im_diff(raw: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(raw).hexdigest()


def test_layer_bomb_over_the_limit(session, registry, bb, runner):
    bomb = tar_layer([Entry("zeros", data=bytes(8 << 20))])  # 8 MiB of zeros, ~8 kB gzipped
    registry.push_image("bomb", "1", [bb, bomb])
    with pytest.raises(ImagePullError) as ei:
        Image.from_registry(f"{registry.host}/bomb:1", max_bytes=4 << 20).pull(session=session, progress=False)
    assert ei.value.status == 422 and "limit" in str(ei.value)
    assert leftovers(runner) == []


def test_hanging_registry_times_out_and_pulls_are_deduplicated(session):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])  # and never answer
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        from sandlot._pull import PullOptions, start

        ref = f"127.0.0.1:{srv.getsockname()[1]}/hang:1"
        opts = PullOptions(stall_timeout=2)
        first = start(ref, opts, session)
        second = start(ref, opts, session)
        assert second["pull_id"] == first["pull_id"] and second["joined"] and not first["joined"]
        # the runner keeps serving while the pull hangs
        assert session.health()["ok"]
        with pytest.raises(ImagePullError) as ei:
            Image.from_registry(ref, stall_timeout=2).pull(session=session, progress=False)
        assert ei.value.status == 504 and "sent nothing" in str(ei.value)
    finally:
        stop.set()
        t.join()
        for c in conns:
            c.close()
        srv.close()


def test_bad_references_are_rejected(session):
    with pytest.raises(ValueError):
        Image.from_registry("has space:1")
    with pytest.raises(sandlot.InvalidArgumentError) as ei:  # the runner's 400
        Image.from_registry("127.0.0.1:1/UPPER:1").pull(session=session, progress=False)
    assert ei.value.status == 400 and "UPPER" in str(ei.value)


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    reg = start_registry(tmp_path_factory.mktemp("authreg"), htpasswd=("alice", "s3cret-pw"))
    yield reg
    stop_registry(reg)


def test_basic_auth_from_secret_and_docker_config(session, auth_registry, bb, tmp_path, monkeypatch):
    auth_registry.push_image("private", "1", [bb, tar_layer([Entry("secret.txt", data=b"private")])])
    ref = f"{auth_registry.host}/private:1"
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "nodocker"))
    with pytest.raises(ImagePullError) as ei:
        Image.from_registry(ref).pull(session=session, progress=False)
    assert ei.value.status == 401 and "credentials" in str(ei.value)
    wrong = Secret.from_dict({"REGISTRY_USERNAME": "alice", "REGISTRY_PASSWORD": "nope"})
    with pytest.raises(ImagePullError) as ei:
        Image.from_registry(ref, secret=wrong).pull(session=session, progress=False)
    assert ei.value.status == 401 and "nope" not in str(ei.value)
    good = Secret.from_dict({"REGISTRY_USERNAME": "alice", "REGISTRY_PASSWORD": "s3cret-pw"})
    with Sandbox.create(image=Image.from_registry(ref, secret=good), timeout=60, session=session) as sb:
        assert sh(sb, "cat /secret.txt") == (0, "private")
    # ~/.docker/config.json, as `docker login` writes it
    cfg = tmp_path / "docker"
    cfg.mkdir()
    auth = base64.b64encode(b"alice:s3cret-pw").decode()
    (cfg / "config.json").write_text(json.dumps({"auths": {auth_registry.host: {"auth": auth}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(cfg))
    res = Image.from_registry(ref).pull(session=session, progress=False)
    assert res.snapshot_id.startswith("sn-")


def test_progress_lines_when_not_a_terminal(session, registry, bb):
    import io

    registry.push_image("prog", "1", [bb, tar_layer([Entry("p", data=os.urandom(300_000))])])
    out = io.StringIO()
    from sandlot._pull import PullOptions, pull

    pull(f"{registry.host}/prog:1", PullOptions(), session, out=out)
    text = out.getvalue()
    assert "[sandlot image]" in text and ": done" in text and "\x1b[" not in text


def test_cli_pull_ls_du_rm_prune(runner, session, registry, bb):
    from conftest import client_env, run_cli

    registry.push_image("clipull", "1", [bb, tar_layer([Entry("only-cli", data=os.urandom(100_000))])])
    env = client_env(runner)
    ref = f"{registry.host}/clipull:1"
    r = run_cli(["image", "pull", ref], env)
    assert r.returncode == 0, r.stderr
    name, digest, top = r.stdout.split()[:3]
    assert name == f"127.0.0.1_{registry.port}_clipull_1" and digest.startswith("sha256:")
    assert "[sandlot image]" in r.stderr  # progress, one line at a time (not a terminal)
    r = run_cli(["image", "ls"], env)
    line = next(l for l in r.stdout.splitlines() if l.startswith(name))
    assert ref in line and digest[:19] in line and ("kB" in line or "MB" in line)
    r = run_cli(["image", "du"], env)
    assert r.returncode == 0 and "pulled images" in r.stdout
    assert run_cli(["image", "rm", name], env).returncode == 0
    r = run_cli(["image", "prune"], env)
    assert r.returncode == 0, r.stderr
    # its own layer is gone; busybox stays while other pulled images use it
    assert top not in snap_ids(session)
    r = run_cli(["image", "pull", f"{registry.host}/clipull:missing"], env)
    assert r.returncode == 1 and "not found" in r.stderr


def test_dockerfile_builds_caches_and_names_unsupported(session, registry, bb, tmp_path):
    registry.push_image("dfbase", "1", [bb], config={"Env": ["PATH=/bin"]})
    ctx = tmp_path / "ctx"
    (ctx / "app").mkdir(parents=True)
    (ctx / "app" / "main.sh").write_text("echo app-ran\n")
    (ctx / "conf.txt").write_text("conf-v1\n")
    df = ctx / "Dockerfile"
    df.write_text(
        f"ARG BASE={registry.host}/dfbase:1\n"
        "FROM $BASE\n"
        "ARG GREETING=hello\n"
        "ENV APP_HOME=/srv/app \\\n    MODE=test\n"
        "WORKDIR $APP_HOME\n"
        "COPY app/ ./\n"
        "ADD conf.txt /etc/conf.txt\n"
        "# a comment\n"
        'RUN echo "$GREETING from $MODE" > /greeting && echo step-ran\n'
        "USER root\n"
        'ENTRYPOINT ["/bin/sh"]\n'
        'CMD ["main.sh"]\n'
        "LABEL x=y\n"
    )
    img = Image.from_dockerfile(df, build_args={"GREETING": "hi"})
    log: list[str] = []
    built = img.build(session=session, output=log.append)
    assert "step-ran\n" in log
    assert built.entrypoint == ("/bin/sh",) and built.cmd == ("main.sh",) and built.user == "root"
    with Sandbox.create(image=img, timeout=60, session=session) as sb:
        assert sh(sb, "pwd; cat /greeting /etc/conf.txt; sh main.sh") == (0, "/srv/app\nhi from test\nconf-v1\napp-ran\n")
    log.clear()
    img.build(session=session, output=log.append)
    assert "step-ran\n" not in log and "(cached)" in "".join(log)
    # a changed context file rebuilds from its step on
    (ctx / "conf.txt").write_text("conf-v2\n")
    log.clear()
    Image.from_dockerfile(df, build_args={"GREETING": "hi"}).build(session=session, output=log.append)
    assert "step-ran\n" in log
    # unsupported instructions: named, with their line
    df.write_text(f"FROM {registry.host}/dfbase:1\nRUN true\nHEALTHCHECK CMD true\n")
    with pytest.raises(ValueError, match=r"Dockerfile line 3: instruction HEALTHCHECK is not supported"):
        Image.from_dockerfile(df)
    df.write_text(f"FROM {registry.host}/dfbase:1\nADD https://example.com/x /x\n")
    with pytest.raises(ValueError, match=r"line 2: ADD of a URL"):
        Image.from_dockerfile(df)
    df.write_text(f"FROM {registry.host}/dfbase:1\nCOPY ../../etc/passwd /x\n")
    with pytest.raises(ValueError, match=r"line 2: COPY source .* outside the build context"):
        Image.from_dockerfile(df)


def test_token_auth_registry(session, registry, bb, tmp_path_factory):
    """Bearer tokens from a realm, as Docker Hub and most registries do it: the
    registry trusts the test's token server; the pull fetches a token with
    the credentials and retries."""
    from _oci import TokenServer

    base = tmp_path_factory.mktemp("token")
    ts = TokenServer(base, "bob", "tok-pw")
    # pushed through the open registry, pulled through a token-auth one on the same storage
    registry.push_image("tokened", "1", [bb, tar_layer([Entry("t.txt", data=b"via token")])])
    reg = start_registry(base / "reg", token=ts.config(), data=registry.root / "data")
    try:
        ref = f"{reg.host}/tokened:1"
        with pytest.raises(ImagePullError) as ei:  # the token server refuses anonymous requests
            Image.from_registry(ref).pull(session=session, progress=False)
        assert ei.value.status == 401
        good = Secret.from_dict({"REGISTRY_USERNAME": "bob", "REGISTRY_PASSWORD": "tok-pw"})
        with Sandbox.create(image=Image.from_registry(ref, secret=good), timeout=60, session=session) as sb:
            assert sh(sb, "cat /t.txt") == (0, "via token")
        assert any("scope=repository%3Atokened%3Apull" in r for r in ts.requests), ts.requests
    finally:
        stop_registry(reg)
        ts.stop()


def test_erofs_layer_storage(session, registry, bb):
    """The same layer semantics when layers are erofs images (the capture format)."""
    l2 = tar_layer([Entry("e", tarfile.DIRTYPE, mode=0o755), Entry("e/gone", data=b"1"), Entry("e/kept", data=b"2"),
                    Entry("e/l1", data=b"hl"), Entry("e/l2", tarfile.LNKTYPE, link="e/l1")])
    l3 = tar_layer([Entry("e", tarfile.DIRTYPE, mode=0o755), Entry("e/.wh.gone")])
    registry.push_image("erofs-layers", "1", [bb, tar_layer([Entry("erofs-marker", data=b"m")]), l2, l3])
    img = Image.from_registry(f"{registry.host}/erofs-layers:1", storage="erofs")
    res = img.pull(session=session, progress=False)
    meta = session.request("GET", f"/v1/snapshots/{res.snapshot_id}").result()["snapshot"]
    assert meta["storage"] == "erofs"
    with Sandbox.create(image=img, timeout=60, session=session) as sb:
        code, out = sh(sb, "ls /e; stat -c %h /e/l2; cat /erofs-marker")
        assert (code, out.split()) == (0, ["kept", "l1", "l2", "2", "m"])


def test_device_nodes_in_layers_are_not_created(session, registry, bb, runner):
    """The sandbox root is not nodev: a block device for the host's disk or a
    /dev/mem char device in an image would be a way out, so none is made."""
    disk = os.stat("/").st_dev
    import io as _io

    buf = _io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, typ, (ma, mi) in (("hostdisk", tarfile.BLKTYPE, (os.major(disk), os.minor(disk))), ("kmem", tarfile.CHRTYPE, (1, 1))):
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode, ti.devmajor, ti.devminor = typ, 0o666, ma, mi
            t.addfile(ti)
        ti = tarfile.TarInfo("fifo")
        ti.type = tarfile.FIFOTYPE
        t.addfile(ti)
    raw = buf.getvalue()
    registry.push_image("devnodes", "1", [bb, raw])
    with Sandbox.create(image=Image.from_registry(f"{registry.host}/devnodes:1"), timeout=60, session=session) as sb:
        code, out = sh(sb, "ls /hostdisk /kmem 2>&1; test -p /fifo && echo fifo-ok")
        assert "No such file or directory" in out and out.count("No such file") == 2 and "fifo-ok" in out


def test_tree_matches_what_umoci_unpacks(session, registry, bb, tmp_path):
    """The merged root a sandbox sees equals `skopeo copy` + `umoci unpack` of
    the same image: types, modes (set-id bits too), owners, sizes, link
    targets, hard links, whiteouts and opaque dirs applied."""
    import shutil
    import stat as st_
    import subprocess

    if not (shutil.which("skopeo") and shutil.which("umoci")):
        pytest.fail("needs skopeo and umoci (apt-get install skopeo umoci; ./dev test installs them)")
    l2 = tar_layer(
        [
            Entry("cmp", tarfile.DIRTYPE, mode=0o755),
            Entry("cmp/a", tarfile.DIRTYPE, mode=0o750, uid=7, gid=8),
            Entry("cmp/a/f1", data=b"one"),
            Entry("cmp/a/f2", data=b"two", mode=0o600, uid=1000, gid=1000),
            Entry("cmp/d", tarfile.DIRTYPE, mode=0o755),
            Entry("cmp/d/x", data=b"x"),
            Entry("cmp/h1", data=b"linked"),
            Entry("cmp/h2", tarfile.LNKTYPE, link="cmp/h1"),
            Entry("cmp/suid", data=b"#!/bin/sh\n", mode=0o4755),
            Entry("cmp/sgid-dir", tarfile.DIRTYPE, mode=0o2775, gid=50),
            Entry("cmp/abs", tarfile.SYMTYPE, link="/etc/os-release"),
            Entry("cmp/rel", tarfile.SYMTYPE, link="a/f2"),
        ]
    )
    l3 = tar_layer(
        [
            Entry("cmp", tarfile.DIRTYPE, mode=0o755),
            Entry("cmp/a", tarfile.DIRTYPE, mode=0o750, uid=7, gid=8),
            Entry("cmp/a/.wh.f1"),
            Entry("cmp/d", tarfile.DIRTYPE, mode=0o711),
            Entry("cmp/d/.wh..wh..opq"),
            Entry("cmp/d/y", data=b"yy", mode=0o640, uid=3, gid=4),
            Entry("cmp/new", data=b"n" * 5000),
        ]
    )
    registry.push_image("cmp", "1", [bb, l2, l3])
    ref = f"{registry.host}/cmp:1"
    oci, bundle = tmp_path / "oci", tmp_path / "bundle"
    subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{ref}", f"oci:{oci}:1"], check=True)
    subprocess.run(["umoci", "unpack", "--image", f"{oci}:1", str(bundle)], check=True, capture_output=True)
    root = bundle / "rootfs"
    want = set()
    for dirpath, dirs, files in os.walk(root / "cmp"):
        for n in dirs + files:
            p = Path(dirpath) / n
            s = os.lstat(p)
            link = os.readlink(p) if st_.S_ISLNK(s.st_mode) else ""
            size = s.st_size if st_.S_ISREG(s.st_mode) else 0
            want.add(("/" + str(p.relative_to(root)), s.st_mode, s.st_uid, s.st_gid, size, s.st_nlink if st_.S_ISREG(s.st_mode) else 0, link))
    with Sandbox.create(image=Image.from_registry(ref), timeout=60, session=session) as sb:
        code, out = sh(
            sb,
            "find /cmp -mindepth 1 | while read p; do "
            "echo \"$p|$(stat -c '%f|%u|%g|%s|%h|%F' \"$p\")|$(readlink \"$p\")\"; done",
        )
    assert code == 0, out
    got = set()
    for line in out.splitlines():
        p, mode, uid, gid, size, nlink, kind, link = line.split("|")
        m = int(mode, 16)
        reg = st_.S_ISREG(m)
        got.add((p, m, int(uid), int(gid), int(size) if reg else 0, int(nlink) if reg else 0, link))
    assert len(want) == 11 and any(m & 0o4000 for _, m, *_ in want)  # the whole tree, set-uid included
    assert got == want, (sorted(got - want), sorted(want - got))


def test_retries_on_503_429_and_resumes_a_cut_blob(session, registry, bb):
    """A registry answering 503 then 429 for every blob, and cutting the first
    transfer of each blob mid-body: the pull retries with backoff and resumes
    the cut blob with a Range request from where it stopped."""
    from _oci import FlakyProxy

    big = tar_layer([Entry("big", data=os.urandom(400_000))])
    registry.push_image("flaky", "1", [bb, big], compress="none")
    px = FlakyProxy(registry.host, fail=2, cut=100_000)
    try:
        ref = f"127.0.0.1:{px.port}/flaky:1"
        with Sandbox.create(image=Image.from_registry(ref, storage="erofs"), timeout=60, session=session) as sb:
            assert sh(sb, "wc -c < /big") == (0, "400000\n")
        blob_gets = [e for e in px.log if "/blobs/sha256:" in e[0]]
        assert [e[3] for e in blob_gets].count(503) >= 1 and [e[3] for e in blob_gets].count(429) >= 1
        resumed = [e for e in blob_gets if e[2] is not None]
        assert resumed and all(e[2].startswith("bytes=") and e[3] == 206 for e in resumed), blob_gets
        assert any(int(e[2][6:].rstrip("-")) >= 100_000 for e in resumed)  # from where the cut left off
    finally:
        px.stop()


def test_proxy_from_the_runners_environment(tmp_path, registry, bb):
    """libcurl in the runner honours http_proxy: a registry name that does not
    resolve is reached through the proxy, which sees the absolute URLs."""
    from _oci import FlakyProxy
    from conftest import start_runner, stop

    registry.push_image("proxied", "1", [bb, tar_layer([Entry("p.txt", data=b"through the proxy")])])
    px = FlakyProxy(registry.host, fail=0)
    (tmp_path / "r").mkdir()
    r = start_runner(tmp_path / "r", env={"http_proxy": f"http://127.0.0.1:{px.port}", "no_proxy": ""})
    s = sandlot.Session(r.url)
    try:
        ref = "registry.sandlot-test.invalid:5000/proxied:1"
        # not loopback and not insecure: HTTPS only (a CONNECT this proxy refuses), never a plain GET
        with pytest.raises(ImagePullError):
            Image.from_registry(ref, stall_timeout=5).pull(session=s, progress=False)
        assert px.log == []
        with Sandbox.create(image=Image.from_registry(ref, insecure=True), timeout=60, session=s) as sb:
            assert sh(sb, "cat /p.txt") == (0, "through the proxy")
        assert any(t.startswith("http://registry.sandlot-test.invalid:5000/v2/proxied/") for t, *_ in px.log), px.log
    finally:
        s.close()
        stop(r)
        px.stop()


def test_runner_wide_pull_limit(tmp_path, registry, bb):
    """--pull-max-bytes: the operator's ceiling; a request may lower it, not raise it."""
    from conftest import start_runner, stop

    registry.push_image("limited", "1", [bb])  # busybox: ~2 MB unpacked
    (tmp_path / "r").mkdir()
    r = start_runner(tmp_path / "r", extra=["--pull-max-bytes", "500000"])
    s = sandlot.Session(r.url)
    try:
        ref = f"{registry.host}/limited:1"
        with pytest.raises(ImagePullError) as ei:
            Image.from_registry(ref).pull(session=s, progress=False)
        assert ei.value.status == 422 and "limit of 500000" in str(ei.value)
        with pytest.raises(sandlot.InvalidArgumentError, match="--pull-max-bytes"):
            Image.from_registry(ref, max_bytes=10**9).pull(session=s, progress=False)
        assert list((Path(r.state_dir) / "snapshots").glob("sn-*")) == []
    finally:
        s.close()
        stop(r)


def test_registry_image_with_steps_registers(session, registry, bb):
    registry.push_image("stepbase", "1", [bb], config={"Env": ["PATH=/bin", "FROM_IMAGE=yes"], "WorkingDir": "/root"})
    img = Image.from_registry(f"{registry.host}/stepbase:1").run_commands("echo built > /built").env({"STEP": "1"})
    named = img.register(f"stepped-{registry.port}", session=session, output=lambda s: None)
    with Sandbox.create(image=named, timeout=60, session=session) as sb:
        assert sh(sb, "cat /built; echo $FROM_IMAGE $STEP; pwd") == (0, "built\nyes 1\n/root\n")
