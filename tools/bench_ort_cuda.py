"""onnxruntime with the gptq custom op: device="cuda" against device="cpu" (logits and per-token latency).

    python tools/bench_ort_cuda.py                  # tiny GPT-2 / OPT / Llama + a ~60M GPT-2; table last
    python tools/bench_ort_cuda.py --trace-probe    # which seq Dim lets torch.export trace the tiny Llama

Each model is exported in the `gptq` format (custom op `gptq_export.QuantLinear`) and run by
`gptq_export.runtime.InferenceSession` twice: device="cpu" (NumPy kernel) and device="cuda" (the
CUDA kernels through CuPy; x is copied to the GPU and y back on every call, as onnxruntime-extensions
hands the op NumPy arrays). Reported: the relative error of the CUDA logits against the CPU logits
(same prompt), whether greedy decoding picks the same tokens, and the time per generated token of
a greedy loop of `--new` tokens after a `--prompt`-token prompt. The exported graph has no KV cache,
so every step runs the whole sequence: the per-token time is one forward over 32..47 tokens.

--trace-probe exports the tiny Llama with the sequence Dim of passes/trace.py replaced, in turn, by
each candidate (the file itself is not changed) and checks the CPU runtime's logits against the
quantized torch graph it traced, at sequence lengths 1, 5 and 17.
Writes $OUT/ort_cuda.json when OUT is set.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

VOCAB = 400
CALIB_SHAPE = (4, 32)


def tiny_model(arch: str, vocab: int = VOCAB, big: bool = False) -> torch.nn.Module:
    """Random models: the test suite's tiny configurations, or (big) a ~60M-parameter GPT-2."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    if big:
        return GPT2LMHeadModel(GPT2Config(n_layer=6, n_embd=768, n_head=12, vocab_size=vocab, n_positions=256,
                                          bos_token_id=0, eos_token_id=0)).eval()
    if arch == "gpt2":
        return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=vocab, n_positions=128,
                                          bos_token_id=0, eos_token_id=0)).eval()
    if arch == "opt":
        return OPTForCausalLM(OPTConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, ffn_dim=128,
                                        vocab_size=vocab, max_position_embeddings=128, word_embed_proj_dim=64,
                                        bos_token_id=0, eos_token_id=0, pad_token_id=1)).eval()
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                            num_key_value_heads=2, intermediate_size=96, vocab_size=vocab,
                                            max_position_embeddings=128, bos_token_id=0, eos_token_id=0)).eval()
    raise ValueError(arch)


#: Candidate sequence Dims for passes/trace.py (None: the file as it is).
SEQ_FIXES = {
    "current": None,
    "min2": lambda max_seq: torch.export.Dim("seq", min=2, max=max_seq),
    "auto": lambda max_seq: torch.export.Dim.AUTO,
    "dynamic": lambda max_seq: torch.export.Dim.DYNAMIC,
}


@contextlib.contextmanager
def seq_dim(fix: str):
    """Replace the Dim named "seq" that passes.trace.dynamic_shapes returns by SEQ_FIXES[fix]."""
    from gptq_export.passes import trace

    make = SEQ_FIXES[fix]
    if make is None:
        yield
        return
    original = trace.dynamic_shapes

    def patched(*args, **kwargs):
        def swap(spec):
            if isinstance(spec, dict):
                return {k: (make(getattr(v, "max", None) or 4096) if getattr(v, "__name__", None) == "seq" else v)
                        for k, v in spec.items()}
            if isinstance(spec, list | tuple):
                return type(spec)(swap(s) for s in spec)
            return spec

        return swap(original(*args, **kwargs))

    trace.dynamic_shapes = patched
    try:
        yield
    finally:
        trace.dynamic_shapes = original


def export(model, path: Path, bits: int, group: int, act_order: bool, fix: str = "current", rtn: bool = False):
    import gptq_export as gx

    vocab = model.config.vocab_size
    cfg = gx.QuantConfig(bits=bits, group_size=group, act_order=act_order, format="gptq",
                         method=gx.Method.RTN if rtn else gx.Method.GPTQ)
    calib = gx.CalibConfig(nsamples=CALIB_SHAPE[0], seqlen=CALIB_SHAPE[1], seed=1)
    tokens = torch.randint(0, vocab, CALIB_SHAPE, generator=torch.Generator().manual_seed(1))
    with seq_dim(fix):
        return gx.export(model, cfg, path, calib, calib_tokens=tokens)


def session(path: Path, device: str):
    from gptq_export.runtime import InferenceSession

    return InferenceSession(path, device=device)


def run(sess, device: str, ids: np.ndarray) -> np.ndarray:
    from gptq_export import runtime

    runtime.registry.select(device)  # the custom op's kernel registry is process-wide: pick this session's
    return sess.run({"input_ids": ids})[0]


def greedy(sess, device: str, prompt: np.ndarray, new: int) -> tuple[list[int], float]:
    """Greedy tokens and the median seconds per generated token (full forward each step)."""
    ids = prompt.copy()
    toks, times = [], []
    for _ in range(new):
        t0 = time.perf_counter()
        logits = run(sess, device, ids)
        times.append(time.perf_counter() - t0)
        tok = int(logits[0, -1].argmax())
        toks.append(tok)
        ids = np.concatenate([ids, np.array([[tok]], dtype=ids.dtype)], axis=1)
    return toks, statistics.median(times)


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def compare(name: str, path: Path, vocab: int, prompt_len: int, new: int) -> dict:
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, vocab, (1, prompt_len)).astype(np.int64)
    batch = rng.integers(0, vocab, (2, 17)).astype(np.int64)
    row = {"model": name}
    sess = {d: session(path, d) for d in ("cpu", "cuda")}
    for d in ("cpu", "cuda"):  # warm-up: weights dequantized (cpu) or uploaded and repacked (cuda)
        run(sess[d], d, prompt)
    row["logits_rel_err"] = rel_err(run(sess["cuda"], "cuda", batch), run(sess["cpu"], "cpu", batch))
    toks = {}
    for d in ("cpu", "cuda"):
        toks[d], row[f"{d}_ms_per_token"] = greedy(sess[d], d, prompt, new)
        row[f"{d}_ms_per_token"] *= 1e3
        one = prompt[:, :1]
        ts = []
        for _ in range(10):
            t0 = time.perf_counter()
            run(sess[d], d, one)
            ts.append(time.perf_counter() - t0)
        row[f"{d}_ms_seq1"] = statistics.median(ts) * 1e3
    row["greedy_match"] = float(np.mean(np.array(toks["cpu"]) == np.array(toks["cuda"])))
    return row


