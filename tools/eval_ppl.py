"""Perplexity on the packaged Wikipedia sample, computed from exported ONNX files in onnxruntime.

    python tools/eval_ppl.py out/model.onnx [more.onnx ...] [--model DIR] [--seqlen 512] [--windows 40]

The tokenizer comes from --model (default: the embedded SmolLM2-135M-Instruct). Windows are
consecutive, non-overlapping, from the start of the text (held out: calibration uses C4).
"""

from __future__ import annotations

import argparse
import sys
import time

from gptq_export.data import eval_windows, packaged_text
from gptq_export.errors import GptqExportError
from gptq_export.evaluate import perplexity
from gptq_export.models import load_model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("onnx", nargs="+", help="exported .onnx files")
    p.add_argument("--model", help="model folder whose tokenizer to use (default: embedded SmolLM2)")
    p.add_argument("--seqlen", type=int, default=512, help="tokens per window (default 512)")
    p.add_argument("--windows", type=int, default=40, help="number of windows (default 40 = 20k tokens)")
    args = p.parse_args(argv)
    try:
        tok = load_model(args.model).tokenizer
        windows = eval_windows(tok, packaged_text("wiki"), args.seqlen, args.windows)
        print(f"wikipedia sample: {windows.shape[0]} windows x {windows.shape[1]} tokens", file=sys.stderr)
        for path in args.onnx:
            t = time.perf_counter()
            ppl = perplexity(path, windows)
            print(f"{path}\tppl {ppl:.3f}\t{time.perf_counter() - t:.1f}s")
    except GptqExportError as exc:
        print(f"eval_ppl: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
