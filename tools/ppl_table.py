"""README's accuracy table: Wikipedia perplexity of FP, RTN and GPTQ exports of one model.

    python tools/ppl_table.py [--model DIR] [--out-dir out/ppl] [--windows 20] [--seqlen 512]

Exports the float model and, for each setting, an RTN and a GPTQ model (same grid, same
calibration), then evaluates every file in onnxruntime on the same held-out Wikipedia windows.
Prints a Markdown table (and writes ppl_table.json in --out-dir).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import gptq_export as gx
from gptq_export.data import eval_windows, packaged_text
from gptq_export.evaluate import perplexity
from gptq_export.models import load_model

SETTINGS = [  # (label, bits, group_size)
    ("4-bit g128", 4, 128),
    ("4-bit per-channel", 4, -1),
    ("3-bit g128", 3, 128),
]
#: GPTQ variants: the default (act-order) and, for the 4-bit rows, the paper's plain column order.
VARIANTS = [("rtn", {"method": "rtn"}), ("gptq", {}), ("gptq-no-act-order", {"act_order": False})]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model folder (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--out-dir", default="out/ppl")
    p.add_argument("--windows", type=int, default=20)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--nsamples", type=int, default=gx.CalibConfig().nsamples)
    p.add_argument("--calib-seqlen", type=int, default=gx.CalibConfig().seqlen)
    args = p.parse_args(argv)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_model(args.model)
    windows = eval_windows(loaded.tokenizer, packaged_text("wiki"), args.seqlen, args.windows)
    calib = gx.CalibConfig(nsamples=args.nsamples, seqlen=args.calib_seqlen)
    log = sys.stderr
    print(f"{loaded.name}: {windows.shape[0]} x {windows.shape[1]} Wikipedia tokens; "
          f"calibration {calib.nsamples} x {calib.seqlen} C4 tokens", file=log)

    rows = []
    t = time.perf_counter()
    fp_path = gx.export_float(args.model, out / "fp32.onnx")
    fp_time = time.perf_counter() - t
    fp = perplexity(str(fp_path), windows)
    print(f"FP32: ppl {fp:.3f} (export {fp_time:.0f}s)", file=log)
    rows.append({"setting": "FP32", "method": "fp", "ppl": fp, "export_s": fp_time, "bytes": fp_path.stat().st_size})

    for label, bits, group in SETTINGS:
        for method, extra in VARIANTS:
            if bits == 3 and method == "gptq-no-act-order":
                continue
            # 4-bit files are evaluated as MatMulNBits at accuracy level 0 (exact, fast); 3-bit as gptq.
            cfg = gx.QuantConfig(bits=bits, group_size=group, accuracy_level=0, **extra)
            path = out / f"{method}-w{bits}{'pc' if group == -1 else f'g{group}'}.onnx"
            res = gx.export(args.model, cfg, path, calib)
            ppl = perplexity(str(path), windows)
            rows.append({"setting": label, "method": method, "format": res.config.format.value, "ppl": ppl,
                         "export_s": res.seconds["total"],
                         "bytes": res.file_bytes, "mean_layer_error": res.summary()["mean_loss"]})
            print(f"{label} {method}: ppl {ppl:.3f} (export {res.seconds['total']:.0f}s)", file=log, flush=True)
            path.unlink()  # keep disk use small; the numbers are in the JSON

    (out / "ppl_table.json").write_text(json.dumps({"model": loaded.name, "windows": list(windows.shape),
                                                    "calibration": [calib.nsamples, calib.seqlen], "rows": rows},
                                                   indent=2))
    print("| setting | FP32 | RTN | GPTQ (act-order, default) | GPTQ without act-order | GPTQ export time |")
    print("|---|---|---|---|---|---|")
    by = {(r["setting"], r["method"]): r for r in rows}
    for label, _, _ in SETTINGS:
        r, g = by[(label, "rtn")], by[(label, "gptq")]
        plain = by.get((label, "gptq-no-act-order"))
        plain_s = f"{plain['ppl']:.2f}" if plain else "not run"
        print(f"| {label} | {fp:.2f} | {r['ppl']:.2f} | {g['ppl']:.2f} | {plain_s} | {g['export_s']:.0f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
