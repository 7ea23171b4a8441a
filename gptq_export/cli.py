"""Command line: `gptq-export [MODEL] --bits 4 -o model.onnx` and `gptq-inspect model.onnx`.

The only module that prints. Bad input ends in one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from .config import ACCURACY_LEVELS, SUPPORTED_BITS, CalibConfig, Format, Method, QuantConfig
from .emit import OPSET, SUPPORTED_OPSETS
from .errors import GptqExportError

_Q = {f.name: f.default for f in dataclasses.fields(QuantConfig)}
_C = {f.name: f.default for f in dataclasses.fields(CalibConfig)}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse's own code)
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _layer_bits(text: str) -> tuple[str, int]:
    pattern, sep, bits = text.rpartition("=")
    if not sep or not pattern or not bits.strip().isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not PATTERN=BITS (e.g. lm_head=8)")
    return pattern, int(bits)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="gptq-export",
        description="GPTQ-quantize the Linear layers of a transformer and write a low-bit ONNX model.",
    )
    p.add_argument("model", nargs="?", help="Hugging Face model folder (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("-o", "--output",
                   help="output .onnx file, or a folder (any name not ending in .onnx): an onnxruntime-genai model "
                        "folder with the KV-cache decoder, genai_config.json and the tokenizer "
                        "(default: <model>-<method>-w<bits>g<group>.onnx)")
    p.add_argument("--opset", type=int, choices=SUPPORTED_OPSETS,
                   help=f"ONNX opset (default {OPSET}: fused RMSNorm/rotary/attention nodes, onnxruntime >= 1.23; "
                        "21 for older runtimes)")
    p.add_argument("--kv-cache", action=argparse.BooleanOptionalAction,
                   help="export the decoder with past/present key-values (causal LMs; default: only for a folder -o)")
    q = p.add_argument_group("quantization")
    q.add_argument("--bits", type=int, choices=SUPPORTED_BITS, help=f"bits per weight (default {_Q['bits']})")
    q.add_argument("--group-size", type=int, help=f"columns per scale/zero group, -1 = per channel (default {_Q['group_size']})")
    q.add_argument("--sym", action=argparse.BooleanOptionalAction, help="symmetric grid (default: asymmetric)")
    q.add_argument("--act-order", action=argparse.BooleanOptionalAction, help="quantize columns by descending Hessian diagonal")
    q.add_argument("--static-groups", action=argparse.BooleanOptionalAction, help="group scales from the original W (keeps act-order groups contiguous)")
    q.add_argument("--damp", type=float, dest="percdamp", help=f"dampening, fraction of mean diag(H) (default {_Q['percdamp']})")
    q.add_argument("--block-size", type=int, help=f"GPTQ lazy-batch block size (default {_Q['block_size']})")
    q.add_argument("--method", choices=[m.value for m in Method], help=f"gptq or rtn baseline (default {_Q['method'].value})")
    q.add_argument("--format", choices=[f.value for f in Format],
                   help="ONNX representation: ort = com.microsoft MatMulNBits (bits 2/4/8), qdq = DequantizeLinear + "
                        "MatMul (bits 4/8), gptq = custom op (any bits, needs onnxruntime-extensions); "
                        "default: auto = ort when it can hold the settings, else gptq")
    q.add_argument("--accuracy-level", type=int, choices=ACCURACY_LEVELS,
                   help=f"MatMulNBits compute type of --format ort: 4 = int8 activations (faster on CPU, ~5e-3 "
                        f"relative error), 0 = exact fp32 (default {_Q['accuracy_level']})")
    q.add_argument("--layer-bits", action="append", metavar="PATTERN=BITS", type=_layer_bits,
                   help="code width for the Linears matching PATTERN (first match wins), repeatable; they are "
                        "quantized even if --skip matches them: --layer-bits lm_head=8 gives an 8-bit head")
    q.add_argument("--skip", action="append", metavar="PATTERN",
                   help=f"module-name pattern to keep in float, repeatable (default {' '.join(_Q['skip'])})")
    c = p.add_argument_group("calibration")
    c.add_argument("--calib", dest="text", metavar="FILE", help="UTF-8 calibration text (default: packaged C4 sample)")
    c.add_argument("--nsamples", type=int, help=f"calibration windows (default {_C['nsamples']}; paper 128)")
    c.add_argument("--seqlen", type=int, help=f"tokens per window, capped by the model context (default {_C['seqlen']}; paper 2048)")
    c.add_argument("--seed", type=int, help=f"seed of the random windows (default {_C['seed']})")
    o = p.add_argument_group("output")
    o.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    o.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    o.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    return p


def _pick(ns: argparse.Namespace, names) -> dict:
    return {k: getattr(ns, k) for k in names if getattr(ns, k, None) is not None}


def _default_output(model: str | None, cfg: QuantConfig) -> str:
    stem = Path(model).resolve().name if model else "SmolLM2-135M-Instruct"
    group = "pc" if cfg.group_size == -1 else f"g{cfg.group_size}"
    return f"{stem}-{cfg.method.value}-w{cfg.bits}{group}.onnx"


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _print_summary(result, out) -> None:
    s = result.summary()
    cfg = result.config
    ratio = s["mean_loss"] / s["mean_rtn_loss"] if s["mean_rtn_loss"] else float("nan")
    rows = [
        ("model", s["model"]),
        ("output", s["output"] + ("  (KV-cache decoder)" if s["kv_cache"] else "")),
        ("layers quantized", f"{s['layers_quantized']} ({len(result.skipped)} left in float)"),
        ("bits / group / sym", f"{cfg.bits} / {cfg.group_size} / {'sym' if cfg.sym else 'asym'}"
         f"{' / act-order' if cfg.act_order else ''}{' / static groups' if cfg.static_groups else ''}"
         + "".join(f" / {pattern}: {bits}-bit" for pattern, bits in cfg.layer_bits)),
        ("method / format", f"{cfg.method.value} / {s['format']}"
         f"{f' (accuracy level {cfg.accuracy_level})' if s['format'] == Format.ORT.value else ''}"),
        ("calibration", f"{s['calibration']['nsamples']} x {s['calibration']['seqlen']} tokens, seed {result.calib.seed}"),
        ("mean layer error", f"{s['mean_loss']:.4g} ({cfg.method.value})  vs  {s['mean_rtn_loss']:.4g} (rtn)  "
         f"= {ratio:.2f}x"),
        ("size", f"{_human(s['float_bytes'])} fp32 -> {_human(s['file_bytes'])} "
         f"({s['float_bytes'] / max(s['file_bytes'], 1):.1f}x smaller)"),
        ("time", ", ".join(f"{k} {v:.1f}s" for k, v in s["seconds"].items())),
    ]
    width = max(len(k) for k, _ in rows)
    print("", file=out)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}", file=out)
    for name, reason in result.skipped:
        print(f"  left in float: {name}: {reason}", file=out)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet = args.quiet
    err = sys.stderr
    bar = None
    if quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    try:
        qargs = _pick(args, ["bits", "group_size", "sym", "act_order", "static_groups", "percdamp", "block_size",
                             "method", "format", "accuracy_level"])
        if args.skip is not None:
            qargs["skip"] = tuple(args.skip)
        if args.layer_bits:
            qargs["layer_bits"] = tuple(args.layer_bits)
        config = QuantConfig(**qargs)
        calib = CalibConfig(**_pick(args, ["text", "nsamples", "seqlen", "seed"]))
        output = args.output or _default_output(args.model, config)
        if not quiet:
            print(f"calibration: {calib.nsamples} x {calib.seqlen} tokens (paper: 128 x 2048), "
                  f"text {calib.text or 'packaged C4 sample'}, seed {calib.seed}", file=err)

        def status(msg: str) -> None:
            if not quiet:
                print(msg, file=err)

        def progress(report, i: int, n: int) -> None:
            nonlocal bar
            if quiet:
                return
            if bar is None:
                from tqdm import tqdm

                bar = tqdm(total=n, unit="layer", file=err, dynamic_ncols=True)
            bar.set_description_str(f"{report.name} {report.out_features}x{report.in_features}")
            bar.set_postfix_str(f"err {report.loss:.3g} (rtn {report.rtn_loss:.3g})")
            bar.update(1)
            if i == n:
                bar.close()

        from .api import export

        result = export(args.model, config, output, calib, kv_cache=args.kv_cache, opset=args.opset or OPSET,
                        progress=progress, status=status)
        if bar is not None:
            bar.close()
        if args.json:
            print(json.dumps(result.summary(), indent=2))
        elif not quiet:
            _print_summary(result, sys.stdout)
        return 0
    except GptqExportError as exc:
        if bar is not None:
            bar.close()
        print(f"gptq-export: error: {exc}", file=err)
        return exc.exit_code
    except KeyboardInterrupt:
        print("gptq-export: interrupted; no output written", file=err)
        return 130
    except Exception as exc:  # a bug: one line unless --debug
        if args.debug:
            raise
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        print(f"gptq-export: internal error: {type(exc).__name__}: {first} (rerun with --debug and report it)", file=err)
        return 1


def inspect_main(argv: list[str] | None = None) -> int:
    """gptq-inspect: summary, per-layer table, --layer, --diff, --html/--png and --compare of an exported file."""
    from .inspect import main as _inspect

    return _inspect(argv)


if __name__ == "__main__":
    sys.exit(main())
