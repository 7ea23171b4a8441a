"""fuse_shared_input: Linears reading one tensor become one wide module; outputs unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from gptq_export.config import QuantConfig
from gptq_export.fuse_linears import FusedHead, FusedPart, concat_packed, fuse_shared_input
from gptq_export.gptq import rtn_quantize
from gptq_export.pack import pack_linear, unpack_linear
from gptq_export.quant_linear_module import QuantLinear, swap_linears


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=101, max_position_embeddings=64, bos_token_id=0,
                      eos_token_id=0, tie_word_embeddings=False)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


def quantize_all(model, bits: int = 4, group: int = 32, act_order_in: str | None = None):
    """RTN-packed QuantLinears for every Linear but lm_head; `act_order_in`: that module gets a
    permuted g_idx (a different act-order permutation from its siblings)."""
    packed = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and name != "lm_head":
            q = rtn_quantize(m.weight.detach().float(), QuantConfig(bits=bits, group_size=group))
            p = pack_linear(q, group)
            if name == act_order_in:
                p.g_idx = torch.from_numpy(np.random.default_rng(0).permutation(p.g_idx.numpy())).to(torch.int32)
            packed[name] = p
    swap_linears(model, packed)
    return model


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.tensor([[3, 14, 15, 92, 65, 35, 89, 79]])
EXPECTED = [(f"model.layers.{i}.self_attn.q_proj", f"model.layers.{i}.self_attn.k_proj",
             f"model.layers.{i}.self_attn.v_proj") for i in range(2)] + \
           [(f"model.layers.{i}.mlp.gate_proj", f"model.layers.{i}.mlp.up_proj") for i in range(2)]


def test_concat_packed_is_the_members_side_by_side():
    gen = torch.Generator().manual_seed(0)
    cfg = QuantConfig(bits=3, group_size=16)
    parts = [pack_linear(rtn_quantize(torch.randn(n, 48, generator=gen), cfg), 16) for n in (40, 8, 24)]
    wide = unpack_linear(concat_packed(parts))
    each = [unpack_linear(p) for p in parts]
    assert torch.equal(wide.codes, torch.cat([q.codes for q in each], 0))
    assert torch.equal(wide.zeros, torch.cat([q.zeros for q in each], 1))
    assert torch.equal(wide.scales, torch.cat([q.scales for q in each], 1))
    assert torch.equal(wide.g_idx, each[0].g_idx)
    parts[1].g_idx = parts[1].g_idx.flip(0)
    with pytest.raises(ValueError, match="different g_idx"):
        concat_packed(parts)


@pytest.mark.parametrize("quantized", [False, True])
def test_fused_llama_gives_the_same_logits(quantized):
    model = tiny_llama()
    if quantized:
        quantize_all(model)
    ref = logits(model, IDS)
    report = fuse_shared_input(model, input_ids=IDS[:, :3])
    assert sorted(report.groups) == sorted(EXPECTED) and report.skipped == []
    attn = model.model.layers[0].self_attn
    assert isinstance(attn.q_proj, FusedHead) and isinstance(attn.v_proj, FusedPart)
    got = logits(model, IDS)
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert model.model.layers[1].mlp.up_proj._group._last is None  # the last member let the outputs go


def test_a_member_called_on_another_tensor_computes_its_own_output():
    model = quantize_all(tiny_llama())
    attn = model.model.layers[0].self_attn
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want_k, want_v = attn.k_proj(x), attn.v_proj(x)
        fuse_shared_input(model, input_ids=IDS[:, :3])
        attn.q_proj(torch.randn(2, 5, 64))  # the kept outputs belong to another tensor
        assert torch.allclose(attn.k_proj(x), want_k, rtol=1e-5, atol=1e-5)
        assert torch.allclose(attn.v_proj(x), want_v, rtol=1e-5, atol=1e-5)


def test_siblings_with_different_act_order_permutations_stay_apart():
    model = quantize_all(tiny_llama(), act_order_in="model.layers.1.self_attn.k_proj")
    ref = logits(model, IDS)
    report = fuse_shared_input(model, input_ids=IDS[:, :3])
    names = ("model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.k_proj", "model.layers.1.self_attn.v_proj")
    assert report.skipped == [(names, "different g_idx (act-order permutations)")]
    assert names not in report.groups and len(report.groups) == 3
    assert isinstance(model.model.layers[1].self_attn.k_proj, QuantLinear)
    assert torch.allclose(logits(model, IDS), ref, rtol=1e-5, atol=1e-5)


def test_fused_state_dict_holds_each_wide_module_once():
    model = quantize_all(tiny_llama())
    fuse_shared_input(model, input_ids=IDS[:, :3])
    keys = list(model.state_dict())
    assert not [k for k in keys if ".k_proj." in k or ".v_proj." in k or ".up_proj." in k]
    wide = sorted(k for k in keys if k.startswith("model.layers.0.self_attn.q_proj."))
    assert wide == [f"model.layers.0.self_attn.q_proj.group.wide.{b}" for b in ("g_idx", "qweight", "qzeros", "scales")]


def test_fused_quantized_llama_compiles_on_cpu():
    model = quantize_all(tiny_llama())
    fuse_shared_input(model, input_ids=IDS[:, :3])
    ref = logits(model, IDS)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        got = compiled(input_ids=IDS).logits
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_gpu_fused_quantized_llama_matches_unfused(cuda):
    model = quantize_all(tiny_llama()).to(cuda, torch.float16)
    ids = IDS.to(cuda)
    ref = logits(model, ids).float()
    report = fuse_shared_input(model, input_ids=ids[:, :3])
    assert len(report.groups) == 4
    got = logits(model, ids).float()
    assert float((got - ref).norm() / ref.norm()) <= 1e-3  # the same kernels, wider layers
