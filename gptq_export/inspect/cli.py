"""The `gptq-inspect` command line: the only module of gptq_export.inspect that prints.

    gptq-inspect MODEL [--json] [--layer NAME] [--diff OTHER] [--html FILE] [--png FILE]
    gptq-inspect --compare FP Q --text FILE [--tokenizer DIR] [--seqlen N] [--max-tokens N] [--json] [--html FILE]

Bad input (missing, empty, truncated, corrupted or non-ONNX file, unknown layer, ...) ends in one
line on stderr and exit code 2, never a traceback (`--debug` shows one).
"""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import GptqExportError
from .reader import InspectError, clean

PROG = "gptq-inspect"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse's own code)
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Describe an ONNX model written by gptq-export: summary, per-layer table, "
                "float Linears; layer details, diffs, an HTML report, and accuracy against the float model.")
    p.add_argument("model", nargs="?", help=".onnx file, or a folder holding model.onnx (e.g. a genai folder)")
    p.add_argument("--json", action="store_true", help="machine-readable output (schema: README, gptq-inspect)")
    p.add_argument("--layer", metavar="NAME", help="details of one quantized layer: tensors, scale/zero statistics, "
                   "code histogram, dequantized weight statistics")
    p.add_argument("--diff", metavar="OTHER", help="per-layer setting and weight differences against OTHER")
    p.add_argument("--html", metavar="FILE", help="write a self-contained HTML report (charts, graph diagram)")
    p.add_argument("--png", metavar="FILE", help="screenshot of the HTML report (needs headless Chromium)")
    c = p.add_argument_group("accuracy against the float model")
    c.add_argument("--compare", nargs=2, metavar=("FP", "Q"), help="float and quantized .onnx of the same model")
    c.add_argument("--text", metavar="FILE", help="UTF-8 text whose tokens both models run on (needed by --compare)")
    c.add_argument("--tokenizer", metavar="DIR", help="tokenizer folder (default: next to Q, then next to FP)")
    c.add_argument("--seqlen", type=int, default=128, help="tokens per window (default 128)")
    c.add_argument("--max-tokens", type=int, default=1024, help="tokens of --text used (default 1024)")
    p.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    return p


def _write(text: str, stream=None) -> None:
    stream = stream or sys.stdout
    stream.write(text.encode("utf-8", "backslashreplace").decode("utf-8", "replace") + "\n")


def _run(args: argparse.Namespace) -> int:
    from .html import render_html, render_png, write_html
    from .reader import load_onnx
    from .report import build_report, find_row, format_text

    if args.compare:
        from .compare import compare, format_compare

        if args.model or args.layer or args.diff:
            raise InspectError("--compare takes the two files itself; drop MODEL, --layer and --diff")
        if not args.text:
            raise InspectError("--compare needs --text FILE (UTF-8 text to run both models on)")
        cmp = compare(args.compare[0], args.compare[1], args.text, args.tokenizer, args.seqlen, args.max_tokens)
        if args.html or args.png:
            q = load_onnx(args.compare[1])
            _page(build_report(q), q, cmp, args, render_html, write_html, render_png)
        _write(json.dumps(cmp, indent=2) if args.json else format_compare(cmp))
        return 0
    if not args.model:
        raise InspectError("give a MODEL (.onnx file or folder), or --compare FP Q --text FILE")
    f = load_onnx(args.model)
    rep = build_report(f)
    text = [format_text(rep)]
    if args.layer:
        from .layer import format_details, layer_details
        from .report import analyse

        row = find_row(rep, args.layer)
        _, nodes, reader = analyse(f)
        q = next(n for n in nodes if clean(n.name) == row["name"] and clean(n.node) == row["node"])
        det = layer_details(row, q, reader)
        rep["layer_details"] = det
        text = [format_details(det)]
    if args.diff:
        from .diff import diff_files, format_diff

        d = diff_files(f, load_onnx(args.diff))
        rep["diff"] = d
        text.append(format_diff(d))
    if args.html or args.png:
        _page(rep, f, None, args, render_html, write_html, render_png)
    _write(json.dumps(rep, indent=2) if args.json else "\n\n".join(text))
    return 0


def _page(rep, f, cmp, args, render_html, write_html, render_png) -> None:
    import tempfile
    from pathlib import Path

    page = render_html(rep, [(n.name, n.op_type) for n in f.graph.node], cmp)
    if args.html:
        write_html(args.html, page)
    if args.png:
        if args.html:
            render_png(args.html, args.png)
        else:
            with tempfile.TemporaryDirectory(prefix="gptq-inspect-") as tmp:
                render_png(write_html(Path(tmp) / "report.html", page), args.png)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, one line already printed)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return _run(args)
    except GptqExportError as exc:
        _write(f"{PROG}: error: {clean(exc, 600)}", sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        _write(f"{PROG}: interrupted", sys.stderr)
        return 130
    except Exception as exc:  # a damaged file we did not foresee: still one line
        if args.debug:
            raise
        what = args.model or " ".join(args.compare or []) or "the input"
        _write(f"{PROG}: error: cannot inspect {clean(what)}: {type(exc).__name__}: {clean(exc, 300)} (the file "
               "may be corrupted; rerun with --debug to see where)", sys.stderr)
        return InspectError.exit_code


if __name__ == "__main__":
    sys.exit(main())
