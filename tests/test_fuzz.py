"""Bounded fuzzing runs in the suite: the runner's request decoding under
libFuzzer (tests/c/fuzz_request.c, clang) and the client's decoders of what
sandboxes and runners send back under atheris (tests/fuzz/fuzz_decoders.py).

Each run starts from the committed seed corpus, writes new inputs to a
scratch dir, and fails on the first crash, sanitizer report, leak or broken
property. ``./dev fuzz`` runs the same fuzzers for longer (FUZZ_SECONDS).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SECONDS = os.environ.get("SANDLOT_FUZZ_SECONDS", "20")


def _tail(p: subprocess.CompletedProcess) -> str:
    return (p.stdout + p.stderr)[-3000:]


@pytest.mark.skipif(shutil.which("clang") is None, reason="clang (Debian: clang, libclang-rt-14-dev) not installed")
def test_runner_request_decoding_survives_libfuzzer(tmp_path: Path) -> None:
    build = tmp_path / "build"
    env = {**os.environ, "BUILD": str(build)}
    env.pop("LD_PRELOAD", None)  # ./dev asan: the harness carries its own sanitizers
    p = subprocess.run(["make", "-s", "-C", str(ROOT / "tests/c"), f"BUILD={build}", "fuzz-request"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, _tail(p)
    scratch = tmp_path / "corpus"
    scratch.mkdir()
    p = subprocess.run(
        [str(build / "fuzz_request"), f"-max_total_time={SECONDS}", "-max_len=8192", "-detect_leaks=1",
         f"-artifact_prefix={tmp_path}/", str(scratch), str(ROOT / "tests/c/corpus/request")],
        capture_output=True, text=True, env=env, timeout=int(SECONDS) + 120,
    )
    assert p.returncode == 0, _tail(p)
    assert "Done" in p.stderr, _tail(p)
    # The harness ran the parsers (not only the decoder): coverage grew.
    assert int(p.stderr.rsplit("cov: ", 1)[1].split()[0]) > 500, _tail(p)


@pytest.mark.parametrize("target", ["unpackb", "rebuild", "chunk"])
def test_client_decoders_survive_atheris(target: str, tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="atheris (PyPI) not installed")
    scratch = tmp_path / "corpus"
    scratch.mkdir()
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    p = subprocess.run(
        [sys.executable, str(ROOT / "tests/fuzz/fuzz_decoders.py"), target, "-runs=30000",
         f"-artifact_prefix={tmp_path}/", str(scratch), str(ROOT / "tests/fuzz/corpus" / target)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert p.returncode == 0, _tail(p)
    assert "Done 30000 runs" in p.stderr, _tail(p)


@pytest.mark.parametrize("data", [b"", b"not json", b"[]", b"3", b'{"traceback": 5, "module": "builtins", "type": "ValueError", "args": 7}'])
def test_a_malformed_error_description_from_a_worker_is_a_remote_error(data: bytes) -> None:
    """Regression (found by atheris): code in the sandbox can shape what the
    worker sends; ``result()`` must still raise a sandlot exception."""
    import sandlot
    from sandlot.function import RemoteError

    fn = sandlot.function(lambda: 0)
    exc = fn._rebuild(data)
    assert isinstance(exc, (RemoteError, ValueError)), exc
    if data in (b"", b"not json", b"[]", b"3"):
        assert isinstance(exc, RemoteError) and "malformed error description" in str(exc)
