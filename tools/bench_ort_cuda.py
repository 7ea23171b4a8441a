"""onnxruntime with the gptq custom op: device="cuda" against device="cpu" (logits and per-token latency).

    python tools/bench_ort_cuda.py                  # tiny GPT-2 / OPT / Llama + a ~60M GPT-2; table last

Each model is exported in the `gptq` format (custom op `gptq_export.QuantLinear`) and run by
`gptq_export.runtime.InferenceSession` twice: device="cpu" (NumPy kernel) and device="cuda" (the
CUDA kernels through CuPy; x is copied to the GPU and y back on every call, as onnxruntime-extensions
hands the op NumPy arrays). Reported: the relative error of the CUDA logits against the CPU logits
(same prompt), whether greedy decoding picks the same tokens, and the time per generated token of
a greedy loop of `--new` tokens after a `--prompt`-token prompt. The exported graph has no KV cache,
so every step runs the whole sequence: the per-token time is one forward over 32..47 tokens.

(The tiny Llama needs transformers 5.17 / torch 2.11's sequence-Dim fallback of passes/trace.py:
`trace_model` retries with Dim.AUTO when torch.export reports violated constraints.)
Writes $OUT/ort_cuda.json when OUT is set.
"""

from __future__ import annotations

import argparse
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


def export(model, path: Path, bits: int, group: int, act_order: bool, rtn: bool = False):
    import gptq_export as gx

    vocab = model.config.vocab_size
    cfg = gx.QuantConfig(bits=bits, group_size=group, act_order=act_order, format="gptq",
                         method=gx.Method.RTN if rtn else gx.Method.GPTQ)
    calib = gx.CalibConfig(nsamples=CALIB_SHAPE[0], seqlen=CALIB_SHAPE[1], seed=1)
    tokens = torch.randint(0, vocab, CALIB_SHAPE, generator=torch.Generator().manual_seed(1))
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=16)
    args = ap.parse_args()
    out = os.environ.get("OUT")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        from gptq_export.kernels.cuda import cuda_available

        reason = cuda_available()
        if reason:
            sys.exit(f"bench_ort_cuda needs CUDA: {reason}")
        specs = [  # name, model, bits, group, act-order, RTN
            ("gpt2 w4g32", tiny_model("gpt2"), 4, 32, False, False),
            ("opt w3 act", tiny_model("opt"), 3, -1, True, False),
            ("gpt2 w2g16 act", tiny_model("gpt2"), 2, 16, True, False),
            ("opt w8g64", tiny_model("opt"), 8, 64, False, False),
            ("llama w4g32 act", tiny_model("llama"), 4, 32, True, False),
            ("gpt2-60M w4g128 rtn", tiny_model("gpt2", 8192, big=True), 4, 128, False, True),
        ]
        rows = []
        for name, model, bits, group, act, rtn in specs:
            path = tmp / "m.onnx"
            try:
                t0 = time.perf_counter()
                export(model, path, bits, group, act, rtn=rtn)
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
