"""QuantLinear under torch.compile: the custom op replaces the direct kernel call, same outputs."""

from __future__ import annotations

import pytest
import torch

from gptq_export.config import QuantConfig
from gptq_export.gptq import rtn_quantize
from gptq_export.pack import pack_linear
from gptq_export.quant_linear_module import QuantLinear


def quant_mlp(k: int, h: int, n: int, bits: int, group: int) -> torch.nn.Sequential:
    """Two QuantLinears (RTN of random weights) around a GELU; the first with a bias."""
    gen = torch.Generator().manual_seed(0)
    layers = []
    for (i, o), bias in (((k, h), True), ((h, n), False)):
        q = rtn_quantize(torch.randn(o, i, generator=gen), QuantConfig(bits=bits, group_size=group))
        layers.append(QuantLinear(pack_linear(q, group), torch.randn(o, generator=gen) if bias else None))
    return torch.nn.Sequential(layers[0], torch.nn.GELU(), layers[1])


def compiled_matches_eager(model: torch.nn.Module, x: torch.Tensor, tol: float) -> None:
    with torch.no_grad():
        eager = model(x).float()
        torch._dynamo.reset()
        got = torch.compile(model, fullgraph=True)(x).float()
    assert got.shape == eager.shape
    assert float((got - eager).norm() / eager.norm()) <= tol


def test_quant_linear_compiles_on_cpu():
    x = torch.randn(3, 5, 96, generator=torch.Generator().manual_seed(1))
    compiled_matches_eager(quant_mlp(96, 80, 40, 4, 32), x, 1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("bits", [4, 3])
def test_gpu_quant_linear_compiles_on_cuda(cuda, bits):
    model = quant_mlp(300, 264, 200, bits, 32).to(cuda, torch.float16)
    x = torch.randn(3, 5, 300, generator=torch.Generator().manual_seed(1)).to(cuda, torch.float16)
    compiled_matches_eager(model, x, 1e-2)  # fp16: the compiled GELU rounds differently
    with torch.no_grad():  # and the eager CUDA path agrees with the CPU reference
        ref = quant_mlp(300, 264, 200, bits, 32)(x.float().cpu())
        got = model(x).float().cpu()
    assert float((got - ref).norm() / ref.norm()) <= 2e-2


def test_decode_benchmark_compiles_a_quantized_llama_on_cpu(tmp_path):
    """tools/bench_decode_gpu.py --tiny on the CPU: the torch.compile'd decode step of a Llama with
    QuantLinears gives the eager step's logits (the script's smoke test, not a timing)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "tools" / "bench_decode_gpu.py"
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    proc = subprocess.run([sys.executable, str(script), "--tiny", "--device", "cpu", "--compile", "--bits", "4",
                           "--new", "4", "--profile", "2", "--fuse"], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r["variant"]: r for r in (json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{"))}
    assert list(rows) == ["fp32", "fp32 fused", "w4g128", "w4g128 fused"]
    for r in rows.values():
        assert "error" not in r, r
        assert r["compiled_step_logits_rel_err"] <= 1e-4
        assert r["compiled_vs_eager_token_match"] == 1.0 and r["hf_vs_static_token_match"] == 1.0
        assert r["profile"]["kernels_per_token"] > 0 and r["profile"]["top"]
    for name in ("w4g128", "w4g128 fused"):  # the op, not a graph break
        assert any(k["name"] == "gptq_export::quant_linear" for k in rows[name]["profile"]["top"])
    assert rows["fp32 fused"]["token_match_vs_fp16"] == 1.0  # fusing changes no token
    assert rows["w4g128 fused"]["token_match_vs_fp16"] == rows["w4g128"]["token_match_vs_fp16"]
    quant_calls = {n: next(k["per_token"] for k in rows[n]["profile"]["top"] if k["name"] == "gptq_export::quant_linear")
                   for n in ("w4g128", "w4g128 fused")}
    assert quant_calls == {"w4g128": 14, "w4g128 fused": 8}  # 2 layers x 7 Linears; q/k/v and gate/up as one each
