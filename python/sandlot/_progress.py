"""Progress of many calls (``RemoteFunction.map(..., progress=True)``,
``as_completed(..., progress=True)``): done/total, rate, ETA and failures,
with the standard library only.

On a terminal one line is redrawn in place (at most 10 times a second);
otherwise a line is logged every ``every`` seconds and once at the end.

Example:
    >>> import io
    >>> out = io.StringIO()
    >>> p = CallProgress(2, out=out, tty=False)
    >>> p.finished(failed=False); p.finished(failed=True)
    >>> "2/2 calls done" in out.getvalue() and "1 failed" in out.getvalue()
    True
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, TextIO

__all__ = ["CallProgress", "watch"]


class CallProgress:
    """Counts finished calls and draws the bar (thread-safe: refs complete on
    the transport's threads)."""

    def __init__(self, total: int, out: TextIO | None = None, tty: bool | None = None, every: float = 5.0, what: str = "calls") -> None:
        self.total = total
        self.out = out if out is not None else sys.stderr
        self.tty = self.out.isatty() if tty is None else tty
        self.every = every
        self.what = what
        self.done = 0
        self.failed = 0
        self.t0 = time.monotonic()
        self.last = 0.0
        self.lock = threading.Lock()

    def line(self) -> str:
        el = max(time.monotonic() - self.t0, 1e-9)
        rate = self.done / el
        left = self.total - self.done
        eta = f"{left / rate:.0f}s" if rate > 0 and left else ("0s" if not left else "?")
        pct = 100 * self.done / self.total if self.total else 100
        fails = f", {self.failed} failed" if self.failed else ""
        if self.tty:
            width = 24
            fill = int(width * pct / 100)
            bar = "#" * fill + "." * (width - fill)
            return f"[{bar}] {self.done}/{self.total} {self.what} {pct:3.0f}% {rate:.1f}/s ETA {eta}{fails}"
        return f"[sandlot] {self.done}/{self.total} {self.what} done ({pct:.0f}%), {rate:.1f}/s, ETA {eta}{fails}"

    def finished(self, failed: bool) -> None:
        with self.lock:
            self.done += 1
            self.failed += bool(failed)
            now = time.monotonic()
            last = self.done == self.total
            if self.tty:
                if last or now - self.last >= 0.1:
                    self.out.write("\r\x1b[2K" + self.line() + ("\n" if last else ""))
                    self.out.flush()
                    self.last = now
            elif last or now - self.last >= self.every:
                self.out.write(self.line() + "\n")
                self.out.flush()
                self.last = now


def watch(refs: list[Any], out: TextIO | None = None, what: str = "calls") -> CallProgress:
    """Draw progress for refs as they complete (a done callback on each)."""
    p = CallProgress(len(refs), out=out, what=what)

    def cb(ref: Any) -> None:
        try:
            failed = ref.exception(0) is not None
        except BaseException:  # cancelled
            failed = True
        p.finished(failed)

    for r in refs:
        r.add_done_callback(cb)
    return p
