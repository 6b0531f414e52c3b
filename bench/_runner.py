"""A private sandlotd for one benchmark run: its own socket, state dir and log
under a fresh 0700 temp dir, so a benchmark never touches (or measures) a
user's embedded runner, and each one can pass its own runner flags."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import sandlot


@dataclass
class PrivateRunner:
    proc: subprocess.Popen
    base: Path
    url: str

    @property
    def log(self) -> Path:
        return self.base / "log"

    def stop(self, timeout: float = 60) -> str:
        """SIGTERM, wait (SIGKILL after ``timeout``), remove the temp dir; the log text."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        shutil.rmtree(self.base, ignore_errors=True)
        return text


def start_runner(*flags: str, prefix: str = "sl-bench-") -> PrivateRunner:
    """Start the packaged sandlotd (or ``$SANDLOT_RUNNER_BIN``) with ``flags``;
    return once it answers ``GET /v1/health``. Exits with its log if it does not."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(base, 0o700)
    binary = os.environ.get("SANDLOT_RUNNER_BIN") or str(Path(sandlot.__file__).resolve().parent / "_bin" / "sandlotd")
    sock = base / "sandlotd.sock"
    cmd = [binary, "--socket", str(sock), "--state-dir", str(base / "state"), "--log-file", str(base / "log"), *flags]
    runner = PrivateRunner(subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True), base, f"unix://{sock}")
    probe = sandlot.Session(runner.url)
    deadline = time.monotonic() + 20
    try:
        while True:
            try:
                probe.health()
                return runner
            except sandlot.RunnerUnavailableError:
                if runner.proc.poll() is not None or time.monotonic() > deadline:
                    log = runner.stop(timeout=5)
                    raise SystemExit(f"sandlotd {' '.join(flags)} did not start:\n{log[-2000:]}") from None
                time.sleep(0.02)
    finally:
        probe.close()
