"""The worker process of a remote function (runs inside a sandbox).

Started by the runner as ``python -c <boot>`` that runs this file by path
(so the sandlot package, its C extension and its sibling module names are
not imported or put on ``sys.path``). Protocol (docs/protocol.md section 4),
on the process's original stdin/stdout:

* runner -> worker frames: ``uint32 BE length`` (of what follows), ``uint64 BE
  seq``, payload. The first frame (seq 0) is the *spec*: a pickle of a dict
  with the function (cloudpickle bytes), the serialization and ``sys.path``; every later frame is one call's arguments.
* worker -> runner frames: ``uint32 BE length``, a kind byte (``R`` ready,
  ``O`` result, ``E`` raised, ``F`` the function could not be loaded), ``uint64
  BE seq``, payload.

The protocol descriptors are moved away at start and fd 1 is pointed at fd 2,
so ``print`` in user code goes to the sandbox's stderr and can never corrupt a
frame. Calls run one at a time, in order; each result is written as soon as
it exists (one write per call), so a later call that kills the process cannot
take an earlier call's result with it. Input is read in large chunks, so a
pipelined batch of calls costs one read.

A call payload starting with a NUL byte is a chunk of ``map()`` items
(``_run_chunk``): the items run in order and their outcomes travel back in one
``O`` frame, each item's exception kept apart (docs/protocol.md section 4.3).

A payload starting with ``\x01`` is a *lease* (``\x01<socket name>\n<idle
seconds>``, csrc/runner/functions/fn_direct.c): the worker connects to that
unix socket in ``/run/sandlot-direct`` (the client's, bound read-only into the
sandbox) and serves calls there with the same frames until the client closes
it, or it has been idle that long (then it sends a ``B`` frame first, so the
client knows that calls it sent after that were not run); then it sends ``L``
to the runner and serves the runner again.
"""

import os
import struct
import sys
import traceback

HDR_IN = struct.Struct(">IQ")
HDR_OUT = struct.Struct(">IBQ")
#: A call payload starting with this byte is a chunk of map() items.
CHUNK_TAG = b"\x00"
#: A runner frame starting with this byte leases the worker to a client socket.
LEASE_TAG = b"\x01"
DIRECT_DIR = "/run/sandlot-direct"
#: A chunk's results must fit a frame (the runner's limit is 80 MiB).
CHUNK_RESULT_MAX = 64 << 20


def _describe_error(exc, pickle_ok):
    import json

    info = {
        "type": type(exc).__qualname__,
        "module": type(exc).__module__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        "args": None,
        "pickled": None,
    }
    try:
        json.dumps(list(exc.args))
        info["args"] = list(exc.args)
    except Exception:
        pass
    if pickle_ok:
        try:
            import pickle

            info["pickled"] = pickle.dumps(exc, protocol=5).hex()
        except Exception:
            pass
    return json.dumps(info).encode()


def _load_core():
    """sandlot._core from next to this file, without importing the sandlot
    package (whose import is much slower than a worker's start), or None."""
    import glob
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        for path in glob.glob(os.path.join(here, "_core" + suffix)):
            try:
                spec = importlib.util.spec_from_file_location("sandlot._core", path)
                mod = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(mod)
                return mod
            except Exception:  # noqa: BLE001 - another image's interpreter: plain json
                return None
    return None


def _codec(kind):
    if kind == "json":
        import json

        dumps = json.dumps
        fast = [None, False]  # json_dumps_fast, looked up

        def enc(v):
            # json.dumps's exact bytes; _core's C pass for plain data
            # (results of a map chunk), loaded on first use.
            if not fast[1]:
                fast[1] = True
                core = _load_core()
                fast[0] = getattr(core, "json_dumps_fast", None)
            if fast[0] is not None:
                out = fast[0](v)
                if out is not None:
                    return out
            return dumps(v, separators=(",", ":")).encode()

        return enc, json.loads
    if kind == "pickle":
        import pickle

        def enc(v):
            try:
                return pickle.dumps(v, protocol=5)
            except Exception:
                import cloudpickle

                return cloudpickle.dumps(v, protocol=5)

        return enc, pickle.loads
    if kind == "msgpack":
        from sandlot import _core

        return _core.packb, _core.unpackb
    raise ValueError(f"unknown serialization {kind!r}")


