"""Render a gptq-inspect HTML report in headless Chromium and check that its error chart is visible.

    python tools/inspect_screenshot.py MODEL.onnx [--out DIR]

Writes DIR/report.html (``gptq-inspect MODEL --html``) and DIR/report.png (``chromium --headless
--screenshot``), then reads the PNG (Pillow when installed, else a small zlib + NumPy decoder)
and checks, right of the chart's label column, that

- the GPTQ and RTN bar colours are both there, in overlapping regions (one chart, not a legend);
- the GPTQ colour forms exactly one horizontal band per quantized layer of the file, and so does
  the RTN colour (every bar of the chart was drawn and is on screen).

Prints what it checked; exit code 0 when every check passes, 1 when one fails, 2 when Chromium
is missing or the model cannot be inspected.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np

from gptq_export.inspect import InspectError, load_report
from gptq_export.inspect import main as inspect_main
from gptq_export.inspect.html import GPTQ_COLOR, RTN_COLOR, find_chromium, render_png

WIDTH, HEIGHT = 1100, 1000
CHART_LEFT = 20 + 330  # body margin + label column of html.loss_chart (CSS px, device scale 1)
TOLERANCE = 10  # per channel


def _hex(color: str) -> np.ndarray:
    return np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.int16)


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else b if pb <= pc else c


def read_png(path: Path) -> np.ndarray:
    """RGB uint8 [H, W, 3] of an 8-bit non-interlaced PNG (what Chromium writes)."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except ImportError:
        pass
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path} is not a PNG")
    pos, idat, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat.append(chunk)
        pos += 12 + length
    width, height, depth, ctype, _, _, interlace = header
    if depth != 8 or interlace or ctype not in (2, 6):
        raise ValueError(f"unsupported PNG (depth {depth}, colour type {ctype}, interlace {interlace})")
    bpp = 4 if ctype == 6 else 3
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.uint8)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = np.frombuffer(raw, dtype=np.uint8, count=stride, offset=y * (stride + 1) + 1)
        if f == 0:
            cur = line.copy()
        elif f == 1:
            cur = np.cumsum(line.reshape(width, bpp), axis=0, dtype=np.uint8).reshape(-1)
        elif f == 2:
            cur = (line + prev).astype(np.uint8)
        else:
            cur_l = bytearray(stride)
            pl, ln = prev.tolist(), line.tolist()
            for i in range(stride):
                a = cur_l[i - bpp] if i >= bpp else 0
                b = pl[i]
                c = pl[i - bpp] if i >= bpp else 0
                pred = (a + b) >> 1 if f == 3 else _paeth(a, b, c)
                cur_l[i] = (ln[i] + pred) & 0xFF
            cur = np.frombuffer(bytes(cur_l), dtype=np.uint8)
        out[y] = cur
        prev = cur
    return out.reshape(height, width, bpp)[:, :, :3]


def bands(mask: np.ndarray) -> list[tuple[int, int]]:
    """Runs of consecutive rows holding at least one True: [(first, last)]."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(rows) > 1)
    starts = np.concatenate([[rows[0]], rows[breaks + 1]])
    ends = np.concatenate([rows[breaks], [rows[-1]]])
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


def check_screenshot(png: Path, layers_with_loss: int) -> dict:
    """The checks of the module docstring; returns what was measured and whether it passed."""
    img = read_png(png).astype(np.int16)
    region = img[:, CHART_LEFT:]
    result = {"png": str(png), "size": [int(img.shape[1]), int(img.shape[0])], "layers": layers_with_loss}
    ok = True
    boxes = {}
    for label, color in (("gptq", GPTQ_COLOR), ("rtn", RTN_COLOR)):
        mask = (np.abs(region - _hex(color)) <= TOLERANCE).all(axis=-1)
        runs = bands(mask)
        ys, xs = np.nonzero(mask)
        boxes[label] = (int(ys.min()), int(ys.max())) if ys.size else None
        result[label] = {"color": color, "pixels": int(mask.sum()), "bands": len(runs),
                         "rows": [boxes[label][0], boxes[label][1]] if ys.size else None,
                         "columns": [int(xs.min()) + CHART_LEFT, int(xs.max()) + CHART_LEFT] if xs.size else None}
        ok &= len(runs) == layers_with_loss and mask.sum() > 0
    if boxes["gptq"] and boxes["rtn"]:
        overlap = min(boxes["gptq"][1], boxes["rtn"][1]) - max(boxes["gptq"][0], boxes["rtn"][0])
        result["overlap_rows"] = int(overlap)
        ok &= overlap > 0
    else:
        ok = False
    result["passed"] = bool(ok)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help=".onnx file written by gptq-export (with per-layer losses in its metadata)")
    p.add_argument("--out", default="out/inspect-screenshot", help="folder for report.html and report.png")
    args = p.parse_args(argv)
    if find_chromium() is None:
        print("inspect_screenshot: no chromium binary found (chromium, chromium-browser, google-chrome or "
              "$CHROMIUM)", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    html, png = out / "report.html", out / "report.png"
    try:
        rep = load_report(args.model)
    except InspectError as exc:
        print(f"inspect_screenshot: {exc}", file=sys.stderr)
        return 2
    with contextlib.redirect_stdout(io.StringIO()):
        rc = inspect_main([args.model, "--html", str(html)])
    if rc != 0:
        print(f"inspect_screenshot: gptq-inspect --html failed (exit {rc})", file=sys.stderr)
        return 2
    try:
        render_png(html, png, WIDTH, HEIGHT)
    except InspectError as exc:
        print(f"inspect_screenshot: {exc}", file=sys.stderr)
        return 2
    layers = sum(1 for r in rep["layers"] if r["loss"] is not None and r["rtn_loss"] is not None)
    result = check_screenshot(png, layers)
    print(json.dumps(result, indent=2))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
