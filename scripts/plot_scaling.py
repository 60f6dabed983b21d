#!/usr/bin/env python3
"""Draws how sekimori's cost grows with the size of the city, as an SVG.

Input: the JSON that `cargo bench --bench decision` writes to
`target/bench-results/decision-scaling.json`. Output: `docs/benchmarks/scaling.svg` (or the
path given). Standard library only, so it runs anywhere Python 3 does:

    python3 scripts/plot_scaling.py [INPUT.json] [OUTPUT.svg]

Three panels share a logarithmic x axis (assets in the register): decision latency (median
and p99, µs), compile time (s) and the memory the snapshot holds (MiB), each on a
logarithmic y axis, with the SPEC §11 targets drawn as dashed lines.
"""

import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "target" / "bench-results" / "decision-scaling.json"
TARGET = ROOT / "docs" / "benchmarks" / "scaling.svg"

W, H = 300, 240  # one panel
PAD_L, PAD_R, PAD_T, PAD_B = 56, 14, 34, 46


def log_ticks(lo, hi):
    """Powers of ten covering [lo, hi]."""
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    return [10.0**e for e in range(a, b + 1)]


def fmt(v):
    if v >= 1000:
        return f"{v / 1000:g}k" if v < 1e6 else f"{v / 1e6:g}M"
    return f"{v:g}"


def panel(x0, title, unit, xs, series, target=None):
    """One panel at horizontal offset x0; series = [(label, values, colour)]."""
    values = [v for _, vs, _ in series for v in vs if v > 0]
    if target:
        values.append(target[1])
    yt = log_ticks(min(values), max(values))
    xt = log_ticks(min(xs), max(xs))
    lx0, lx1 = math.log10(xt[0]), math.log10(xt[-1])
    ly0, ly1 = math.log10(yt[0]), math.log10(yt[-1])
    pw, ph = W - PAD_L - PAD_R, H - PAD_T - PAD_B

    def px(x):
        return x0 + PAD_L + (math.log10(x) - lx0) / (lx1 - lx0) * pw

    def py(y):
        return PAD_T + ph - (math.log10(y) - ly0) / max(ly1 - ly0, 1e-9) * ph

    out = [f'<text x="{x0 + W / 2}" y="18" text-anchor="middle" font-weight="bold">{title}</text>']
    out.append(f'<rect x="{x0 + PAD_L}" y="{PAD_T}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>')
    for t in yt:
        y = py(t)
        out.append(f'<line x1="{x0 + PAD_L}" x2="{x0 + PAD_L + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{x0 + PAD_L - 4}" y="{y + 4:.1f}" text-anchor="end">{fmt(t)}</text>')
    for t in xt:
        x = px(t)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{PAD_T}" y2="{PAD_T + ph}" stroke="#eee"/>')
        out.append(f'<text x="{x:.1f}" y="{PAD_T + ph + 14}" text-anchor="middle">{fmt(t)}</text>')
    out.append(f'<text x="{x0 + PAD_L + pw / 2}" y="{H - 10}" text-anchor="middle">assets (log)</text>')
    out.append(
        f'<text transform="translate({x0 + 14},{PAD_T + ph / 2}) rotate(-90)" text-anchor="middle">{unit} (log)</text>'
    )
    if target:
        label, value = target
        y = py(value)
        out.append(
            f'<line x1="{x0 + PAD_L}" x2="{x0 + PAD_L + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#c00" stroke-dasharray="5,4"/>'
        )
        out.append(f'<text x="{x0 + PAD_L + 4}" y="{y - 4:.1f}" fill="#c00">{label}</text>')
    for i, (label, vs, colour) in enumerate(series):
        pts = " ".join(f"{px(x):.1f},{py(v):.1f}" for x, v in zip(xs, vs) if v > 0)
        out.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for x, v in zip(xs, vs):
            if v > 0:
                out.append(f'<circle cx="{px(x):.1f}" cy="{py(v):.1f}" r="3" fill="{colour}"/>')
        out.append(f'<text x="{x0 + PAD_L + pw - 4}" y="{PAD_T + 14 + 14 * i}" text-anchor="end" fill="{colour}">{label}</text>')
    return out


def main():
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else SOURCE
    target = Path(sys.argv[2]) if len(sys.argv) > 2 else TARGET
    data = json.loads(source.read_text())
    rows = sorted(data["scales"], key=lambda r: r["assets"])
    xs = [r["assets"] for r in rows]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{3 * W}" height="{H}" font-family="sans-serif" font-size="11">',
        f'<rect width="{3 * W}" height="{H}" fill="white"/>',
    ]
    parts += panel(
        0,
        "decision latency",
        "µs",
        xs,
        [("p99", [r["p99_us"] for r in rows], "#d62"), ("median", [r["median_us"] for r in rows], "#26c")],
        ("target median 5 µs", 5.0),
    )
    parts += panel(
        W,
        "compile time",
        "seconds",
        xs,
        [("compile", [r["compile_s"] for r in rows], "#26c"), ("load+validate", [r["load_s"] for r in rows], "#2a6")],
        ("target 5 s", 5.0),
    )
    parts += panel(
        2 * W,
        "memory held by the snapshot",
        "MiB",
        xs,
        [("snapshot", [max(r["snapshot_mib"], 0.1) for r in rows], "#26c")],
        ("target 1 GiB", 1024.0),
    )
    parts.append("</svg>")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(parts) + "\n")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
