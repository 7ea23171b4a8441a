"""CPU decode speed of the exported KV-cache decoders: FP32 vs ort 4-bit (acc 0 / 4) vs gptq 3-bit.

    python tools/bench_decode.py [--models default llama-random] [--runs 5] [--out-dir out/bench-decode]
    python tools/bench_decode.py --quick        # tiny random Llama, well under a minute

For each model, every file is the KV-cache decoder (`--kv-cache`): the FP32 export (export_float),
one 4-bit g128 GPTQ export converted to `ort` at accuracy levels 0 and 4 (same weights), and a
3-bit g128 GPTQ export in the `gptq` format (our custom op through gptq_export.runtime; the only
format for 3-bit). lm_head stays in float in these files (the default skip list); for a model with
an untied head, two more 4-bit exports quantize the head too (`ort` acc 4, rows "8-bit lm_head"
with --layer-bits lm_head=8, and "4-bit lm_head");
a tied head (the default model's) stays in float. --reuse keeps files already in --out-dir
(same settings), so a rerun only measures. Each round runs, per file: one prefill of --prefill tokens (empty past) and
--decode greedy steps of one token each (batch 1), through `gptq_export.decode.Decoder`; files are
interleaved within each round, and the table shows medians over --runs rounds: prefill tokens/s,
decode tokens/s (new tokens / decode time) and the decode speed-up over FP32. onnxruntime CPU,
intra_op threads = 2. Models: `default` is the embedded SmolLM2-135M-Instruct; `llama-random` the
random-weight Llama-shaped model of tools/bench_formats.py (~206M parameters).
Prints a Markdown table (and writes bench_decode.json in --out-dir).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from bench_formats import THREADS, bench_model, file_bytes, file_maker, param_count

import gptq_export as gx
from gptq_export.api import convert
from gptq_export.decode import Decoder

FILES = [  # label, key
    ("FP32", "fp32"),
    ("ort 4-bit acc 0", "ort0"),
    ("ort 4-bit acc 4", "ort4"),
    ("ort 4-bit acc 4, 8-bit lm_head", "ort4h8"),  # only for a model with an untied head
    ("ort 4-bit acc 4, 4-bit lm_head", "ort4h"),  # only for a model with an untied head
    ("gptq 3-bit custom op", "gptq3"),
]


def build_files(name: str, out: Path, args, log) -> tuple[dict[str, Path], int, int]:
    """The KV-cache decoders of model `name` (FILES); returns files, parameter count, vocab."""
    t = time.perf_counter()
    bm = bench_model(name, args)
    files: dict[str, Path] = {}
    make = file_maker(out, args.reuse, files)

    def export(config: gx.QuantConfig):
        return lambda p: gx.export(bm.source, config, p, kv_cache=True, **bm.calib).path

    make("gptq4", export(gx.QuantConfig(bits=4, group_size=128, format="gptq")))
    make("gptq3", export(gx.QuantConfig(bits=3, group_size=128, format="gptq")))
    make("fp32", lambda p: gx.export_float(bm.source, p, kv_cache=True))
    make("ort0", lambda p: convert(files["gptq4"], p, "ort", accuracy_level=0))
    make("ort4", lambda p: convert(files["gptq4"], p, "ort", accuracy_level=4))
    if bm.untied_head:
        ort4 = gx.QuantConfig(bits=4, group_size=128, format="ort", accuracy_level=4)
        make("ort4h", export(dataclasses.replace(ort4, skip=())))
        make("ort4h8", export(dataclasses.replace(ort4, layer_bits=(("lm_head", 8),))))
    print(f"{name}: files written in {time.perf_counter() - t:.0f}s", file=log, flush=True)
    return files, param_count(bm.model), bm.vocab


def one_round(dec: Decoder, prompt: np.ndarray, steps: int) -> tuple[float, float]:
    """Seconds of the prefill and of `steps` greedy one-token steps."""
    t = time.perf_counter()
    logits, past = dec.step(prompt, dec.empty_past(1), 0)
    prefill = time.perf_counter() - t
    pos = prompt.shape[1]
    t = time.perf_counter()
    for _ in range(steps):
        nxt = logits.argmax(-1)[:, None]
        logits, past = dec.step(nxt, past, pos)
        pos += 1
    return prefill, time.perf_counter() - t


def measure(files: dict[str, Path], vocab: int, args, log) -> dict[str, dict[str, float]]:
    """Median prefill and decode tokens/s per file, rounds interleaved across files."""
    prompt = np.random.default_rng(0).integers(0, vocab, (1, args.prefill))
    decoders = {key: Decoder(files[key], intra_op_threads=THREADS) for _, key in FILES if key in files}
    for dec in decoders.values():  # warm-up (and the gptq runtime's dequantization cache)
        one_round(dec, prompt, 2)
    times: dict[str, dict[str, list[float]]] = {key: {"prefill": [], "decode": []} for key in decoders}
    for r in range(args.runs):
        for key, dec in decoders.items():
            prefill, decode = one_round(dec, prompt, args.decode)
            times[key]["prefill"].append(args.prefill / prefill)
            times[key]["decode"].append(args.decode / decode)
        print(f"  round {r + 1}/{args.runs}: " + ", ".join(
            f"{k} {v['decode'][-1]:.1f} tok/s" for k, v in times.items()), file=log, flush=True)
    return {key: {kind: statistics.median(v) for kind, v in d.items()} for key, d in times.items()}


def table(rows: list[dict], args) -> str:
    lines = [f"| model | file | size | prefill {args.prefill} tok/s | decode tok/s ({args.decode} steps) | "
             "decode speed-up vs FP32 |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['file']} | {r['bytes'] / 1e6:.1f} MB | {r['prefill_tps']:.1f} | "
                     f"{r['decode_tps']:.2f} | {r['decode_tps'] / r['fp32_decode_tps']:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", choices=["default", "llama-random", "llama-tiny"],
                   default=["default", "llama-random"])
    p.add_argument("--quick", action="store_true", help="tiny random Llama only (a smoke run)")
    p.add_argument("--runs", type=int, default=5, help="timed rounds per file (median)")
    p.add_argument("--prefill", type=int, default=128, help="prompt tokens")
    p.add_argument("--decode", type=int, default=64, help="greedy decode steps")
    p.add_argument("--nsamples", type=int, default=8, help="calibration windows (speed does not depend on them)")
    p.add_argument("--seqlen", type=int, default=256, help="tokens per calibration window")
    p.add_argument("--out-dir", default="out/bench-decode")
    p.add_argument("--reuse", action="store_true", help="keep decoder files already in --out-dir")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.nsamples, args.seqlen, args.runs, args.prefill, args.decode = \
            ["llama-tiny"], 2, 32, 2, 16, 8
    if args.runs < 1 or args.decode < 1 or args.prefill < 1:
        p.error("--runs, --decode and --prefill must be at least 1")
    log = sys.stderr
    rows: list[dict] = []
    for name in args.models:
        files, params, vocab = build_files(name, Path(args.out_dir) / name, args, log)
        med = measure(files, vocab, args, log)
        for label, key in FILES:
            if key not in files:
                continue
            rows.append({"model": name, "file": label, "bytes": file_bytes(files[key]), "params": params,
                         "prefill_tps": med[key]["prefill"], "decode_tps": med[key]["decode"],
                         "fp32_decode_tps": med["fp32"]["decode"]})
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_decode.json").write_text(json.dumps(
        {"threads": THREADS, "runs": args.runs, "prefill": args.prefill, "decode": args.decode,
         "onnxruntime": ort.__version__, "rows": rows}, indent=2))
    print(f"CPU, onnxruntime {ort.__version__}, intra_op threads {THREADS}, medians of {args.runs} rounds\n")
    print(table(rows, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
