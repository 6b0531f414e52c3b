"""Write the seed corpus of tests/c/fuzz_request.c: request bodies as the
client sends them (python/sandlot: Sandbox.create, exec, files, function
registration), plus a few hostile ones. Run from anywhere:

    python tests/c/corpus/make_request_seeds.py

The files are committed; rerun after a protocol change (docs/protocol.md).
"""

from pathlib import Path

import msgpack

OUT = Path(__file__).resolve().parent / "request"

SEEDS = {
    "create-min": {"cmd": ["sleep", "60"]},
    "create-empty-cmd": {"cmd": []},
    "create-full": {
        "cmd": ["sh", "-c", "echo hi"],
        "image": "host",
        "env": {"A": "1", "PATH": "/usr/bin"},
        "secrets": {"TOKEN": "s3cr3t"},
        "workdir": "/tmp",
        "timeout": 30.5,
        "resources": {"cpu": 0.5, "memory": "512Mi", "pids": 256, "disk": "1Gi"},
        "volumes": {"/data": "vol-1"},
        "mounts": {"/etc/host-hosts": "/etc/hosts"},
        "network": {"egress": "none"},
        "ports": [8080],
    },
    "create-net": {"cmd": ["true"], "network": {"egress": "allow", "allow": ["10.0.0.0/8", "127.0.0.1"]},
                   "ports": [80, 443]},
    "create-snapshot": {"snapshot": "sn-0123456789abcdef", "env": {"X": "y"}},
    "create-s3": {"cmd": ["true"], "s3_mounts": [{"bucket": "b", "mount_path": "/s3", "endpoint": "http://127.0.0.1:9",
                                                  "read_only": True, "credentials": {"AWS_ACCESS_KEY_ID": "k"}}]},
    "create-bad-types": {"cmd": "not-a-list", "timeout": "soon", "env": ["A=1"], "resources": {"memory": -1}},
    "create-gpu": {"cmd": ["true"], "resources": {"gpu": "T4:2", "cpu": 1}},
    "create-gpu-count": {"cmd": ["true"], "resources": {"gpu": 1}},
    "create-microvm": {"cmd": ["true"], "isolation": "microvm", "resources": {"cpu": 2, "memory": "512Mi"}},
    "create-output": {"cmd": ["true"], "output_policy": "block", "output_keep": 65536},
    "exec": {"cmd": ["echo", "x"], "env": {"K": "V"}, "workdir": "/"},
    "files-write": {"path": "/tmp/x", "data": b"\x00\x01payload", "mode": 0o644},
    "function": {
        "name": "add",
        "spec": b"\x80\x05cloudpickle-bytes",
        "cmd": ["python3", "-c", "boot", "/w.py"],
        "image": None,
        "workdir": "/tmp",
        "env": {"PYTHONHASHSEED": "0"},
        "annotations": {"team": "x"},
        "min_workers": 0,
        "max_workers": 2,
        "options": {"resources": {"cpu": 1}, "network": None},
        "profile_names": ["p"],
        "mounts": ["/usr/lib/python3"],
    },
    "nested": {"a": {"b": {"c": [1, [2, [3, {"d": None}]]]}}},
}


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, body in SEEDS.items():
        (OUT / f"{name}.mp").write_bytes(msgpack.packb(body, use_bin_type=True))
    # Hostile headers: a map claiming 2^32-1 entries, an array of 2^32-1, a
    # str claiming 4 GiB, a non-map body, deep nesting past the limit.
    (OUT / "hostile-map32.mp").write_bytes(b"\xdf\xff\xff\xff\xff")
    (OUT / "hostile-arr32.mp").write_bytes(b"\x81\xa3cmd\xdd\xff\xff\xff\xff")
    (OUT / "hostile-str32.mp").write_bytes(b"\x81\xa3cmd\x91\xdb\xff\xff\xff\xff")
    (OUT / "not-a-map.mp").write_bytes(msgpack.packb(["cmd"]))
    (OUT / "too-deep.mp").write_bytes(b"\x81\xa1a" + b"\x91" * 40 + b"\xc0")


if __name__ == "__main__":
    main()
