#!/usr/bin/env python3
"""Aggregates bench_compare.sh's results.jsonl: medians over rounds per (config, impl), a Markdown
table with the ratios ours/PyTorch and ours/candle-nn, a table against ONNX Runtime and OpenVINO
(ours / the best of them) when they ran, and an SVG bar chart of ms per config."""
import argparse
import collections
import json
import statistics

ORDER = ["small", "medium", "large", "long", "medium_varlen"]
IMPLS = ["ours", "pytorch", "candle-nn", "onnxruntime", "openvino"]
RUNTIMES = ["onnxruntime", "openvino"]
COLORS = {"ours": "#d9480f", "pytorch": "#1c7ed6", "candle-nn": "#868e96",
          "onnxruntime": "#2f9e44", "openvino": "#7048e8"}


def load(path):
    runs = collections.defaultdict(list)
    extra = {}
    for line in open(path):
        line = line.strip()
        if not line:
            continue
        r = json.loads(line)
        if r.get("impl") == "sgemm":
            extra["sgemm"] = r
            continue
        runs[(r["config"], r["impl"])].append(r)
        if r["impl"] == "pytorch":
            extra["torch_version"] = r.get("torch_version")
        if r["impl"] in RUNTIMES:
            extra[r["impl"]] = r.get("version")
    return runs, extra


def med(rs, key):
    return statistics.median(r[key] for r in rs)


