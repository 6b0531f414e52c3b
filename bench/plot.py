"""Draw one PNG per benchmark from the raw figures in ``bench/out/*.json``.

    python bench/plot.py [NAME ...]      # default: every bench/out/*.json

Each ``bench/out/<name>.json`` (written by ``_out.save``) becomes
``bench/plots/<name>.png``: one panel per entry of its ``plots`` list
(``cdf``: latency distributions, ``bars``: throughput against the peers with
min..max error bars, ``curve``: e.g. density), and a footer with the command,
date and load average, so a plot is never read without its conditions.
matplotlib is a benchmark-only dependency (``./dev bench`` installs it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
PLOTS = HERE / "plots"


def _cdf(ax: Any, p: dict[str, Any]) -> None:
    for label, xs in p["series"].items():
        xs = sorted(x for x in xs if x is not None)
        if not xs:
            continue
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        ax.step(xs, ys, where="post", label=f"{label} (n={p.get('n', {}).get(label, len(xs))})")
    ax.set_xlabel(p.get("xlabel", ""))
    ax.set_ylabel("fraction of samples <= x")
    ax.set_ylim(0, 1.01)
    # Tails of a shared machine stretch the axis: log when they do.
    allx = [x for xs in p["series"].values() for x in xs if x]
    if allx and min(allx) > 0 and max(allx) / min(allx) > 50:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _bars(ax: Any, p: dict[str, Any]) -> None:
    labels, mids, lo, hi = [], [], [], []
    for label, v in p["values"].items():
        if v is None:
            continue
        if isinstance(v, (list, tuple)):
            a, m, b = v
        else:
            a = m = b = v
        labels.append(label)
        mids.append(m)
        lo.append(m - a)
        hi.append(b - m)
    colors = ["tab:blue" if i == 0 else "tab:gray" for i in range(len(labels))]
    ax.bar(range(len(labels)), mids, yerr=[lo, hi], capsize=4, color=colors)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(p.get("ylabel", ""))
    for i, m in enumerate(mids):
        ax.annotate(f"{m:,.0f}" if abs(m) >= 100 else f"{m:.3g}", (i, m), ha="center", va="bottom", fontsize=7)
    if p.get("note"):
        ax.text(0.01, 0.99, p["note"], transform=ax.transAxes, va="top", fontsize=7)
    ax.grid(axis="y", alpha=0.3)


def _curve(ax: Any, p: dict[str, Any]) -> None:
    for label, pts in p["series"].items():
        pts = sorted(pts)
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=label)
    ax.set_xlabel(p.get("xlabel", ""))
    ax.set_ylabel(p.get("ylabel", ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


DRAW = {"cdf": _cdf, "bars": _bars, "curve": _curve}


def plot(path: Path) -> Path | None:
    """Draw ``path`` (a bench/out JSON); the PNG written, or None without panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    doc = json.loads(path.read_text())
    panels = [p for p in doc.get("plots", []) if p.get("kind") in DRAW]
    if not panels:
        print(f"{path.name}: no plots described, skipped")
        return None
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.9 * rows + 0.6), squeeze=False)
    for ax, p in zip([a for r in axes for a in r], panels):
        DRAW[p["kind"]](ax, p)
        ax.set_title(p.get("title", ""), fontsize=9)
    for ax in [a for r in axes for a in r][len(panels):]:
        ax.axis("off")
    fig.suptitle(doc.get("name", path.stem), fontsize=11)
    fig.text(0.01, 0.005, f"{doc.get('command', '')} | {doc.get('finished', '')} | "
             f"loadavg {doc.get('loadavg_start', '?')} -> {doc.get('loadavg_end', '?')} | {doc.get('machine', '')}",
             fontsize=6, va="bottom")
    fig.tight_layout(rect=(0, 0.03, 1, 0.95))
    PLOTS.mkdir(exist_ok=True)
    out = PLOTS / f"{path.stem}.png"
    fig.savefig(out, dpi=90)
    plt.close(fig)
    try:
        shown = out.relative_to(HERE.parent)
    except ValueError:  # PLOTS pointed elsewhere
        shown = out
    print(f"{path.name} -> {shown}")
    return out


def main(argv: list[str]) -> int:
    paths = [OUT / f"{n}.json" for n in argv] if argv else sorted(OUT.glob("*.json"))
    missing = [p for p in paths if not p.exists()]
    for p in missing:
        print(f"{p}: no such file (run the benchmark first)", file=sys.stderr)
    for p in paths:
        if p.exists():
            plot(p)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
