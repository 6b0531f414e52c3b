"""Sandbox and SandboxProcess against a real runner: lifecycle, exec, I/O, files,
secrets, volumes and argument checking."""

from __future__ import annotations

import os
import time
import uuid

import pytest
import sandlot
from conftest import client_env, run_cli, run_python
from sandlot import Image, Sandbox, Secret, Volume


# -- exit codes and output -------------------------------------------------------
def test_entry_exit_code_and_output(session):
    with Sandbox.create("echo hi; echo oops >&2; exit 3", session=session) as sb:
        assert sb.wait() == 3
        assert sb.returncode == 3
        assert sb.stdout.read() == "hi\n"
        assert sb.stderr.read() == "oops\n"
        assert sb.info().status == "exited"


def test_exec_output_and_exit_codes(sandbox):
    p = sandbox.exec(["python3", "-c", "import sys; print(6 * 7); sys.exit(5)"])
    assert p.wait() == 5
    assert p.returncode == 5
    assert p.stdout.read() == "42\n"
    assert p.stderr.read() == ""
    assert p.process_id >= 1
    assert isinstance(p.pid, int) and p.pid > 1
    assert sandbox.exec("exit 0").wait() == 0
    # Death by signal is -N, like subprocess.
    assert sandbox.exec(["sh", "-c", "kill -TERM $$"]).wait() == -15


def test_read_bytes_and_undecodable_text(sandbox):
    p = sandbox.exec(["printf", "\\377ok\\n"])
    assert p.stdout.read_bytes() == b"\xffok\n"
    q = sandbox.exec(["printf", "\\377ok\\n"])
    assert q.stdout.read() == "\ufffdok\n"


def test_exec_shares_files_between_calls(sandbox):
    assert sandbox.exec("echo shared > /tmp/f.txt").wait() == 0
    p = sandbox.exec(["cat", "/tmp/f.txt"])
    assert p.stdout.read() == "shared\n"


def test_exec_shares_process_namespace_with_entry(session):
    with Sandbox.create(["sleep", "30"], session=session) as sb:
        p = sb.exec(["ps", "-eo", "pid,args"])
        out = p.stdout.read()
        assert p.wait() == 0
        assert "sleep 30" in out, out
        # ... and the entry command's pid is visible under /proc too.
        procs = sb.processes()
        entry = [x for x in procs if x.process_id == 0][0]
        assert entry.pid is not None
        assert sb.exec(["test", "-d", f"/proc/{entry.pid}"]).wait() == 0


def test_env_and_workdir(session):
    with Sandbox.create(env={"GREETING": "hello"}, workdir="/tmp", session=session) as sb:
        p = sb.exec('echo "$GREETING $(pwd)"')
        assert p.stdout.read() == "hello /tmp\n"
        q = sb.exec("echo $EXTRA; pwd", env={"EXTRA": "more"}, workdir="/etc")
        assert q.stdout.read() == "more\n/etc\n"


def test_missing_workdir_is_spawn_error(session, sandbox):
    with pytest.raises(sandlot.SpawnError, match="/no/such/dir"):
        Sandbox.create(["true"], workdir="/no/such/dir", session=session)
    with pytest.raises(sandlot.SpawnError, match="/no/such/dir"):
        sandbox.exec(["true"], workdir="/no/such/dir")


def test_missing_command_is_spawn_error_naming_it(session, sandbox):
    with pytest.raises(sandlot.SpawnError) as ei:
        Sandbox.create(["no-such-command-xyz", "arg"], session=session)
    assert "no-such-command-xyz" in str(ei.value)
    assert ei.value.code == "spawn_failed"
    with pytest.raises(sandlot.SpawnError, match="no-such-command-xyz"):
        sandbox.exec(["no-such-command-xyz"])


# -- wait / poll / timeout / terminate ---------------------------------------------
def test_wait_timeout_raises_builtin_timeout_error(session):
    with Sandbox.create(["sleep", "30"], session=session) as sb:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            sb.wait(timeout=0.5)
        assert 0.4 < time.monotonic() - t0 < 5
        assert sb.poll() is None
        p = sb.exec(["sleep", "30"])
        with pytest.raises(TimeoutError):
            p.wait(timeout=0.2)
        assert p.poll() is None
        assert p.returncode is None


def test_poll_while_running_and_after(session):
    with Sandbox.create("sleep 0.5; exit 4", session=session) as sb:
        assert sb.poll() is None
        assert sb.returncode is None
        assert sb.wait(timeout=20) == 4
        assert sb.poll() == 4
        assert sb.returncode == 4
        # A fresh handle polls the runner, not a cache.
        assert Sandbox.lookup(sb.sandbox_id, session=session).poll() == 4


