"""Greedy decode speed of a ~1B-parameter Llama-shaped model on the GPU: fp16 vs our 4-bit and 3-bit kernels.

    python tools/bench_decode_gpu.py                 # hidden 2048, 16 layers, 32 prompt + 128 new tokens
    python tools/bench_decode_gpu.py --tiny --device cpu   # smoke test of the script itself
    python tools/bench_decode_gpu.py --compile --profile 8  # + where a compiled step's time goes
    python tools/bench_decode_gpu.py --compile --fuse  # + each variant with q/k/v and gate/up fused
    python tools/bench_decode_gpu.py --env-ab GPTQ_EXPORT_PDL=1 GPTQ_EXPORT_TORCH_DIRECT=0
                                  # + each quantized variant's loops again under each setting
    python tools/bench_decode_gpu.py --profile-eager 8  # + where an eager step's host time goes (cProfile)

The model is a randomly initialised transformers LlamaForCausalLM (quantization quality is
irrelevant for speed). Quantized variants replace every Linear but lm_head by a QuantLinear of
its RTN-quantized weight (gptq_export.gptq.rtn_quantize + pack.pack_linear, group 128). With
--fuse each variant also runs with the Linears that read one tensor fused into one module
(gptq_export.fuse_linears.fuse_shared_input: one kernel for q/k/v, one for gate/up).

Three decode loops per variant, each timing the new tokens after a 32-token prefill:
  hf-eager     transformers forward with its DynamicCache, one call per token (use_cache=True);
  static-eager a plain loop over the same modules with a preallocated KV cache;
  static-graph the static loop's one-token step captured once in a CUDA graph and replayed
               (no per-kernel launch overhead: shows what the kernels themselves allow);
  compiled     (--compile) the same step through torch.compile first (Inductor fuses the
               norms, rotary and activations; our Linears stay one opaque op each), then
               captured in a CUDA graph as above (on the CPU: the compiled step, no graph).
Writes the numbers to $OUT/decode.json when OUT is set; prints a table last.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import json
import os
import time

import torch
import torch.nn.functional as F


def build_model(args, device):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=args.hidden, num_hidden_layers=args.layers, intermediate_size=args.intermediate,
                      num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, vocab_size=args.vocab,
                      max_position_embeddings=4096, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    return model.to(dtype).eval()


def quantize_model(model, bits: int, group: int, workers: int = 8):
    """Deep copy of `model` with every Linear but lm_head swapped for a QuantLinear (RTN)."""
    from gptq_export.config import QuantConfig
    from gptq_export.gptq import rtn_quantize
    from gptq_export.pack import pack_linear
    from gptq_export.quant_linear_module import swap_linears

    qmodel = copy.deepcopy(model)
    cfg = QuantConfig(bits=bits, group_size=group)
    names = [n for n, m in qmodel.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    quantized = {n: rtn_quantize(qmodel.get_submodule(n).weight.detach().float(), cfg) for n in names}
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:  # NumPy bit packing, off the GIL
        packed = dict(zip(names, pool.map(lambda n: pack_linear(quantized[n], group), names), strict=True))
    swap_linears(qmodel, packed)
    return qmodel, packed


class StaticDecoder:
    """The Llama forward over the model's own modules with a preallocated KV cache: no Python-side
    state changes per token, so one step can be captured in a CUDA graph."""

    def __init__(self, model, max_len: int):
        cfg = model.config
        self.model, self.max_len = model, max_len
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        p = next(model.parameters())
        shape = (cfg.num_hidden_layers, 1, self.kv_heads, max_len, self.head_dim)
        self.k = torch.zeros(shape, dtype=p.dtype, device=p.device)
        self.v = torch.zeros_like(self.k)
        self.arange = torch.arange(max_len, device=p.device)

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Logits [1, 1, vocab] of the last of `ids` [1, T] at positions `pos` [T] (long)."""
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        inner = self.model.model
        T = ids.shape[1]
        x = inner.embed_tokens(ids)
        cos, sin = inner.rotary_emb(x, pos[None])
        mask = (self.arange[None, :] <= pos[:, None])[None, None]  # [1, 1, T, max_len]
        for i, layer in enumerate(inner.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(1, T, self.heads, self.head_dim).transpose(1, 2)
            k = attn.k_proj(h).view(1, T, self.kv_heads, self.head_dim).transpose(1, 2)
            v = attn.v_proj(h).view(1, T, self.kv_heads, self.head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            self.k[i].index_copy_(2, pos, k)
            self.v[i].index_copy_(2, pos, v)
            o = F.scaled_dot_product_attention(q, self.k[i], self.v[i], attn_mask=mask, enable_gqa=True)
            x = x + attn.o_proj(o.transpose(1, 2).reshape(1, T, self.heads * self.head_dim))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.model.lm_head(inner.norm(x[:, -1:]))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def decode_hf(model, prompt, new, device):
    out = model(input_ids=prompt, use_cache=True)
    past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
    toks = [tok]
    sync(device)
    t0 = time.perf_counter()
    for _ in range(new - 1):
        out = model(input_ids=tok, past_key_values=past, use_cache=True)
        past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
        toks.append(tok)
    sync(device)
    return torch.cat(toks, 1), (new - 1) / (time.perf_counter() - t0)


def profile_steps(step, n: int, device) -> dict:
    """Kernels of n calls of `step` (launched one by one, no graph) under torch.profiler: per
    token, the kernel count and GPU time of each kernel name (on the CPU: each op's self time)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    step()  # warm
    sync(device)
    with profile(activities=acts) as prof:
        for _ in range(n):
            step()
        sync(device)
    per: dict[str, list[float]] = {}
    for e in prof.events():
        if cuda and e.device_type == DeviceType.CUDA:
            us = e.time_range.elapsed_us()
        elif not cuda and e.device_type == DeviceType.CPU:
            us = e.self_cpu_time_total
        else:
            continue
        c = per.setdefault(e.name, [0, 0.0])
        c[0], c[1] = c[0] + 1, c[1] + us
    rows = sorted(((name, c / n, us / n) for name, (c, us) in per.items()), key=lambda r: -r[2])
    return {"unit": "kernels" if cuda else "ops (self CPU time)", "kernels_per_token": sum(r[1] for r in rows),
            "kernel_us_per_token": sum(r[2] for r in rows),
            "top": [{"name": name, "per_token": c, "us_per_token": round(us, 2)} for name, c, us in rows[:15]]}


@torch.no_grad()
def python_profile(step, n: int, device) -> dict:
    """cProfile of n eager calls of `step`: where the host's time per token goes (an eager decode
    of a small model is bound by Python and launch overhead, not by the GPU)."""
    import cProfile
    import pstats

    step()  # warm
    sync(device)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for _ in range(n):
        step()
    prof.disable()
    sync(device)
    ms = (time.perf_counter() - t0) * 1e3 / n
    stats = pstats.Stats(prof).stats  # {(file, line, func): (cc, ncalls, tottime, cumtime, callers)}
    rows = sorted(stats.items(), key=lambda kv: -kv[1][3])
    top = [{"func": f"{os.path.basename(f)}:{line}({fn})", "calls_per_token": nc / n,
            "self_us_per_token": round(tt * 1e6 / n, 1), "cum_us_per_token": round(ct * 1e6 / n, 1)}
           for (f, line, fn), (_, nc, tt, ct, _) in rows[:25]]
    return {"ms_per_token_profiled": round(ms, 2), "top_cumulative": top}


def decode_static(model, prompt, new, device, graph: bool, compiled: bool = False, profile: int = 0,
                  py_profile: int = 0):
    """(tokens, tokens/s, prefill ms, compiled-vs-eager logits error of one step or None,
    `profile_steps` of `profile` steps or None; with `py_profile` (eager only), `python_profile`
    of that many steps instead)."""
    P = prompt.shape[1]
    dec = StaticDecoder(model, P + new)
    fwd = torch.compile(dec.forward, dynamic=False) if compiled else dec.forward
    sync(device)
    t0 = time.perf_counter()
    tok = dec.forward(prompt, torch.arange(P, device=device)).argmax(-1)
    sync(device)
    prefill_ms = (time.perf_counter() - t0) * 1e3
    ids = torch.zeros((1, 1), dtype=torch.long, device=device)
    pos = torch.zeros(1, dtype=torch.long, device=device)

    def step():
        return fwd(ids, pos)

    step_err = None
    if compiled:  # compile before timing (writes cache slot P, rewritten by the first timed step)
        ids.copy_(tok)
        pos.fill_(P)
        got = step().float()
        ref = dec.forward(ids, pos).float()
        step_err = float((got - ref).norm() / ref.norm())  # compiled vs eager logits of one step
    if graph:
        ids.copy_(tok)
        pos.fill_(P)
        s = torch.cuda.Stream(device)
        s.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(s):
            for _ in range(3):  # warm-up (writes cache slot P, rewritten by the first replay)
                step()
        torch.cuda.current_stream(device).wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            logits = step()
    toks = [tok]
    sync(device)
    t0 = time.perf_counter()
    for i in range(new - 1):
        ids.copy_(tok)
        pos.fill_(P + i)
        if graph:
            g.replay()
        else:
            logits = step()
        tok = logits.argmax(-1)
        toks.append(tok)
    sync(device)
    tok_s = (new - 1) / (time.perf_counter() - t0)
    prof = profile_steps(step, profile, device) if profile else None  # rewrites the last cache slot
    if py_profile and not graph and not compiled:
        prof = python_profile(step, py_profile, device)
    return torch.cat(toks, 1), tok_s, prefill_ms, step_err, prof


def time_with_env(setting: str, model, prompt, args, device, use_graph: bool, ref_tokens) -> dict:
    """Tokens/s of the static-eager, graph and (--compile) compiled loops with the environment
    variables of `setting` ("NAME=VALUE", several joined by commas) set; previous values restored."""
    pairs = [p.partition("=")[::2] for p in setting.split(",")]
    saved = {name: os.environ.get(name) for name, _ in pairs}
    os.environ.update(dict(pairs))
    try:
        toks, out = None, {}
        for _ in range(2):  # a first run may compile or load kernels
            toks, out["static_eager_tok_s"], _, _, _ = decode_static(model, prompt, args.new, device, graph=False)
        if use_graph:
            out["static_graph_tok_s"] = decode_static(model, prompt, args.new, device, graph=True)[1]
        if args.compile:
            out["compiled_tok_s"] = decode_static(model, prompt, args.new, device, graph=use_graph, compiled=True)[1]
        out["token_match"] = float((toks == ref_tokens).float().mean())
        return out
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def weight_bytes(model) -> int:
    from gptq_export.quant_linear_module import QuantLinear

    total = 0
    for m in model.modules():
        if isinstance(m, QuantLinear):
            total += sum(t.numel() * t.element_size() for t in (m.qweight, m.scales, m.qzeros))
        else:
            total += sum(p.numel() * p.element_size() for p in m.parameters(recurse=False))
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--intermediate", type=int, default=5632)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--bits", type=int, nargs="*", default=[4, 3])
    ap.add_argument("--tiny", action="store_true", help="tiny model (smoke test)")
    ap.add_argument("--compile", action="store_true", help="also time the step through torch.compile")
    ap.add_argument("--profile", type=int, default=0, metavar="STEPS",
                    help="with --compile: kernels of that many compiled steps (torch.profiler, no graph)")
    ap.add_argument("--fuse", action="store_true",
                    help="also time each variant with the Linears that read one tensor fused (q/k/v, gate/up: "
                         "gptq_export.fuse_linears)")
    ap.add_argument("--profile-eager", type=int, default=0, metavar="STEPS",
                    help="cProfile that many eager static-loop steps per variant: where the host's time goes")
    ap.add_argument("--env-ab", nargs="+", default=[], metavar="NAME=VALUE[,NAME=VALUE]",
                    help="also time each quantized variant's static-eager and CUDA-graph (and compiled) loops with "
                         "each of these environment settings, e.g. GPTQ_EXPORT_PDL=1 (kernels/launch.py), "
                         "GPTQ_EXPORT_TORCH_DIRECT=0 (kernels/torch_cuda.py), or both joined by a comma")
    ap.add_argument("--only", nargs="+", metavar="VARIANT",
                    help="run only these variants, e.g. w4g128 'w4g128 fused' (the first is the ratios' base)")
    args = ap.parse_args()
    if args.tiny:
        args.hidden, args.layers, args.intermediate, args.heads, args.kv_heads, args.vocab = 128, 2, 256, 4, 2, 500
        args.new = min(args.new, 8)
    device = torch.device(args.device)
    use_graph = device.type == "cuda"

    t = time.perf_counter()
    base = build_model(args, device)
    n_params = sum(p.numel() for p in base.parameters())
    print(f"model: {n_params / 1e9:.2f}B parameters, built in {time.perf_counter() - t:.1f}s", flush=True)
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, args.vocab, (1, args.prompt), generator=gen).to(device)

    variants = [("fp16" if device.type == "cuda" else "fp32", None)] + [(f"w{b}g{args.group}", b) for b in args.bits]
    variants = [(n + (" fused" if fused else ""), b, fused) for n, b in variants
                for fused in ((False, True) if args.fuse else (False,))]
    if args.only:
        unknown = sorted(set(args.only) - {n for n, _, _ in variants})
        if unknown:
            ap.error(f"--only: no variant {', '.join(unknown)} (have: {', '.join(n for n, _, _ in variants)})")
        variants = [v for v in variants if v[0] in args.only]
    names = {n for n, _, _ in variants}
    rows = []
    ref_tokens = None
    kept = None  # (bits, quantized model) kept for its fused variant, which comes next
    for name, bits, fused in variants:
        t = time.perf_counter()
        if bits is None:
            model = copy.deepcopy(base) if fused else base  # base stays unfused: it is quantized next
        elif kept is not None and kept[0] == bits:
            (_, model), kept = kept, None  # fused in place below: quantized once for both rows
        else:
            model = quantize_model(base, bits, args.group)[0]
        if fused:
            from gptq_export.fuse_linears import fuse_shared_input

            report = fuse_shared_input(model, input_ids=prompt[:, :4])
            print(f"{name}: {len(report.groups)} runs of Linears fused, {len(report.skipped)} left apart", flush=True)
        build_s = time.perf_counter() - t
        row = {"variant": name, "weight_MB": weight_bytes(model) / 1e6, "build_s": round(build_s, 1)}
        try:
            for i in range(2):  # first call: kernel loads, repacks, allocator warm-up
                toks_s, tps_s, prefill_ms, _, py_prof = decode_static(model, prompt, args.new, device, graph=False,
                                                                      py_profile=args.profile_eager * i)
            row["static_eager_tok_s"], row["prefill_ms"] = tps_s, prefill_ms
            if py_prof:
                row["eager_python_profile"] = py_prof
            toks_h, tps_h = decode_hf(model, prompt, args.new, device)
            row["hf_eager_tok_s"] = tps_h
            row["hf_vs_static_token_match"] = float((toks_h == toks_s).float().mean())
            if use_graph:
                toks_g, tps_g, _, _, _ = decode_static(model, prompt, args.new, device, graph=True)
                row["static_graph_tok_s"] = tps_g
                row["graph_vs_eager_token_match"] = float((toks_g == toks_s).float().mean())
            if args.compile:
                toks_c, tps_c, _, err, prof = decode_static(model, prompt, args.new, device, graph=use_graph,
                                                            compiled=True, profile=args.profile)
                row["compiled_tok_s"], row["compiled_step_logits_rel_err"] = tps_c, err
                if prof:
                    row["profile"] = prof
                row["compiled_vs_eager_token_match"] = float((toks_c == toks_s).float().mean())
            for setting in args.env_ab if bits is not None else ():  # the same loops under each setting
                row.setdefault("env_ab", {})[setting] = time_with_env(setting, model, prompt, args, device, use_graph,
                                                                      toks_s)
            if ref_tokens is None:
                ref_tokens = toks_s
            row["token_match_vs_fp16"] = float((toks_s == ref_tokens).float().mean())
        except Exception as exc:  # report and go on with the other variants
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        rows.append(row)
        print(json.dumps(row), flush=True)
        if bits is not None and not fused and f"{name} fused" in names:
            kept = (bits, model)
        if bits is not None or fused:
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()

    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "decode.json"), "w") as f:
            json.dump({"args": vars(args), "params": n_params,
                       "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                       "rows": rows}, f, indent=1)
    base_row = rows[0]
    print(f"\nGreedy decode, prompt {args.prompt}, {args.new} new tokens, batch 1 ({n_params / 1e9:.2f}B params)")
    def cell(r, key):
        v, b = r.get(key), base_row.get(key)
        return (f"{v:.1f}" if v else "n/a", f"{v / b:.2f}x" if v and b else "n/a")

    base_name = base_row["variant"]
    xb = "x fp16" if base_name in ("fp16", "fp32") else "x 1st"
    print(f"{'variant':<14} {'weights MB':>10} {'hf-eager':>9} {'static':>9} {'graph':>9} {xb:>7} "
          + (f"{'compiled':>9} {xb:>7} " if args.compile else "") + f"{'prefill ms':>10} {'match':>6}")
    for r in rows:
        if "error" in r:
            print(f"{r['variant']:<14} ERROR {r['error']}")
            continue
        g, gx = cell(r, "static_graph_tok_s")
        c, cx = cell(r, "compiled_tok_s")
        print(f"{r['variant']:<14} {r['weight_MB']:>10.0f} {r['hf_eager_tok_s']:>9.1f} {r['static_eager_tok_s']:>9.1f} "
              f"{g:>9} {gx:>7} " + (f"{c:>9} {cx:>7} " if args.compile else "")
              + f"{r['prefill_ms']:>10.1f} {r['token_match_vs_fp16']:>6.2f}")
    print(f"tokens/s of the new tokens; '{xb}' = the column's speed over {base_name}'s; 'match' = greedy tokens equal to"
          f" {base_name}'s" + ("; compiled = torch.compile'd step (+ CUDA graph on a GPU)" if args.compile else ""))
    for r in rows:
        prof = r.get("profile")
        if not prof:
            continue
        print(f"\n{r['variant']}: compiled step, per token {prof['kernels_per_token']:.0f} {prof['unit']} taking "
              f"{prof['kernel_us_per_token']:.0f} us in all (timed loop: {1e6 / r['compiled_tok_s']:.0f} us per token);"
              " largest:")
        for k in prof["top"]:
            print(f"  {k['us_per_token']:>8.1f} us {k['per_token']:>5.0f}x  {k['name'][:100]}")
    for r in rows:
        prof = r.get("eager_python_profile")
        if not prof:
            continue
        print(f"\n{r['variant']}: eager static step under cProfile, {prof['ms_per_token_profiled']:.1f} ms per token;"
              " largest cumulative:")
        for f in prof["top_cumulative"]:
            print(f"  {f['cum_us_per_token']:>9.0f} us cum {f['self_us_per_token']:>8.0f} us self "
                  f"{f['calls_per_token']:>6.0f}x  {f['func'][:90]}")
    for r in rows:
        for setting, ab in r.get("env_ab", {}).items():
            cells = [f"{loop} {ab[key]:.1f} ({ab[key] / r[key]:.3f}x)" for loop, key in
                     (("static", "static_eager_tok_s"), ("graph", "static_graph_tok_s"), ("compiled", "compiled_tok_s"))
                     if key in ab and r.get(key)]
            print(f"{r['variant']} with {setting}: " + ", ".join(cells)
                  + f" tokens/s (x = over the row's own); tokens equal to eager's: {ab['token_match']:.2f}")
    if args.compile:
        errs = ", ".join(f"{r['variant']} {r['compiled_step_logits_rel_err']:.1e}" for r in rows
                         if r.get("compiled_step_logits_rel_err") is not None)
        print(f"compiled vs eager logits of one step (||c - e|| / ||e||): {errs}")


if __name__ == "__main__":
    main()
