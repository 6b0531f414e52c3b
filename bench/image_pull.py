"""Pulling an image from a local registry: sandlot vs skopeo + umoci, and
sandbox starts from the pulled image vs from the host root, in one run.

The image: busybox-static plus LAYERS layers of real files copied from the
host's /usr (about MB megabytes uncompressed in all, gzip level 6 as docker
writes them), pushed to Debian's docker-registry on 127.0.0.1.

Measured ROUNDS times each, interleaved:
  sandlot  Image.from_registry(ref).pull() on a runner with an empty store
           (a fresh private sandlotd per round): manifest, config, every blob
           downloaded and digest-checked, unpacked, stored as the read-only
           layers sandboxes start from (erofs images here)
  peer     skopeo copy docker://... oci:<dir> (download, verify) then
           umoci unpack (a runtime bundle's rootfs directory), as root
then, on the last sandlot runner:
  first    Sandbox.create(image=that image) + exec true (layers mounted now)
  second   the same again (what every later sandbox pays)
  host     the same from the host root (Image.host()), for comparison

Usage: python bench/image_pull.py [--mb 200] [--layers 4] [--rounds 3] [--json]
Target (issue 10): sandlot pull+unpack <= 1.0x skopeo copy + umoci unpack.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from _oci import busybox_layer, start_registry, stop_registry  # noqa: E402
from _runner import start_runner  # noqa: E402


def host_layers(mb: int, n: int) -> list[bytes]:
    """n tar layers of regular files and symlinks from /usr, ~mb MB in all."""
    budget = mb * 1_000_000 // n
    layers, cur, size = [], io.BytesIO(), 0
    tf = tarfile.open(fileobj=cur, mode="w", format=tarfile.PAX_FORMAT)
    for top in ("/usr/lib", "/usr/share", "/usr/bin"):
        for dirpath, dirnames, files in os.walk(top):
            dirnames.sort()
            for name in sorted(files):
                p = os.path.join(dirpath, name)
                try:
                    st = os.lstat(p)
                except OSError:
                    continue
                if not (os.path.isfile(p) or os.path.islink(p)) or st.st_size > 20_000_000:
                    continue
                try:
                    tf.add(p, arcname=p.lstrip("/"), recursive=False)
                except OSError:
                    continue
                size += st.st_size if not os.path.islink(p) else 0
                if size >= budget:
                    tf.close()
                    layers.append(cur.getvalue())
                    if len(layers) == n:
                        return layers
                    cur, size = io.BytesIO(), 0
                    tf = tarfile.open(fileobj=cur, mode="w", format=tarfile.PAX_FORMAT)
    tf.close()
    layers.append(cur.getvalue())
    return layers


def push(reg, repo: str, layers: list[bytes]) -> None:
    """Push with gzip -6 (what docker writes); the registry's API as usual."""
    descs, diffs = [], []
    for raw in layers:
        diffs.append("sha256:" + hashlib.sha256(raw).hexdigest())
        blob = gzip.compress(raw, compresslevel=6, mtime=0)
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": reg.push_blob(repo, blob), "size": len(blob)})
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Env": ["PATH=/bin:/usr/bin"]}, "rootfs": {"type": "layers", "diff_ids": diffs}}).encode()
    cdesc = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": reg.push_blob(repo, cfg), "size": len(cfg)}
    reg.push_manifest(repo, "1", {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": cdesc, "layers": descs}, "application/vnd.oci.image.manifest.v1+json")


def peer_round(ref: str, work: Path) -> float:
    oci, bundle = work / "oci", work / "bundle"
    t0 = time.perf_counter()
    subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{ref}", f"oci:{oci}:1"], check=True)
    subprocess.run(["umoci", "unpack", "--image", f"{oci}:1", str(bundle)], check=True, stdout=subprocess.DEVNULL)
    dt = time.perf_counter() - t0
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    return dt


def start_time(sess, image) -> float:
    from sandlot import Sandbox

    t0 = time.perf_counter()
    sb = Sandbox.create(image=image, timeout=120, session=sess)
    p = sb.exec(["true"])
    code = p.wait()
    dt = time.perf_counter() - t0
    sb.terminate()
    assert code == 0
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    import sandlot
    from sandlot import Image

    for tool in ("skopeo", "umoci"):
        if shutil.which(tool) is None:
            sys.exit(f"needs {tool} (apt-get install {tool})")
    tmp = Path(tempfile.mkdtemp(prefix="sl-bench-pull-"))
    reg = start_registry(tmp / "registry")
    try:
        layers = [busybox_layer()] + host_layers(a.mb, a.layers)
        raw = sum(len(l) for l in layers)
        push(reg, "big", layers)
        ref = f"{reg.host}/big:1"
        print(f"image: {len(layers)} layers, {raw / 1e6:.0f} MB uncompressed, ref {ref}", file=sys.stderr)
        work = tmp / "peer"
        work.mkdir()
        m: dict[str, list[float]] = {"sandlot": [], "peer": [], "first": [], "second": [], "host": []}
        runner = None
        for i in range(a.rounds):
            if runner is not None:
                runner.stop()
            runner = start_runner()
            sess = sandlot.Session(runner.url)
            t0 = time.perf_counter()
            Image.from_registry(ref).pull(session=sess, progress=False)
            m["sandlot"].append(time.perf_counter() - t0)
            m["peer"].append(peer_round(ref, work))
            print(f"round {i + 1}: sandlot {m['sandlot'][-1]:.2f} s, skopeo+umoci {m['peer'][-1]:.2f} s", file=sys.stderr)
            if i < a.rounds - 1:
                sess.close()
        img = Image.from_registry(ref)
        m["first"].append(start_time(sess, img))
        for _ in range(5):
            m["second"].append(start_time(sess, img))
            m["host"].append(start_time(sess, Image.host()))
        sess.close()
        runner.stop()
    finally:
        stop_registry(reg)
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in m.items()}
    res = {
        "image_mb": round(raw / 1e6),
        "layers": len(layers),
        "median_s": {k: round(v, 3) for k, v in med.items()},
        "pull_ratio_sandlot_over_peer": round(med["sandlot"] / med["peer"], 2),
        "second_start_over_host": round(med["second"] / med["host"], 2),
        "loadavg": open("/proc/loadavg").read().strip(),
    }
    if a.json:
        print(json.dumps(res))
        return
    print(f"pull+unpack {res['image_mb']} MB ({res['layers']} layers), median of {a.rounds}:")
    print(f"  sandlot            {med['sandlot']:.2f} s")
    print(f"  skopeo + umoci     {med['peer']:.2f} s")
    print(f"  ratio              {res['pull_ratio_sandlot_over_peer']:.2f}x (target <= 1.0)")
    print("sandbox start (create + exec true), median:")
    print(f"  first from image   {med['first'] * 1000:.0f} ms")
    print(f"  second from image  {med['second'] * 1000:.0f} ms")
    print(f"  from host root     {med['host'] * 1000:.0f} ms  (second/host {res['second_start_over_host']:.2f}x)")
    print(f"loadavg {res['loadavg']}")


if __name__ == "__main__":
    main()
