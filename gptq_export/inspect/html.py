"""`--html report.html`: one self-contained page (inline CSS and SVG, no script, no network).

Sections: summary cards; per-layer error chart (GPTQ vs RTN loss from the export metadata, log
scale); with `--compare`, a per-layer SNR chart; a block diagram of the graph (inputs, one box
per repeated block such as ``model.layers.3`` holding its quantized Linears coloured by error,
float ops counted per block, outputs); the layer table; the Linears left in float; warnings.

`render_png` screenshots a page with headless Chromium (``--png``, `tools/inspect_screenshot.py`).
"""

from __future__ import annotations

import collections
import math
import os
import re
import shutil
import subprocess
from html import escape
from pathlib import Path

from .reader import InspectError, clean

#: Chart colours (also what tools/inspect_screenshot.py looks for in the screenshot).
GPTQ_COLOR = "#1f77b4"
RTN_COLOR = "#ff7f0e"
ISOLATED_COLOR = "#2ca02c"
E2E_COLOR = "#9467bd"
FORMAT_COLORS = {"gptq": "#6baed6", "ort": "#74c476", "qdq": "#fd8d3c"}

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:20px;color:#222;background:#fff}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:24px 0 8px;border-bottom:1px solid #ddd}
.sub{color:#666;font-size:12px;word-break:break-all}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 12px;min-width:120px}
.card b{display:block;font-size:18px}.card span{color:#666;font-size:12px}
table{border-collapse:collapse;font-size:12px}td,th{border-bottom:1px solid #eee;padding:2px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}svg text{font-family:inherit}
.warn{color:#a33}.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}
"""


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def _human(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


# --------------------------------------------------------------------------- charts


def _log_axis(values: list[float]) -> tuple[float, float]:
    pos = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    if not pos:
        return -1.0, 0.0
    lo, hi = math.floor(math.log10(min(pos))), math.ceil(math.log10(max(pos)))
    return float(lo), float(hi if hi > lo else lo + 1)


def loss_chart(rows: list[dict]) -> str:
    """Horizontal bars per layer: GPTQ loss and RTN loss on a shared log axis (inline SVG)."""
    data = [(r["name"], r["loss"], r["rtn_loss"]) for r in rows]
    if not any(a is not None for _, a, _ in data):
        return "<p>No per-layer loss in the file's metadata (not written by gptq-export, or a float model).</p>"
    lo, hi = _log_axis([v for _, a, b in data for v in (a, b)])
    label_w, bar_w, row_h, top = 330, 620, 18, 30
    width, height = label_w + bar_w + 30, top + row_h * len(data) + 30

    def x(v: float | None) -> float:
        if v is None or v <= 0:
            return 0.0
        return max(2.0, (math.log10(v) - lo) / (hi - lo) * bar_w)

    out = [f'<svg id="loss-chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="per-layer GPTQ and RTN loss">']
    for e in range(int(lo), int(hi) + 1):
        gx = label_w + (e - lo) / (hi - lo) * bar_w
        out.append(f'<line x1="{gx:.1f}" y1="{top - 4}" x2="{gx:.1f}" y2="{height - 26}" stroke="#e5e5e5"/>'
                   f'<text x="{gx:.1f}" y="{top - 8}" font-size="10" text-anchor="middle" fill="#666">1e{e}</text>')
    for i, (name, a, b) in enumerate(data):
        y = top + i * row_h
        short = name if len(name) <= 48 else "..." + name[-45:]
        out.append(f'<text x="{label_w - 6}" y="{y + 12}" font-size="11" text-anchor="end">{escape(short)}</text>')
        out.append(f'<rect class="gptq" x="{label_w}" y="{y + 2}" width="{x(a):.1f}" height="7" fill="{GPTQ_COLOR}">'
                   f'<title>{escape(name)}: GPTQ {_fmt(a)}</title></rect>')
        out.append(f'<rect class="rtn" x="{label_w}" y="{y + 9}" width="{x(b):.1f}" height="7" fill="{RTN_COLOR}">'
                   f'<title>{escape(name)}: RTN {_fmt(b)}</title></rect>')
    out.append(f'<text x="{label_w}" y="{height - 8}" font-size="11" fill="#666">layer reconstruction error '
               '||WX - ŴX||² / n (log scale)</text></svg>')
    legend = (f'<div class="legend"><span style="background:{GPTQ_COLOR}"></span>GPTQ'
              f'<span style="background:{RTN_COLOR}"></span>RTN (round to nearest, same grid)</div>')
    return legend + "".join(out)


def snr_chart(cmp: dict) -> str:
    """Bars of each layer's isolated SNR and markers of the end-to-end output SNR (dB, linear axis)."""
    layers = [e for e in cmp["layers"] if e["fp_node"] is not None]
    vals = [v for e in layers for v in (e["isolated_snr_db"], e["output_snr_db"]) if v is not None]
    if not vals:
        return "<p>No layer could be matched to the float model.</p>"
    hi = max(10.0, math.ceil(max(vals) / 10) * 10)
    lo = min(0.0, math.floor(min(vals) / 10) * 10)
    label_w, bar_w, row_h, top = 330, 620, 16, 30
    width, height = label_w + bar_w + 30, top + row_h * len(layers) + 30

    def x(v: float) -> float:
        return (v - lo) / (hi - lo) * bar_w

    out = [f'<svg id="snr-chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">']
    for t in range(int(lo), int(hi) + 1, 10):
        gx = label_w + x(t)
        out.append(f'<line x1="{gx:.1f}" y1="{top - 4}" x2="{gx:.1f}" y2="{height - 26}" stroke="#e5e5e5"/>'
                   f'<text x="{gx:.1f}" y="{top - 8}" font-size="10" text-anchor="middle" fill="#666">{t}</text>')
    for i, e in enumerate(layers):
        y = top + i * row_h
        style = ' font-weight="bold" fill="#a00"' if e["name"] == cmp.get("worst_layer") else ""
        out.append(f'<text x="{label_w - 6}" y="{y + 11}" font-size="11" text-anchor="end"{style}>'
                   f'{escape(e["name"][-48:])}</text>')
        iso = e["isolated_snr_db"]
        w = bar_w if iso is None else max(1.0, x(iso))
        out.append(f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="10" fill="{ISOLATED_COLOR}">'
                   f'<title>{escape(e["name"])}: isolated {_fmt(iso)} dB</title></rect>')
        if e["output_snr_db"] is not None:
            out.append(f'<circle cx="{label_w + x(e["output_snr_db"]):.1f}" cy="{y + 8}" r="4" fill="{E2E_COLOR}">'
                       f'<title>end-to-end output {_fmt(e["output_snr_db"])} dB</title></circle>')
    out.append(f'<text x="{label_w}" y="{height - 8}" font-size="11" fill="#666">SNR in dB (higher is better)</text>'
               "</svg>")
    legend = (f'<div class="legend"><span style="background:{ISOLATED_COLOR}"></span>layer alone (float input)'
              f'<span style="background:{E2E_COLOR};border-radius:6px"></span>end to end, at the layer output</div>')
    return legend + "".join(out)


# --------------------------------------------------------------------------- block diagram

_BLOCK = re.compile(r"^(.*?\.\d+)(?:\.|$)")


def block_of(name: str) -> str:
    """``model.layers.3.mlp.up_proj`` -> ``model.layers.3``; names without an index -> the name's parent."""
    m = _BLOCK.match(name)
    if m:
        return m.group(1)
    return name.rsplit(".", 1)[0] if "." in name else name


def _heat(v: float | None, lo: float, hi: float) -> str:
    if v is None or v <= 0 or hi <= lo:
        return "#9ecae1"
    t = min(1.0, max(0.0, (math.log10(v) - lo) / (hi - lo)))
    r, g, b = int(255 * t + 80 * (1 - t)), int(80 + 100 * (1 - t)), int(80 * (1 - t) + 60 * t)
    return f"#{r:02x}{g:02x}{b:02x}"


def block_diagram(rep: dict, node_ops: list[tuple[str, str]]) -> str:
    """Inline SVG: inputs -> blocks (quantized Linears + counted float ops) -> outputs.

    node_ops: (node name, op type) of the graph in order; a node that is not part of a quantized
    layer is counted in the block of the last quantized layer before it.
    """
    rows = rep["layers"]
    layer_of = {r["node"]: r for r in rows}  # the node computing the product places the layer
    part_of_layer = {n for r in rows for n in r["nodes"]}  # its Gather / DequantizeLinear / bias Add
    blocks: list[dict] = []
    current = {"name": "(before the first quantized layer)", "layers": [], "ops": collections.Counter()}
    blocks.append(current)
    for node, op in node_ops:
        r = layer_of.get(node)
        if r is not None:
            key = block_of(r["name"])
            if key != current["name"]:
                current = {"name": key, "layers": [], "ops": collections.Counter()}
                blocks.append(current)
            if r not in current["layers"]:
                current["layers"].append(r)
        elif node not in part_of_layer:
            current["ops"][op] += 1
    blocks = [b for b in blocks if b["layers"] or b["ops"]]
    lo, hi = _log_axis([r["loss"] for r in rows])
    box_w, box_h, gap, per_row, width = 200, 34, 8, 4, 900
    y = 10
    parts = []

    def io_box(title: str, items: list[dict]) -> None:
        nonlocal y
        text = "; ".join(f"{v['name']} [{', '.join('?' if d is None else str(d) for d in (v['shape'] or []))}]"
                         for v in items)[:140]
        parts.append(f'<rect x="10" y="{y}" width="{width - 20}" height="30" rx="15" fill="#f0f0f0" stroke="#999"/>'
                     f'<text x="24" y="{y + 19}" font-size="12"><tspan font-weight="bold">{title}</tspan> '
                     f'{escape(text)}</text>')
        y += 30

    def arrow() -> None:
        nonlocal y
        parts.append(f'<line x1="{width / 2}" y1="{y}" x2="{width / 2}" y2="{y + 14}" stroke="#666" '
                     f'stroke-width="2"/><polygon points="{width / 2 - 5},{y + 10} {width / 2 + 5},{y + 10} '
                     f'{width / 2},{y + 16}" fill="#666"/>')
        y += 18

    io_box("inputs", rep["inputs"])
    for b in blocks:
        arrow()
        n_rows = math.ceil(len(b["layers"]) / per_row) if b["layers"] else 0
        h = 26 + n_rows * (box_h + gap) + 20
        nbytes = sum(r["bytes"] for r in b["layers"])
        parts.append(f'<rect class="block" x="10" y="{y}" width="{width - 20}" height="{h}" rx="6" fill="#fafafa" '
                     f'stroke="#bbb"/><text x="20" y="{y + 17}" font-size="12" font-weight="bold">'
                     f'{escape(b["name"])}</text><text x="{width - 20}" y="{y + 17}" font-size="11" '
                     f'text-anchor="end" fill="#666">{len(b["layers"])} quantized ({_human(nbytes)}), '
                     f'{sum(b["ops"].values())} float ops</text>')
        for i, r in enumerate(b["layers"]):
            bx = 20 + (i % per_row) * (box_w + gap)
            by = y + 26 + (i // per_row) * (box_h + gap)
            short = r["name"][len(b["name"]) + 1:] if r["name"].startswith(b["name"] + ".") else r["name"]
            parts.append(f'<g><title>{escape(r["name"])}: {r["K"]}x{r["N"]}, {r["bits"]}-bit {r["format"]}, loss '
                         f'{_fmt(r["loss"])} (rtn {_fmt(r["rtn_loss"])})</title>'
                         f'<rect class="qlayer" x="{bx}" y="{by}" width="{box_w}" height="{box_h}" rx="4" '
                         f'fill="{_heat(r["loss"], lo, hi)}" stroke="{FORMAT_COLORS.get(r["format"], "#999")}" '
                         f'stroke-width="2"/><text x="{bx + 6}" y="{by + 14}" font-size="11">{escape(short[-30:])}'
                         f'</text><text x="{bx + 6}" y="{by + 28}" font-size="10" fill="#333">{r["K"]}x{r["N"]} '
                         f'{r["bits"]}b {r["format"]}</text></g>')
        ops = ", ".join(f"{k} {v}" for k, v in b["ops"].most_common(6))
        parts.append(f'<text x="20" y="{y + h - 7}" font-size="10" fill="#666">float ops: {escape(ops or "none")}'
                     "</text>")
        y += h
    arrow()
    io_box("outputs", rep["outputs"])
    y += 10
    legend = ('<div class="sub">Each box is a repeated block of the graph (named after its quantized layers); '
              'quantized Linears are filled by GPTQ loss (log scale: green low, red high) and outlined by format '
              f'({", ".join(f"{k} {v}" for k, v in FORMAT_COLORS.items())}); other nodes are counted as float ops '
              'of the block they follow.</div>')
    return legend + (f'<svg id="block-diagram" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{y}">'
            + "".join(parts) + "</svg>")


# --------------------------------------------------------------------------- page


def _table(rows: list[dict]) -> str:
    head = ("<tr><th>layer</th><th>K x N</th><th>bits</th><th>group</th><th>act-order</th><th>sym</th>"
            "<th>format</th><th>bytes</th><th>GPTQ loss</th><th>RTN loss</th></tr>")
    body = "".join(
        f"<tr><td>{escape(r['name'])}</td><td>{r['K']}x{r['N']}</td><td>{r['bits']}</td>"
        f"<td>{'chan' if r['group_size'] == -1 else r['group_size']}</td><td>{'yes' if r['act_order'] else 'no'}</td>"
        f"<td>{'-' if r['sym'] is None else 'yes' if r['sym'] else 'no'}</td><td>{r['format']}</td>"
        f"<td>{r['bytes']}</td><td>{_fmt(r['loss'])}</td><td>{_fmt(r['rtn_loss'])}</td></tr>" for r in rows)
    return f"<table>{head}{body}</table>"


def render_html(rep: dict, node_ops: list[tuple[str, str]], cmp: dict | None = None) -> str:
    """The whole page as a string."""
    s = rep["sizes"]
    cards = [
        ("format", rep["format"]), ("quantized layers", str(len(rep["layers"]))),
        ("left in float", str(len(rep["float_linears"]))), ("file + external data", _human(s["total_bytes"])),
        ("vs FP16", f"{s['compression_vs_fp16']:.2f}x" if s["compression_vs_fp16"] else "-"),
        ("opsets", ", ".join(f"{k} {v}" for k, v in rep["opsets"].items())),
    ]
    if cmp and cmp.get("perplexity"):
        cards.append(("perplexity fp / q", f"{cmp['perplexity']['fp']:.3g} / {cmp['perplexity']['q']:.3g}"))
    html = [
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>gptq-inspect: {escape(Path(rep['file']).name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>gptq-inspect: {escape(Path(rep['file']).name)}</h1><div class=\"sub\">{escape(rep['file'])}</div>",
        '<div class="cards">' + "".join(f"<div class=\"card\"><b>{escape(v)}</b><span>{escape(k)}</span></div>"
                                        for k, v in cards) + "</div>",
        "<h2>Per-layer error</h2>", loss_chart(rep["layers"]),
    ]
    if cmp:
        html += ["<h2>Activation SNR against the float model</h2>",
                 f"<div class=\"sub\">{cmp['tokens']} tokens of {escape(cmp['text'])}; worst layer: "
                 f"{escape(str(cmp['worst_layer']))}</div>", snr_chart(cmp)]
    html += ["<h2>Graph</h2>", block_diagram(rep, node_ops), "<h2>Quantized layers</h2>", _table(rep["layers"])]
    if rep["float_linears"]:
        html.append("<h2>Linears left in float</h2><ul>" + "".join(
            f"<li>{escape(d['name'])}: {escape(d['reason'])}</li>" for d in rep["float_linears"]) + "</ul>")
    if rep["warnings"]:
        html.append("<h2>Warnings</h2><ul class=\"warn\">" + "".join(f"<li>{escape(w)}</li>" for w in rep["warnings"])
                    + "</ul>")
    html.append("</body></html>")
    return "\n".join(html)


def write_html(path: str | os.PathLike, page: str) -> Path:
    p = Path(path)
    try:
        p.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise InspectError(f"cannot write {clean(p)}: {clean(exc.strerror or type(exc).__name__)}") from exc
    return p


# --------------------------------------------------------------------------- screenshots

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_chromium() -> str | None:
    """A headless-capable Chromium binary on PATH ($CHROMIUM overrides), or None."""
    env = os.environ.get("CHROMIUM")
    if env and shutil.which(env):
        return shutil.which(env)
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def render_png(html_path: str | os.PathLike, png_path: str | os.PathLike, width: int = 1280, height: int = 1600,
               timeout: float = 120.0) -> Path:
    """Screenshot `html_path` with headless Chromium into `png_path`; InspectError if that cannot be done."""
    exe = find_chromium()
    if exe is None:
        raise InspectError("--png needs Chromium (chromium or google-chrome on PATH, or $CHROMIUM); use --html instead")
    html_path, png_path = Path(html_path).resolve(), Path(png_path).resolve()
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           "--disable-dev-shm-usage", "--force-device-scale-factor=1", f"--window-size={width},{height}", f"--screenshot={png_path}",
           html_path.as_uri()]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InspectError(f"headless Chromium failed ({type(exc).__name__}); use --html instead") from exc
    if not png_path.is_file() or png_path.stat().st_size == 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise InspectError(f"headless Chromium wrote no screenshot (exit {proc.returncode}: {clean(last, 160)})")
    return png_path