def _run_chunk(fn, dec, enc, payload, kind, pickle_errors):
    """Run a chunk ``[[args, ...], [kwargs, ...] | None]`` (or ``[[arg, ...],
    None, 1]`` when every item is one positional argument) in order; one
    ``O`` frame ``[kinds, values]``: kinds[i] "O" (values[i] is the result)
    or "E" (values[i] the JSON error description, as text)."""
    try:
        chunk = dec(payload[1:])
        items, kws = chunk[0], chunk[1]
        # [values, None, 1]: every item is one positional argument, sent as a
        # flat list (cheaper to decode than a list of one-item lists).
        flat = len(chunk) > 2 and chunk[2] == 1 and kws is None
        if kws is not None and len(kws) != len(items):
            raise ValueError(f"a map chunk of {len(items)} items with {len(kws)} kwargs")
    except BaseException as exc:  # noqa: BLE001
        return ord("E"), _describe_error(exc, pickle_errors)
    # One try per chunk, not per item: the loop restarts after an item that
    # raised (its error takes its place), so the usual all-ok chunk pays for
    # no per-item bookkeeping at all.
    values = []
    put = values.append
    failed = []
    n = len(items)
    while len(values) < n:
        start = len(values)
        try:
            if flat:
                for arg in items[start:] if start else items:
                    put(fn(arg))
            elif kws is None:
                for args in items[start:] if start else items:
                    put(fn(*args))
            else:
                for args, kw in zip(items[start:], kws[start:]):
                    put(fn(*args, **kw))
        except BaseException as exc:  # noqa: BLE001 - SystemExit too: the worker must live
            failed.append(len(values))
            put(_describe_error(exc, pickle_errors).decode())
    kinds = ["O"] * n
    for i in failed:
        kinds[i] = "E"
    try:
        data = enc(["".join(kinds), values])
    except BaseException:  # noqa: BLE001 - find the values that cannot travel
        for i, v in enumerate(values):
            if kinds[i] != "O":
                continue
            try:
                enc(v)
            except BaseException as exc:  # noqa: BLE001
                err = TypeError(
                    f"the return value of {getattr(fn, '__qualname__', fn)!s} (type "
                    f"{type(v).__name__}) cannot be serialized with Serialization."
                    f"{kind.upper()}: {exc}"
                )
                kinds[i] = "E"
                values[i] = _describe_error(err, pickle_errors).decode()
        try:
            data = enc(["".join(kinds), values])
        except BaseException as exc:  # noqa: BLE001
            return ord("E"), _describe_error(exc, pickle_errors)
    if len(data) > CHUNK_RESULT_MAX:
        err = RuntimeError(
            f"the results of this chunk of {len(items)} map() items are {len(data) >> 20} MiB, "
            f"more than the {CHUNK_RESULT_MAX >> 20} MiB one chunk may return; pass a smaller "
            "chunksize to map()"
        )
        return ord("E"), _describe_error(err, pickle_errors)
    return ord("O"), data


