"""CPU latency and size of every ONNX format of one quantization: FP32 vs ort (MatMulNBits) vs qdq vs gptq.

    python tools/bench_formats.py [--models default llama-random] [--runs 10] [--out-dir out/bench]
    python tools/bench_formats.py --quick        # tiny random Llama, well under a minute

For each model: the FP32 ONNX (export_float), one 4-bit g128 GPTQ export in the `gptq` format, and
the `ort` (accuracy levels 0 and 4) and `qdq` files converted from it (same weights); lm_head stays
in float (the default skip list), and for a model with an untied head one more 4-bit export
quantizes it too (`ort` acc 4, row "4-bit lm_head"). --reuse keeps files already in --out-dir. Every file is
loaded in onnxruntime (CPU, intra_op threads = 2; the gptq file through gptq_export.runtime, the
others in plain onnxruntime; qdq with default session options, so onnxruntime fuses it into
MatMulNBits at accuracy level 4). Measured side by side in one run, rounds interleaved across the
formats: per-token forward (input_ids [1, 1]: M = 1) and a prefill of --prefill tokens ([1, 128]),
medians of --runs rounds. Models: `default` is the embedded SmolLM2-135M-Instruct; `llama-random`
a random-weight Llama-shaped model of about 200M parameters (hidden 1024, 12 layers, intermediate
2816, vocab 32000, 8 heads / 4 KV heads) built here, calibrated on random token windows.
Prints a Markdown table (and writes bench_formats.json in --out-dir).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

import gptq_export as gx
from gptq_export.api import convert
from gptq_export.runtime import InferenceSession

THREADS = 2
LLAMA_RANDOM = {"hidden_size": 1024, "num_hidden_layers": 12, "intermediate_size": 2816, "vocab_size": 32000,
                "num_attention_heads": 8, "num_key_value_heads": 4, "max_position_embeddings": 2048}
LLAMA_TINY = {"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 96, "vocab_size": 300,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256}
FORMATS = [  # label, file key, how it is run
    ("FP32", "fp32", "plain"),
    ("ort 4-bit acc 0", "ort0", "plain"),
    ("ort 4-bit acc 4", "ort4", "plain"),
    ("ort 4-bit acc 4, 4-bit lm_head", "ort4h", "plain"),  # only for a model with an untied head
    ("qdq 4-bit", "qdq", "plain"),
    ("gptq custom op", "gptq", "custom"),
]


def random_llama(shape: dict, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised LlamaForCausalLM of the given shape (untied head)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(**shape, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)
    return LlamaForCausalLM(cfg).eval()


def param_count(model: torch.nn.Module) -> int:
    """Parameters, each shared tensor once."""
    seen: dict[int, int] = {}
    for p in model.parameters():
        seen[id(p)] = p.numel()
    return sum(seen.values())


def file_bytes(path: Path) -> int:
    """The .onnx file plus its external data, if any."""
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


@dataclass
class BenchModel:
    """A model to benchmark and how to export it."""

    source: torch.nn.Module | None  # what gx.export takes: None = the embedded default model
    model: torch.nn.Module
    vocab: int
    calib: dict  # calibration keyword arguments of gx.export
    untied_head: bool  # an lm_head that can be quantized (not tied to the embedding)


def bench_model(name: str, args) -> BenchModel:
    """`default` (SmolLM2, calibrated on the packaged text) or a random Llama (random token windows)."""
    if name == "default":
        from gptq_export.models import load_model

        loaded = load_model(None)
        calib = {"calib": gx.CalibConfig(nsamples=args.nsamples, seqlen=args.seqlen)}
        return BenchModel(None, loaded.model, loaded.vocab_size, calib, False)
    model = random_llama(LLAMA_TINY if name == "llama-tiny" else LLAMA_RANDOM)
    vocab = model.config.vocab_size
    tokens = torch.randint(0, vocab, (args.nsamples, args.seqlen), generator=torch.Generator().manual_seed(0))
    return BenchModel(model, model, vocab, {"calib_tokens": tokens}, not model.config.tie_word_embeddings)


def file_maker(out: Path, reuse: bool, files: dict[str, Path]):
    """make(key, build): files[key] = out/key.onnx, built by build(path) unless reused."""
    out.mkdir(parents=True, exist_ok=True)

    def make(key: str, build) -> None:
        path = out / f"{key}.onnx"
        files[key] = path if reuse and path.is_file() else build(path)

    return make


def build_files(name: str, out: Path, args, log) -> tuple[dict[str, Path], int, int]:
    """Export FP32 + gptq, convert to ort (acc 0, 4) and qdq (+ ort with a 4-bit head); files, params, vocab."""
    t = time.perf_counter()
    bm = bench_model(name, args)
    cfg = gx.QuantConfig(bits=4, group_size=128, format="gptq")
    files: dict[str, Path] = {}
    make = file_maker(out, args.reuse, files)
    make("gptq", lambda p: gx.export(bm.source, cfg, p, **bm.calib).path)
    make("fp32", lambda p: gx.export_float(bm.source, p))
    make("ort0", lambda p: convert(files["gptq"], p, "ort", accuracy_level=0))
    make("ort4", lambda p: convert(files["gptq"], p, "ort", accuracy_level=4))
    make("qdq", lambda p: convert(files["gptq"], p, "qdq"))
    if bm.untied_head:
        head = gx.QuantConfig(bits=4, group_size=128, format="ort", accuracy_level=4, skip=())
        make("ort4h", lambda p: gx.export(bm.source, head, p, **bm.calib).path)
    print(f"{name}: files ready in {time.perf_counter() - t:.0f}s", file=log, flush=True)
    return files, param_count(bm.model), bm.vocab


def open_session(path: Path, how: str):
    """A callable feed -> outputs on `path`, with intra_op threads = THREADS."""
    if how == "custom":
        sess = InferenceSession(path, intra_op_threads=THREADS)
        return lambda feed: sess.run(feed)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    plain = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda feed: plain.run(None, feed)


def measure(files: dict[str, Path], vocab: int, runs: int, prefill: int) -> dict[str, dict[str, float]]:
    """Median milliseconds of a 1-token forward and a `prefill`-token forward, formats interleaved."""
    rng = np.random.default_rng(0)
    feeds = {"token": {"input_ids": rng.integers(0, vocab, (1, 1))},
             "prefill": {"input_ids": rng.integers(0, vocab, (1, prefill))}}
    sessions = {key: open_session(files[key], how) for _, key, how in FORMATS if key in files}
    for run in sessions.values():  # warm-up (and the gptq runtime's dequantization cache)
        for feed in feeds.values():
            run(feed)
    times: dict[str, dict[str, list[float]]] = {key: {"token": [], "prefill": []} for key in sessions}
    for _ in range(runs):
        for kind, feed in feeds.items():
            for key, run in sessions.items():
                t = time.perf_counter()
                run(feed)
                times[key][kind].append((time.perf_counter() - t) * 1e3)
    return {key: {kind: statistics.median(v) for kind, v in d.items()} for key, d in times.items()}


def table(rows: list[dict], prefill: int) -> str:
    """Markdown table of the measured rows."""
    lines = [f"| model | format | file | token ms (M=1) | prefill {prefill} ms | token speed-up vs FP32 |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if r["format"].startswith("FP16"):
            lines.append(f"| {r['model']} | {r['format']} | {r['bytes'] / 1e6:.1f} MB | - | - | - |")
            continue
        lines.append(f"| {r['model']} | {r['format']} | {r['bytes'] / 1e6:.1f} MB | {r['token_ms']:.2f} | "
                     f"{r['prefill_ms']:.1f} | {r['fp32_token_ms'] / r['token_ms']:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", choices=["default", "llama-random", "llama-tiny"],
                   default=["default", "llama-random"])
    p.add_argument("--quick", action="store_true", help="tiny random Llama only (a smoke run, < 1 minute)")
    p.add_argument("--runs", type=int, default=10, help="timed rounds per format (median)")
    p.add_argument("--prefill", type=int, default=128, help="prefill length in tokens")
    p.add_argument("--nsamples", type=int, default=8, help="calibration windows (latency does not depend on them)")
    p.add_argument("--seqlen", type=int, default=256, help="tokens per calibration window")
    p.add_argument("--out-dir", default="out/bench")
    p.add_argument("--reuse", action="store_true", help="keep files already in --out-dir")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.nsamples, args.seqlen = ["llama-tiny"], 2, 32
    if args.runs < 1:
        p.error("--runs must be at least 1")
    log = sys.stderr
    rows: list[dict] = []
    for name in args.models:
        files, params, vocab = build_files(name, Path(args.out_dir) / name, args, log)
        med = measure(files, vocab, args.runs, args.prefill)
        for label, key, _ in FORMATS:
            if key not in files:
                continue
            rows.append({"model": name, "format": label, "bytes": file_bytes(files[key]),
                         "token_ms": med[key]["token"], "prefill_ms": med[key]["prefill"],
                         "fp32_token_ms": med["fp32"]["token"]})
            print(f"{name} {label}: token {med[key]['token']:.2f} ms, prefill {med[key]['prefill']:.1f} ms",
                  file=log, flush=True)
        rows.append({"model": name, "format": "FP16 (2 B/param, not run)", "bytes": 2 * params})
    out = Path(args.out_dir)
    (out / "bench_formats.json").write_text(json.dumps(
        {"threads": THREADS, "runs": args.runs, "prefill": args.prefill, "onnxruntime": ort.__version__,
         "rows": rows}, indent=2))
    print(f"CPU, onnxruntime {ort.__version__}, intra_op threads {THREADS}, medians of {args.runs} rounds\n")
    print(table(rows, args.prefill))
    return 0


if __name__ == "__main__":
    sys.exit(main())