def _host_children(pid: int) -> set:
    """Host pids of every descendant of pid (via /proc/*/stat ppid)."""
    parent = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        fields = raw[raw.rfind(b")") + 2 :].split()
        parent[int(name)] = int(fields[1])
    out, frontier = set(), {pid}
    while frontier:
        nxt = {c for c, p in parent.items() if p in frontier} - out
        out |= nxt
        frontier = nxt
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return False
    return raw[raw.rfind(b")") + 2 : raw.rfind(b")") + 3] not in (b"Z", b"X")


def test_terminate_kills_everything_and_is_idempotent(session):
    sb = Sandbox.create(["sleep", "300"], session=session)
    bg = sb.exec("sleep 1000 > /dev/null 2>&1 & echo $!")
    assert bg.wait() == 0
    init_pid = sb.info().pid
    assert init_pid is not None and _alive(init_pid)
    inside = _host_children(init_pid)
    assert len(inside) >= 2, inside  # the entry sleep and the background sleep at least
    sb.terminate()
    deadline = time.monotonic() + 10
    while (_alive(init_pid) or any(_alive(p) for p in inside)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(init_pid)
    assert not [p for p in inside if _alive(p)]
    sb.terminate()  # idempotent: the runner's 404 is swallowed
    Sandbox(sb.sandbox_id, session=session).terminate()
    assert sb.wait() == -9
    with pytest.raises(sandlot.NotFoundError):
        Sandbox.lookup(sb.sandbox_id, session=session)


def test_sandbox_timeout_kills(session):
    sb = Sandbox.create(["sleep", "30"], timeout=1, session=session)
    try:
        p = sb.exec(["sleep", "30"])
        t0 = time.monotonic()
        assert sb.wait(timeout=20) == -9
        assert time.monotonic() - t0 < 10
        assert sb.info().status == "timeout"
        assert p.wait(timeout=10) == -9
        with pytest.raises(sandlot.SandboxNotRunningError):
            sb.exec(["true"])
    finally:
        sb.terminate()


def test_idle_sandbox_without_entry_command(session):
    sb = Sandbox.create(session=session)
    assert sb.poll() is None
    assert sb.info().cmd is None
    assert sb.exec(["true"]).wait() == 0
    with pytest.raises(TimeoutError):
        sb.wait(timeout=0.3)
    sb.terminate()
    assert sb.poll() == -9


def test_context_manager_terminates(session):
    with Sandbox.create(["sleep", "60"], session=session) as sb:
        sid = sb.sandbox_id
    with pytest.raises(sandlot.NotFoundError):
        Sandbox.lookup(sid, session=session)


# -- lookup / list / not found -------------------------------------------------------
def test_lookup_from_a_second_process(runner, session):
    with Sandbox.create(["sleep", "60"], session=session) as sb:
        sb.write_file("/tmp/marker", "from the first process\n")
        code = (
            "import sandlot, sys\n"
            f"sb = sandlot.Sandbox.lookup({sb.sandbox_id!r})\n"
            "p = sb.exec(['cat', '/tmp/marker'])\n"
            "sys.stdout.write(p.stdout.read()); sys.exit(p.wait())\n"
        )
        r = run_python(code, client_env(runner))
        assert r.returncode == 0, r.stderr
        assert r.stdout == "from the first process\n"


def test_not_found_for_unknown_and_terminated_ids(session):
    with pytest.raises(sandlot.NotFoundError) as ei:
        Sandbox.lookup("sb-0000000000000000", session=session)
    assert ei.value.status == 404
    assert isinstance(ei.value, LookupError)
    sb = Sandbox.create(["sleep", "60"], session=session)
    sb.terminate()
    with pytest.raises(sandlot.NotFoundError):
        Sandbox.lookup(sb.sandbox_id, session=session)
    with pytest.raises(sandlot.NotFoundError):
        sb.exec(["true"])
    with pytest.raises(ValueError, match="not a sandbox id"):
        Sandbox.lookup("../health", session=session)


def test_list_and_repr(session):
    with Sandbox.create(["sleep", "60"], session=session) as sb:
        ids = [x.sandbox_id for x in Sandbox.list(session=session)]
        assert sb.sandbox_id in ids
        assert sb.sandbox_id in repr(sb) and "sleep" in repr(sb)
        info = sb.info()
        assert info.status == "running" and info.cmd == ("sleep", "60")
        assert info.image == "host" and info.timeout == 300.0
        assert sb.status == "running"
    assert sb.status == "terminated"
    assert sb.sandbox_id not in [x.sandbox_id for x in Sandbox.list(session=session)]


# -- secrets ---------------------------------------------------------------------------
SECRET_VALUE = "s3cr3t-" + uuid.uuid4().hex


def test_secrets_visible_inside_but_nowhere_else(runner, session, caplog):
    secret = Secret.from_dict({"MY_TOKEN": SECRET_VALUE})
    assert SECRET_VALUE not in repr(secret) and SECRET_VALUE not in str(secret)
    caplog.set_level("DEBUG", logger="sandlot")
    with Sandbox.create(["sleep", "60"], secrets=[secret], env={"PLAIN": "x"}, session=session) as sb:
        p = sb.exec('echo "$MY_TOKEN"')
        assert p.stdout.read() == SECRET_VALUE + "\n"
        info = sb.info()
        assert info.secret_names == ("MY_TOKEN",)
        assert "MY_TOKEN" not in info.env
        assert SECRET_VALUE not in repr(info) and SECRET_VALUE not in repr(sb)
        listed = Sandbox.list(session=session)
        assert SECRET_VALUE not in repr([x.info() for x in listed])
        ps = run_cli(["ps", "--no-trunc"], client_env(runner))
        assert ps.returncode == 0 and sb.sandbox_id in ps.stdout
        assert SECRET_VALUE not in ps.stdout + ps.stderr
        # The raw listing from the runner does not carry it either.
        raw = session.request("GET", "/v1/sandboxes").result()
        assert SECRET_VALUE.encode() not in sandlot._core.packb(raw)
    # Error messages: a command that mentions the value is scrubbed.
    with pytest.raises(sandlot.SpawnError) as ei:
        Sandbox.create([f"/nonexistent/{SECRET_VALUE}"], secrets=[secret], session=session)
    assert SECRET_VALUE not in str(ei.value) and "***" in str(ei.value)
    assert SECRET_VALUE not in caplog.text
    assert "POST /v1/sandboxes" in caplog.text


def test_secret_from_dict_rejects_bad_input():
    with pytest.raises(TypeError):
        Secret.from_dict(["A"])  # type: ignore[arg-type]
    with pytest.raises(TypeError) as ei:
        Secret.from_dict({"A": 12345678})  # type: ignore[dict-item]
    assert "12345678" not in str(ei.value)
    with pytest.raises(ValueError):
        Secret.from_dict({"1BAD": "x"})


# -- volumes / files -----------------------------------------------------------------------
def test_volumes_persist_across_sandboxes(session):
    name = "vol-" + uuid.uuid4().hex[:12]
    vol = Volume.from_name(name, session=session)
    assert vol.name == name
    with Sandbox.create("echo persisted > /mnt/data/f.txt", volumes={"/mnt/data": vol}, session=session) as sb:
        assert sb.wait() == 0
        assert sb.info().volumes == {"/mnt/data": name}
    with Sandbox.create(["cat", "/mnt/data/f.txt"], volumes={"/mnt/data": vol}, session=session) as sb2:
        assert sb2.wait() == 0
        assert sb2.stdout.read() == "persisted\n"
    assert name in [v.name for v in Volume.list(session=session)]
    with pytest.raises(sandlot.NotFoundError):
        Volume.from_name("missing-" + uuid.uuid4().hex[:8], create_if_missing=False, session=session)
    vol.delete()
    assert name not in [v.name for v in Volume.list(session=session)]


def test_read_and_write_files(sandbox):
    assert sandbox.write_file("/tmp/a.bin", b"\x00\x01binary") == 8
    assert sandbox.read_file("/tmp/a.bin") == b"\x00\x01binary"
    sandbox.write_file("/tmp/t.sh", "#!/bin/sh\necho run\n", mode=0o755)
    p = sandbox.exec(["/tmp/t.sh"])
    assert p.stdout.read() == "run\n"
    assert sandbox.exec(["stat", "-c", "%a", "/tmp/t.sh"]).stdout.read() == "755\n"
    sandbox.exec("echo from-exec > /tmp/e.txt").wait()
    assert sandbox.read_file("/tmp/e.txt") == b"from-exec\n"
    big = os.urandom(3 << 20)
    sandbox.write_file("/tmp/big", big)
    assert sandbox.read_file("/tmp/big") == big
    with pytest.raises(sandlot.NotFoundError):
        sandbox.read_file("/tmp/does-not-exist")
    with pytest.raises(ValueError):
        sandbox.read_file("relative/path")
    with pytest.raises(TypeError):
        sandbox.write_file("/tmp/x", 123)  # type: ignore[arg-type]


# -- stdin / streaming -------------------------------------------------------------------------
def test_stdin_to_cat(sandbox):
    p = sandbox.exec(["cat"])
    assert p.stdin.write("hello ") == 6
    p.stdin.write(b"world\n")
    p.stdin.close()
    p.stdin.close()  # idempotent
    assert p.wait(timeout=20) == 0
    assert p.stdout.read() == "hello world\n"
    with pytest.raises(ValueError, match="closed"):
        p.stdin.write("more")


def test_streaming_lines_arrive_while_running(sandbox):
    code = "import time\nfor i in range(5):\n    print('line', i, flush=True)\n    time.sleep(0.2)\n"
    p = sandbox.exec(["python3", "-c", code])
    lines = []
    first_at_running = None
    for line in p.stdout:
        if first_at_running is None:
            first_at_running = p.poll() is None
        lines.append(line)
    assert lines == [f"line {i}\n" for i in range(5)]
    assert first_at_running is True
    assert p.wait() == 0


def test_iter_bytes_and_read_position(sandbox):
    p = sandbox.exec("printf 'a\\nb\\nc'")
    it = iter(p.stdout)
    assert next(it) == "a\n"
    # read() continues from where the iteration stopped.
    assert p.stdout.read() == "b\nc"
    assert p.stdout.read() == ""
    assert p.stdout.at_eof
    q = sandbox.exec("head -c 300000 /dev/zero")
    chunks = list(q.stderr.iter_bytes()) + []
    assert chunks == []
    assert sum(len(c) for c in q.stdout.iter_bytes()) == 300000


# -- argument checking -----------------------------------------------------------------------
def test_bad_arguments_raise_before_sending(session, sandbox):
    with pytest.raises(TypeError, match="cmd"):
        Sandbox.create(42, session=session)
    with pytest.raises(TypeError, match=r"cmd\[1\]"):
        Sandbox.create(["echo", 3], session=session)
    with pytest.raises(ValueError, match="empty"):
        Sandbox.create("   ", session=session)
    for bad in (0, -1, 86401, float("nan")):
        with pytest.raises(ValueError, match="timeout"):
            Sandbox.create(timeout=bad, session=session)
    with pytest.raises(TypeError, match="timeout"):
        Sandbox.create(timeout="10", session=session)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="absolute"):
        Sandbox.create(workdir="tmp", session=session)
    with pytest.raises(TypeError, match="image"):
        Sandbox.create(image="host", session=session)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Secret"):
        Sandbox.create(secrets=[{"A": "b"}], session=session)  # type: ignore[list-item]
    with pytest.raises(TypeError, match="list"):
        Sandbox.create(secrets=Secret.from_dict({"A": "b"}), session=session)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Volume"):
        Sandbox.create(volumes={"/mnt": "name"}, session=session)  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="env"):
        Sandbox.create(env={"A": 1}, session=session)  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="SandboxSnapshot"):
        Sandbox.create(snapshot=object(), session=session)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="exec"):
        sandbox.exec([])
    with pytest.raises(ValueError, match="exec"):
        sandbox.exec()
    with pytest.raises(ValueError, match="absolute"):
        sandbox.exec(["ls"], workdir="relative")
    with pytest.raises(ValueError, match="timeout"):
        sandbox.wait(timeout=-1)
    assert sandbox.snapshot().kind == "filesystem"  # tests/test_snapshot.py has the rest
    with pytest.raises(TypeError, match="session"):
        Sandbox.create(session="nope")  # type: ignore[arg-type]