def _serve_direct(payload, run):
    """Serve a client's direct socket (a lease) until it closes or is idle."""
    import socket

    try:
        name, idle = payload[1:].decode().split("\n", 1)
        idle = max(1.0, float(idle))
        if "/" in name or name.startswith("."):
            return
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except (ValueError, OSError):
        return
    try:
        s.settimeout(5.0)
        s.connect(os.path.join(DIRECT_DIR, name))
        s.settimeout(idle)
        buf = bytearray()
        while True:
            if len(buf) >= 12:
                n, seq = HDR_IN.unpack_from(buf)
                if len(buf) >= 4 + n:
                    call = bytes(buf[12 : 4 + n])
                    del buf[: 4 + n]
                    kind_out, seq, data = run(call, seq)
                    s.sendall(HDR_OUT.pack(9 + len(data), kind_out, seq) + data)
                    continue
            try:
                chunk = s.recv(1 << 20)
            except socket.timeout:
                if not buf:  # idle: tell the client, then hand the worker back
                    s.sendall(HDR_OUT.pack(9, ord("B"), 0))
                    return
                continue
            if not chunk:
                return
            buf.extend(chunk)
    except OSError:
        return  # the client went away: back to the runner
    finally:
        s.close()


def main():
    pin = os.dup(0)
    pout = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    os.set_inheritable(pin, False)
    os.set_inheritable(pout, False)
    buf = bytearray()
    out = []

    def write_all(data):
        view = memoryview(data)
        while view:
            n = os.write(pout, view)
            view = view[n:]

    def flush():
        if out:
            write_all(b"".join(out))
            out.clear()

    def send(kind, seq, payload):
        out.append(HDR_OUT.pack(9 + len(payload), kind, seq))
        out.append(payload)

    def next_frame():
        """(seq, payload) of the next frame, or None at EOF."""
        while True:
            if len(buf) >= 12:
                n, seq = HDR_IN.unpack_from(buf)
                if len(buf) >= 4 + n:
                    payload = bytes(buf[12 : 4 + n])
                    del buf[: 4 + n]
                    return seq, payload
            # Nothing complete buffered: results must not wait for input.
            flush()
            chunk = os.read(pin, 1 << 20)
            if not chunk:
                return None
            buf.extend(chunk)

    first = next_frame()
    if first is None:
        return 0
    try:
        import pickle

        spec = pickle.loads(first[1])
        path = [p for p in spec.get("sys_path", []) if isinstance(p, str)]
        sys.path[:] = path or sys.path
        tmp = spec.get("temp_dir")
        if tmp:
            os.makedirs(tmp, exist_ok=True)
        if spec.get("cwd"):
            try:
                os.chdir(spec["cwd"])
            except OSError:
                pass
        fn = pickle.loads(spec["fn"])
        kind = spec.get("serialization", "json")
        enc, dec = _codec(kind)
    except BaseException as exc:  # noqa: BLE001 - reported to the client
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        send(ord("F"), 0, text.encode("utf-8", "replace"))
        flush()
        return 1
    pickle_errors = kind == "pickle"

    def run(payload, seq):
        """(kind, seq, data) of one call or chunk."""
        if payload[:1] == CHUNK_TAG:
            kind_out, data = _run_chunk(fn, dec, enc, payload, kind, pickle_errors)
            return kind_out, seq, data
        try:
            args, kwargs = dec(payload)
            result = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - SystemExit too: the worker must live
            return ord("E"), seq, _describe_error(exc, pickle_errors)
        try:
            return ord("O"), seq, enc(result)
        except BaseException as exc:  # noqa: BLE001
            err = TypeError(
                f"the return value of {getattr(fn, '__qualname__', fn)!s} (type "
                f"{type(result).__name__}) cannot be serialized with Serialization."
                f"{kind.upper()}: {exc}"
            )
            return ord("E"), seq, _describe_error(err, pickle_errors)

    send(ord("R"), 0, b"")
    flush()
    while True:
        frame = next_frame()
        if frame is None:
            flush()
            return 0
        seq, payload = frame
        if payload[:1] == LEASE_TAG:
            flush()
            _serve_direct(payload, run)
            send(ord("L"), seq, b"")
            flush()
            continue
        send(*run(payload, seq))
        # Written at once: a later call may kill the process (os._exit, a
        # segfault) before a batched write, and a finished call's result
        # must not die with it.
        flush()


if __name__ in ("__main__", "__sandlot_worker__"):
    sys.exit(main())
