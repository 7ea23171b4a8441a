"""End to end on a CUDA GPU (gpu marker): onnxruntime with device="cuda", the rewritten torch graph
on CUDA tensors (the custom op's CUDA kernel), and Hugging Face models with QuantLinear modules."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import save_tiny_model
from test_api import CALIB, tiny_model

import gptq_export as gx


def rel_err(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def graph_to(gm: torch.fx.GraphModule, device: torch.device) -> torch.fx.GraphModule:
    """Copy of an exported graph on `device`: buffers moved, device literals of the trace rewritten."""
    gm = copy.deepcopy(gm).to(device)

    def move(v):
        return device if isinstance(v, torch.device) else v

    for node in gm.graph.nodes:
        node.args = torch.fx.node.map_aggregate(node.args, move)
        node.kwargs = torch.fx.node.map_aggregate(node.kwargs, move)
    gm.recompile()
    return gm


@pytest.mark.gpu
@pytest.mark.parametrize(
    "arch,config",
    [
        ("gpt2", gx.QuantConfig(bits=4, group_size=32, format="gptq")),
        ("opt", gx.QuantConfig(bits=3, group_size=-1, act_order=True, format="gptq")),
        ("gpt2", gx.QuantConfig(bits=2, group_size=16, act_order=True, format="gptq")),
        ("opt", gx.QuantConfig(bits=8, group_size=64, format="gptq")),
        ("llama", gx.QuantConfig(bits=4, group_size=32, act_order=True, format="gptq")),
    ],
)
def test_runtime_cuda_and_graph_on_cuda_equal_cpu(cuda, arch, config, tiny_tokenizer, tmp_path):
    model = tiny_model(arch, len(tiny_tokenizer))
    folder = save_tiny_model(model, tiny_tokenizer, tmp_path / arch)
    out = tmp_path / "q.onnx"
    result = gx.export(folder, config, out, CALIB)
    ids = torch.randint(0, len(tiny_tokenizer), (2, 17))
    ref = result.graph_module(ids).detach().numpy()

    # The rewritten torch graph on CUDA tensors: quant_linear dispatches to its CUDA kernel.
    gm = graph_to(result.graph_module, cuda)
    got = gm(ids.to(cuda)).detach().float().cpu().numpy()
    assert rel_err(got, ref) <= 5e-3

    # onnxruntime with the "cuda" QuantLinear kernel vs the CPU kernel.
    pytest.importorskip("onnxruntime_extensions")
    from gptq_export.runtime import InferenceSession

    cpu = InferenceSession(out, device="cpu").run({"input_ids": ids.numpy()})[0]
    gpu = InferenceSession(out, device="cuda").run({"input_ids": ids.numpy()})[0]
    assert gpu.shape == cpu.shape
    assert rel_err(gpu, cpu) <= 5e-3
    assert rel_err(cpu, ref) <= 1e-4


@pytest.mark.gpu
@pytest.mark.parametrize("bits,act_order", [(4, False), (3, True), (8, False)])
def test_swap_linears_runs_a_hf_model_on_gpu(cuda, bits, act_order):
    from gptq_export.config import QuantConfig
    from gptq_export.gptq import rtn_quantize
    from gptq_export.pack import pack_linear
    from gptq_export.quant_linear_module import QuantLinear, swap_linears

    model = tiny_model("llama", 300).eval()
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    packed = {}
    for n in names:
        q = rtn_quantize(model.get_submodule(n).weight.detach(), QuantConfig(bits=bits, group_size=32))
        if act_order:  # any g_idx order is valid: permute which columns share a group
            perm = torch.randperm(q.g_idx.numel())
            q.g_idx = q.g_idx[perm].contiguous()  # still a valid packed layer (another W): fine here
        packed[n] = pack_linear(q, 32)
    assert swap_linears(model, packed) == names
    assert isinstance(model.model.layers[0].mlp.down_proj, QuantLinear)
    ids = torch.randint(0, 300, (2, 11))
    with torch.no_grad():
        ref = model(ids).logits.numpy()  # CPU: the custom op's NumPy implementation
        gpu32 = model.to(cuda)(ids.to(cuda)).logits.cpu().numpy()
        gpu16 = model.half()(ids.to(cuda)).logits.float().cpu().numpy()
    assert rel_err(gpu32, ref) <= 5e-3
    assert rel_err(gpu16, ref) <= 2e-2
    # Greedy generation with the KV cache on the GPU.
    out = model.generate(ids[:1].to(cuda), max_new_tokens=5, do_sample=False)
    assert out.shape[0] == 1 and 11 < out.shape[1] <= 16


def test_swap_linears_rejects_mismatches():
    from gptq_export.config import QuantConfig
    from gptq_export.gptq import rtn_quantize
    from gptq_export.pack import pack_linear
    from gptq_export.quant_linear_module import swap_linears

    model = tiny_model("llama", 300)
    p = pack_linear(rtn_quantize(torch.randn(64, 64), QuantConfig(bits=4, group_size=32)), 32)
    with pytest.raises(KeyError):
        swap_linears(model, {"model.nope": p})
    with pytest.raises(TypeError, match="not a Linear"):
        swap_linears(model, {"model.norm": p})
    with pytest.raises(ValueError, match="packed weights are 64 -> 64"):
        swap_linears(model, {"model.layers.0.mlp.up_proj": p})


@pytest.mark.gpu
def test_kv_decoder_generates_the_same_tokens_on_cuda(cuda, tmp_path):
    """A 3-bit gptq KV-cache decoder: greedy tokens with the CUDA kernels == CPU == HF with QuantLinear."""
    from test_genai import torch_greedy, varied_model

    from gptq_export.decode import Decoder
    from gptq_export.quant_linear_module import swap_linears

    model = varied_model("llama", 200)
    tokens = torch.randint(0, 200, (2, 32), generator=torch.Generator().manual_seed(0))
    config = gx.QuantConfig(bits=3, group_size=32, act_order=True, format="gptq")
    result = gx.export(model, config, tmp_path / "kv.onnx", calib_tokens=tokens, kv_cache=True)
    prompt = np.random.default_rng(2).integers(4, 200, (1, 7))
    on_cpu = gx.generate(Decoder(result.path), prompt, 24)
    on_gpu = gx.generate(Decoder(result.path, device="cuda"), prompt, 24)
    reference = varied_model("llama", 200)
    swap_linears(reference, result.packed)
    np.testing.assert_array_equal(on_cpu, torch_greedy(reference, prompt, 24))
    np.testing.assert_array_equal(on_gpu, on_cpu)
