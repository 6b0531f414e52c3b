"""The runner API at the protocol level: every endpoint, garbage bodies, start-up
refusals, TCP tokens, the daemon path and shutdown, driven by tests/runner_smoke.py
against the sandlotd binary this package ships (real sockets, real sandboxes).

The smoke script starts its own runners (several per check, with odd flags), so
it runs as a subprocess; each of its checks is a separate pytest case here so a
failure names the check.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import runner_binary

SMOKE = Path(__file__).with_name("runner_smoke.py")


def _checks() -> list[str]:
    src = SMOKE.read_text()
    return [line.split("(")[0][len("def "):] for line in src.splitlines() if line.startswith("def test_")]


@pytest.mark.parametrize("check", _checks())
def test_runner_protocol(check: str) -> None:
    sandlotd = runner_binary()
    proc = subprocess.run(
        [sys.executable, str(SMOKE), "--sandlotd", sandlotd, "--init", str(Path(sandlotd).with_name("sandlot-init")),
         "-k", check],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, f"runner_smoke {check} failed:\n{proc.stdout}\n{proc.stderr}"
    summary = proc.stdout.strip().splitlines()[-1]
    assert summary.endswith("tests passed") and not summary.startswith("0/"), proc.stdout
