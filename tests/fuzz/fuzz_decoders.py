"""atheris harness for the client's decoders of what comes back from a runner
or a sandbox. Every one of them reads bytes that code inside a sandbox can
shape (a function's worker writes the results and error descriptions), so
each must turn any input into a value or a precise exception, never crash
the process or raise something a caller cannot expect.

Targets (first argument, or ``all``):

  unpackb   ``sandlot._core.unpackb`` (C, the runner's responses): a value or
            ``ValueError``/``TypeError``; a value re-encodes to bytes that
            decode to the same encoding (``packb(unpackb(packb(v)))``)
  rebuild   ``RemoteFunction._rebuild`` (a remote exception's JSON
            description, from the worker): always an exception instance
  chunk     ``_Chunk.done`` (a map chunk's outcome record): every ref of the
            chunk completes, with a value or an exception, never a hang

Run::

    .venv/bin/python tests/fuzz/fuzz_decoders.py unpackb -runs=100000 tests/fuzz/corpus/unpackb
    ./dev fuzz            # every fuzzer, for FUZZ_SECONDS each

tests/test_fuzz.py runs each target for a bounded number of inputs in CI.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    import sandlot
    from sandlot import _core
    from sandlot._calls import _Chunk
    from sandlot.function import RemoteFunction, Serialization

_fn = RemoteFunction(lambda *a: a, session=None, serialization=Serialization.JSON)  # type: ignore[arg-type]
_fn_pickle = RemoteFunction(lambda *a: a, session=None, serialization=Serialization.PICKLE)  # type: ignore[arg-type]


def t_unpackb(data: bytes) -> None:
    try:
        v = _core.unpackb(data)
    except (ValueError, TypeError):
        return
    enc = _core.packb(v)
    if _core.packb(_core.unpackb(enc)) != enc:
        raise AssertionError(f"unstable re-encoding of {data!r}")


def t_rebuild(data: bytes) -> None:
    for fn in (_fn, _fn_pickle):
        exc = fn._rebuild(data)
        if not isinstance(exc, BaseException):
            raise AssertionError(f"_rebuild returned {type(exc)} for {data!r}")


class _FakeClient:
    """_Chunk only calls the client to cancel; nothing is cancelled here."""

    def request(self, *a: object, **k: object) -> None:  # pragma: no cover
        raise AssertionError("unexpected request")


def t_chunk(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    n = fdp.ConsumeIntInRange(1, 8)
    status = "ok" if fdp.ConsumeBool() else fdp.ConsumeUnicodeNoSurrogates(8)
    payload = fdp.ConsumeBytes(fdp.remaining_bytes())
    ch = _Chunk(_fn, n, "call-x", _FakeClient(), None)  # type: ignore[arg-type]
    refs = [ch.batch.ref(i) for i in range(n)] if hasattr(ch.batch, "ref") else None
    ch.done({"status": status, "data": payload, "message": "m"})
    for i in range(n):
        try:
            ch.get(i)
        except Exception:  # noqa: BLE001 - any exception is an outcome; a crash is not
            pass
    del refs


TARGETS = {"unpackb": t_unpackb, "rebuild": t_rebuild, "chunk": t_chunk}


def write_seeds(root: str) -> None:
    """Seed corpora (``python fuzz_decoders.py --write-seeds DIR``): what the
    runner and a worker really send, so mutations start from valid input."""
    import json
    import os

    err = {"module": "builtins", "type": "ValueError", "message": "bad", "args": ["bad"],
           "traceback": "Traceback ...", "pickled": None}
    seeds = {
        "unpackb": [_core.packb(v) for v in (
            {"sandbox": {"sandbox_id": "sb-0123456789abcdef", "status": "running", "exit_code": None,
                         "created_at": 1.5, "env": {"A": "1"}}},
            {"calls": [{"call_id": "c-1", "status": "ok", "data": b"[1]"}], "pending": 0},
            [1, -1, 2**63 - 1, -(2**63), 1.25, True, None, "", b"", [], {}],
            {"error": {"code": "not_found", "message": "no sandbox"}},
        )],
        "rebuild": [json.dumps(err).encode(), json.dumps({**err, "module": "m", "type": "E"}).encode(),
                    b"[]", b"{}"],
        "chunk": [b"\x02\x01" + json.dumps(["OE", [1, json.dumps(err)]]).encode(), b"\x01\x00oops"],
    }
    for name, blobs in seeds.items():
        d = os.path.join(root, name)
        os.makedirs(d, exist_ok=True)
        for i, b in enumerate(blobs):
            with open(os.path.join(d, f"seed-{i}"), "wb") as f:
                f.write(b)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--write-seeds":
        write_seeds(sys.argv[2])
        return
    name = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else "all"
    argv = [sys.argv[0]] + [a for a in sys.argv[1:] if a != name]
    if name == "all":
        fns = list(TARGETS.values())

        def target(data: bytes) -> None:
            fns[data[0] % len(fns) if data else 0](data[1:])
    else:
        target = TARGETS[name]
    atheris.Setup(argv, target)
    atheris.Fuzz()


if __name__ == "__main__":
    sandlot.__name__  # imported for its side effects (error mapper)
    main()