def table(runs, extra):
    sg = extra.get("sgemm")
    lines = ["| config | ours ms | PyTorch ms | candle-nn ms | ours/PyTorch | ours/candle-nn | ours GFLOP/s | ours peak MB |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for c in ORDER:
        o, p, n = (runs.get((c, i)) for i in ["ours", "pytorch", "candle-nn"])
        if not o:
            continue
        om = med(o, "median_ms")
        pm = med(p, "median_ms") if p else None
        nm = med(n, "median_ms") if n else None
        gf = med(o, "gflops")
        peak = max(r.get("peak_mem_mb") or 0 for r in o)
        fmt = lambda v: f"{v:.3f}" if v is not None and v < 1 else (f"{v:.1f}" if v is not None else "-")
        lines.append(
            f"| {c} | {fmt(om)} | {fmt(pm)} | {fmt(nm)} | "
            f"{(om / pm):.2f} | " if pm else f"| {c} | {fmt(om)} | - | {fmt(nm)} | - | ")
        lines[-1] += (f"{(om / nm):.3f} | " if nm else "- | ") + f"{gf:.1f} | {peak:.0f} |"
    out = "\n".join(lines)
    if sg:
        large = runs.get(("large", "ours"))
        share = f"; large reaches {100 * med(large, 'gflops') / sg['gflops']:.0f} % of it" if large else ""
        out += f"\n\ncandle sgemm {sg['size']}^3 in the same run: {sg['gflops']:.1f} GFLOP/s{share}."
    if extra.get("torch_version"):
        out += f"\n\nPyTorch {extra['torch_version']}."
    if any(i in RUNTIMES for (_, i) in runs):
        out += "\n\n" + runtimes_table(runs, extra)
    if any(i == "ours-prev" for (_, i) in runs):
        out += "\n\n" + prev_table(runs)
    if any("@" in i for (_, i) in runs):
        out += "\n\n" + levels_table(runs)
    if any(c.startswith("stream") for (c, _) in runs):
        out += "\n\n" + stream_table(runs)
    return out


def prev_table(runs):
    """This build against an older one (GRU_PREV), same run."""
    lines = ["| config | ours ms | previous build ms | ours / previous |", "| --- | ---: | ---: | ---: |"]
    for c in ORDER + sorted({c for (c, _) in runs if c.startswith("stream_") and c != "stream_model"}):
        if (c, "ours") in runs and (c, "ours-prev") in runs:
            a, b = med(runs[(c, "ours")], "median_ms"), med(runs[(c, "ours-prev")], "median_ms")
            lines.append(f"| {c} | {a:.3f} | {b:.3f} | {a / b:.2f} |")
    return "\n".join(lines)


def levels_table(runs):
    """Our kernel at each SIMD level the CPU has (GRU_CPU_LEVEL), against its best level."""
    best = next((r.get("cpu_level") for (c, i), rs in runs.items() if i == "ours" for r in rs), "?")
    levels = sorted({i.split("@")[1] for (_, i) in runs if i.startswith("ours@")})
    cols = [best] + levels
    lines = ["| config | " + " | ".join(f"{l} ms" for l in cols) + " | "
             + " | ".join(f"{l} / {best}" for l in levels) + " |",
             "| --- |" + " ---: |" * (2 * len(cols) - 1)]
    cell = lambda v: "-" if v is None else (f"{v:.3f}" if v < 10 else f"{v:.1f}")
    for c in ORDER:
        if (c, "ours") not in runs:
            continue
        om = med(runs[(c, "ours")], "median_ms")
        ms = [med(runs[(c, f"ours@{l}")], "median_ms") if (c, f"ours@{l}") in runs else None
              for l in levels]
        lines.append(f"| {c} | {cell(om)} | " + " | ".join(cell(m) for m in ms) + " | "
                     + " | ".join("-" if m is None else f"{m / om:.2f}" for m in ms) + " |")
    return "\n".join(lines)


def stream_table(runs):
    """One frame per call at batch 1: microseconds per frame."""
    lines = ["| streaming, us per frame | ours | PyTorch | ONNX Runtime | ours / PyTorch | ours / ONNX Runtime |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for c in sorted({c for (c, _) in runs if c.startswith("stream_") and c != "stream_model"}):
        v = [med(runs[(c, i)], "frame_us") if (c, i) in runs else None
             for i in ["ours", "pytorch", "onnxruntime"]]
        cell = lambda x: "-" if x is None else f"{x:.2f}"
        ratio = lambda x: "-" if x is None or v[0] is None else f"{v[0] / x:.3f}"
        lines.append(f"| {c} | {cell(v[0])} | {cell(v[1])} | {cell(v[2])} | {ratio(v[1])} | {ratio(v[2])} |")
    d, s = runs.get(("stream_model", "ours-default-env")), runs.get(("stream_model", "ours-threads-set"))
    if d and s:
        lines += ["", "| Linear -> 2-layer GRU -> GRUCell -> Linear, us per frame | RAYON_NUM_THREADS unset | set | unset / set |",
                  "| --- | ---: | ---: | ---: |"]
        for key, what in [("frame_us", "whole model"), ("gru_frame_us", "the GRU's forward_chunk")]:
            a, b = med(d, key), med(s, key)
            lines.append(f"| {what} | {a:.2f} | {b:.2f} | {a / b:.2f} |")
    return "\n".join(lines)


def runtimes_table(runs, extra):
    """Ours against what a user who cares about CPU inference picks: the ONNX runtimes."""
    lines = ["| config | ours ms | ONNX Runtime ms | OpenVINO ms | ours / best of them |",
             "| --- | ---: | ---: | ---: | ---: |"]
    cell = lambda v: "-" if v is None else (f"{v:.3f}" if v < 10 else f"{v:.1f}")
    for c in ORDER:
        if (c, "ours") not in runs:
            continue
        om = med(runs[(c, "ours")], "median_ms")
        others = [med(runs[(c, i)], "median_ms") if (c, i) in runs else None for i in RUNTIMES]
        best = min((v for v in others if v is not None), default=None)
        lines.append(f"| {c} | {cell(om)} | {cell(others[0])} | {cell(others[1])} | "
                     + ("-" if best is None else f"{om / best:.2f}") + " |")
    versions = ", ".join(f"{n} {extra[i]}" for i, n in zip(RUNTIMES, ["ONNX Runtime", "OpenVINO"])
                         if extra.get(i))
    return "\n".join(lines) + (f"\n\n{versions}; outputs checked against PyTorch's first." if versions else "")


def all_impls_table(runs):
    """Every implementation found (e.g. ours, ours-step, ours-persistent on CUDA) against PyTorch."""
    impls = sorted({i for (_, i) in runs if i != "pytorch"})
    head = " | ".join(f"{i} ms" for i in impls) + " | PyTorch ms | " + " | ".join(f"{i}/PyTorch" for i in impls)
    lines = [f"| config | {head} |", "| --- |" + " ---: |" * (2 * len(impls) + 1)]
    for c in ORDER:
        p = runs.get((c, "pytorch"))
        pm = med(p, "median_ms") if p else None
        ms = [med(runs[(c, i)], "median_ms") if (c, i) in runs else None for i in impls]
        if all(m is None for m in ms):
            continue
        cell = lambda v: "-" if v is None else (f"{v:.3f}" if v < 10 else f"{v:.1f}")
        ratio = lambda v: "-" if v is None or not pm else f"{v / pm:.2f}"
        lines.append(f"| {c} | " + " | ".join(cell(m) for m in ms) + f" | {cell(pm)} | "
                     + " | ".join(ratio(m) for m in ms) + " |")
    return "\n".join(lines)


def svg(runs, path):
    configs = [c for c in ORDER if (c, "ours") in runs]
    w, h, left, bottom, top = 760, 360, 60, 50, 30
    group = (w - left - 20) / max(1, len(configs))
    bar_w = min(22, group / (len(IMPLS) + 1))
    vals = [med(runs[(c, i)], "median_ms") for c in configs for i in IMPLS if (c, i) in runs]
    import math
    lo, hi = math.floor(math.log10(min(vals))), math.ceil(math.log10(max(vals)))
    y = lambda v: top + (h - top - bottom) * (1 - (math.log10(v) - lo) / max(1, hi - lo))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
             f'<text x="{w / 2}" y="18" text-anchor="middle" font-size="14">GRU forward, ms (log scale, lower is better)</text>']
    for e in range(lo, hi + 1):
        yy = y(10 ** e)
        parts.append(f'<line x1="{left}" x2="{w - 10}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end">{10 ** e:g}</text>')
    for gi, c in enumerate(configs):
        x0 = left + gi * group + group / 2 - len(IMPLS) / 2 * bar_w
        for ii, impl in enumerate(IMPLS):
            if (c, impl) not in runs:
                continue
            v = med(runs[(c, impl)], "median_ms")
            yy = y(v)
            parts.append(f'<rect x="{x0 + ii * bar_w:.1f}" y="{yy:.1f}" width="{bar_w - 2}" '
                         f'height="{h - bottom - yy:.1f}" fill="{COLORS[impl]}"><title>{impl} {v:.3f} ms</title></rect>')
        parts.append(f'<text x="{left + gi * group + group / 2:.1f}" y="{h - bottom + 16}" text-anchor="middle">{c}</text>')
    for ii, impl in enumerate(IMPLS):
        parts.append(f'<rect x="{left + ii * 130}" y="{h - 22}" width="12" height="12" fill="{COLORS[impl]}"/>')
        parts.append(f'<text x="{left + ii * 130 + 16}" y="{h - 12}">{impl}</text>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--plot")
    ap.add_argument("--all-impls", action="store_true",
                    help="one column per implementation found, each against PyTorch")
    a = ap.parse_args()
    runs, extra = load(a.results)
    print(all_impls_table(runs) if a.all_impls else table(runs, extra))
    if a.plot:
        svg(runs, a.plot)


if __name__ == "__main__":
    main()