def test_runner_rejects_what_only_it_can_check(session):
    with pytest.raises(sandlot.NotFoundError):
        Sandbox.create(["true"], image=Image.named("no-such-image"), session=session)
    with pytest.raises(sandlot.SandboxError):
        Sandbox.create(["true"], image=Image.from_directory("/no/such/rootfs"), session=session)
    with pytest.raises(sandlot.InvalidArgumentError) as ei:
        session.request("POST", "/v1/sandboxes", {"timeout": "soon"}).result()
    assert isinstance(ei.value, ValueError) and "timeout" in str(ei.value)


def _mini_rootfs(root) -> None:
    """A tiny root filesystem: /bin/cat and /bin/sh with the libraries they link."""
    import shutil
    import subprocess

    for d in ("bin", "etc", "tmp", "proc", "dev", "sys", "run", "var/tmp", "dev/shm"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for prog in ("/bin/cat", "/bin/sh"):
        real = os.path.realpath(prog)
        shutil.copy2(real, root / "bin" / os.path.basename(prog))
        ldd = subprocess.run(["ldd", real], capture_output=True, text=True).stdout
        for tok in ldd.split():
            if tok.startswith("/") and os.path.exists(tok):
                dest = root / tok.lstrip("/")
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(os.path.realpath(tok), dest)


def test_image_from_directory(session, tmp_path):
    root = tmp_path / "rootfs"
    _mini_rootfs(root)
    (root / "etc" / "marker").write_text("from the image\n")
    with Sandbox.create(
        "cat /etc/marker; test -e /usr/bin/python3 || echo no-python",
        image=Image.from_directory(str(root)),
        session=session,
    ) as sb:
        assert sb.wait() == 0, sb.stderr.read()
        assert sb.stdout.read() == "from the image\nno-python\n"
        assert sb.info().image == f"dir:{root}"
    assert not (root / "tmp" / "x").exists()