def trace_probe(tmp: Path) -> list[dict]:
    from gptq_export.runtime import InferenceSession

    model = tiny_model("llama")
    rows = []
    for fix in SEQ_FIXES:
        row = {"fix": fix}
        try:
            result = export(model, tmp / f"llama_{fix}.onnx", 4, 32, True, fix=fix)
            sess = InferenceSession(tmp / f"llama_{fix}.onnx", device="cpu")
            errs = []
            for seq in (1, 5, 17):
                ids = torch.randint(0, VOCAB, (2, seq), generator=torch.Generator().manual_seed(seq))
                try:  # the rewritten (quantized) torch graph; it may refuse a seq outside its Dim
                    with torch.no_grad():
                        ref = result.graph_module(ids)
                    ref = (ref[0] if isinstance(ref, tuple | list) else ref).numpy()
                    errs.append(f"{rel_err(run(sess, 'cpu', ids.numpy()), ref):.1e}")
                except Exception as exc:
                    errs.append(f"{type(exc).__name__}: {' '.join(str(exc).split())[:80]}")
            row["ok"], row["rel_err_seq_1_5_17"] = True, errs
        except Exception as exc:
            msg = " ".join(str(exc).split())
            row["ok"], row["error"] = False, f"{type(exc).__name__}: {msg[:300]}"
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\ntrace probe, tiny Llama (torch {torch.__version__}, transformers {__import__('transformers').__version__})")
    for r in rows:
        print(f"{r['fix']:>8}: " + (f"ok, ONNX (CPU runtime) vs traced graph, rel err at seq 1/5/17 = {r['rel_err_seq_1_5_17']}"
                                    if r["ok"] else r["error"][:200]))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace-probe", action="store_true")
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=16)
    ap.add_argument("--llama-fix", default="auto", choices=list(SEQ_FIXES),
                    help="seq Dim used to export the tiny Llama (see --trace-probe)")
    args = ap.parse_args()
    out = os.environ.get("OUT")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.trace_probe:
            rows = trace_probe(tmp)
            if out:
                Path(out, "trace_probe.json").write_text(json.dumps(rows, indent=1))
            return
        from gptq_export.kernels.cuda import cuda_available

        reason = cuda_available()
        if reason:
            sys.exit(f"bench_ort_cuda needs CUDA: {reason}")
        specs = [  # name, model, bits, group, act-order, seq fix, RTN
            ("gpt2 w4g32", tiny_model("gpt2"), 4, 32, False, "current", False),
            ("opt w3 act", tiny_model("opt"), 3, -1, True, "current", False),
            ("gpt2 w2g16 act", tiny_model("gpt2"), 2, 16, True, "current", False),
            ("opt w8g64", tiny_model("opt"), 8, 64, False, "current", False),
            (f"llama w4g32 act ({args.llama_fix})", tiny_model("llama"), 4, 32, True, args.llama_fix, False),
            ("gpt2-60M w4g128 rtn", tiny_model("gpt2", 8192, big=True), 4, 128, False, "current", True),
        ]
        rows = []
        for name, model, bits, group, act, fix, rtn in specs:
            path = tmp / "m.onnx"
            try:
                t0 = time.perf_counter()
                export(model, path, bits, group, act, fix=fix, rtn=rtn)
                row = compare(name, path, model.config.vocab_size, args.prompt, args.new)
                row["export_s"] = round(time.perf_counter() - t0, 1)
            except Exception as exc:
                row = {"model": name, "error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"}
            rows.append(row)
            print(json.dumps(row), flush=True)
            path.unlink(missing_ok=True)
    if out:
        Path(out, "ort_cuda.json").write_text(json.dumps(rows, indent=1))
    import onnxruntime

    print(f"\nonnxruntime {onnxruntime.__version__}, gptq custom op: device='cuda' vs 'cpu'; greedy loop, prompt "
          f"{args.prompt}, {args.new} new tokens, no KV cache (each step = one forward over the whole sequence)")
    print(f"{'model':<28} {'rel err':>8} {'match':>6} {'cpu ms/tok':>10} {'cuda ms/tok':>11} {'cpu seq1':>9} "
          f"{'cuda seq1':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['model']:<28} ERROR {r['error'][:150]}")
            continue
        print(f"{r['model']:<28} {r['logits_rel_err']:>8.1e} {r['greedy_match']:>6.2f} {r['cpu_ms_per_token']:>10.2f} "
              f"{r['cuda_ms_per_token']:>11.2f} {r['cpu_ms_seq1']:>9.2f} {r['cuda_ms_seq1']:>9.2f}")
    print("rel err = ||cuda - cpu|| / ||cpu|| of the logits of a [2, 17] batch; match = greedy tokens equal; "
          "ms/tok = median time of one greedy step; seq1 = one forward of 1 token (ms)")


if __name__ == "__main__":
    main()
