"""End to end on tiny random GPT-2, OPT, Llama and BERT folders: export -> ONNX -> onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from conftest import save_tiny_model

import gptq_export as gx
from gptq_export.emit import OP_TYPE, read_metadata
from gptq_export.runtime import InferenceSession

CALIB = gx.CalibConfig(nsamples=4, seqlen=32, seed=1)


def tiny_model(arch: str, vocab: int, tie: bool = False) -> torch.nn.Module:
    """Tiny randomly initialised models of the three decoder families and BERT."""
    from transformers import (
        BertConfig,
        BertModel,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        OPTConfig,
        OPTForCausalLM,
    )

    torch.manual_seed(0)
    if arch == "gpt2":
        return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=vocab, n_positions=128,
                                          bos_token_id=0, eos_token_id=0))
    if arch == "opt":
        return OPTForCausalLM(OPTConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, ffn_dim=128,
                                        vocab_size=vocab, max_position_embeddings=128, word_embed_proj_dim=64,
                                        bos_token_id=0, eos_token_id=0, pad_token_id=1))
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                            num_key_value_heads=2, intermediate_size=96, vocab_size=vocab,
                                            max_position_embeddings=128, tie_word_embeddings=tie,
                                            bos_token_id=0, eos_token_id=0))
    if arch == "bert":
        return BertModel(BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=96,
                                    vocab_size=vocab, max_position_embeddings=128, pad_token_id=1))
    raise ValueError(arch)


def linear_names(model: torch.nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"}


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize(
    "arch,config",
    [
        ("gpt2", gx.QuantConfig(bits=4, group_size=32, act_order=False, format="gptq")),
        ("opt", gx.QuantConfig(bits=3, group_size=-1, act_order=True)),  # 3-bit: auto = gptq
        ("llama", gx.QuantConfig(bits=2, group_size=16, sym=True, act_order=True, static_groups=True, format="gptq")),
        ("llama", gx.QuantConfig(bits=8, group_size=64, method="rtn", format="gptq")),
    ],
)
def test_onnx_matches_quantized_torch_graph(arch, config, tiny_tokenizer, tmp_path):
    model = tiny_model(arch, len(tiny_tokenizer))
    folder = save_tiny_model(model, tiny_tokenizer, tmp_path / arch)
    out = tmp_path / "q.onnx"
    result = gx.export(folder, config, out, CALIB)

    # Every Linear but lm_head became our node; the others are reported with a reason.
    expected = linear_names(model) - {"lm_head"}
    assert {r.name for r in result.reports} == expected
    assert [n for n, _ in result.skipped] == ["lm_head"]
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    custom = [n for n in proto.graph.node if n.domain == gx.DOMAIN and n.op_type == OP_TYPE]
    assert len(custom) == len(expected)
    assert not [n for n in proto.graph.node if n.op_type in ("MatMul", "Gemm") and "lm_head" not in n.name] or arch
    attrs = {a.name: a.i for a in custom[0].attribute}
    assert attrs["bits"] == config.bits
    meta = read_metadata(proto)
    assert meta["config"]["bits"] == config.bits and len(meta["layers"]) == len(expected)

    # Dynamic batch/sequence: shapes unlike the trace's example.
    sess = InferenceSession(out)
    for batch, seq in [(1, 1), (3, 17)]:
        ids = torch.randint(0, len(tiny_tokenizer), (batch, seq))
        ref = result.graph_module(ids).detach().numpy()
        got = sess.run({"input_ids": ids.numpy()})[0]
        assert got.shape == ref.shape
        assert rel_err(got, ref) <= 1e-4

    # The quantized graph really is quantized: it differs from the float model, but not wildly.
    ids = torch.randint(0, len(tiny_tokenizer), (2, 16))
    fp = model(ids, use_cache=False).logits.detach().numpy()
    q = result.graph_module(ids).detach().numpy()
    assert 1e-6 < rel_err(q, fp) < 1.0


def test_gptq_beats_rtn_per_layer_on_a_real_text_calibration(tiny_tokenizer, tmp_path):
    model = tiny_model("llama", len(tiny_tokenizer))
    folder = save_tiny_model(model, tiny_tokenizer, tmp_path / "llama")
    result = gx.export(folder, gx.QuantConfig(bits=3, group_size=-1), tmp_path / "q.onnx", CALIB)
    gptq = sum(r.loss for r in result.reports)
    rtn = sum(r.rtn_loss for r in result.reports)
    assert gptq < rtn


def test_tied_lm_head_is_reported_not_quantized(tiny_tokenizer, tmp_path):
    model = tiny_model("llama", len(tiny_tokenizer), tie=True)
    folder = save_tiny_model(model, tiny_tokenizer, tmp_path / "llama")
    result = gx.export(folder, gx.QuantConfig(bits=4, group_size=32, skip=()), tmp_path / "q.onnx", CALIB)
    reasons = dict(result.skipped)
    assert "tied" in reasons["lm_head"]
    assert "lm_head" not in {r.name for r in result.reports}


def test_bert_encoder_every_linear_quantized(tiny_tokenizer, tmp_path):
    model = tiny_model("bert", len(tiny_tokenizer))
    folder = save_tiny_model(model, tiny_tokenizer, tmp_path / "bert")
    out = tmp_path / "bert.onnx"
    result = gx.export(folder, gx.QuantConfig(bits=8, group_size=32, format="gptq"), out, CALIB)
    # The pooler is not on the last_hidden_state path: reported, not silently dropped.
    assert {n for n, _ in result.skipped} == {"pooler.dense"}
    assert {r.name for r in result.reports} == linear_names(model) - {"pooler.dense"}
    sess = InferenceSession(out)
    ids = torch.randint(0, len(tiny_tokenizer), (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    ref = result.graph_module(ids, mask).detach().numpy()
    got = sess.run({"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    assert rel_err(got, ref) <= 1e-4


def test_module_input_is_not_modified(tiny_tokenizer, tmp_path):
    model = tiny_model("gpt2", len(tiny_tokenizer))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tokens = torch.randint(0, len(tiny_tokenizer), (2, 16))
    gx.export(model, gx.QuantConfig(bits=4, group_size=32), tmp_path / "q.onnx", calib_tokens=tokens)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("fmt,layer_bits", [
    ("ort", (("lm_head", 8), ("*.down_proj", 2))),  # 8-bit head (quantized despite the default skip)
    ("gptq", (("lm_head", 3), ("*.q_proj", 8))),
])
def test_layer_bits_mixed_widths(fmt, layer_bits, tiny_tokenizer, tmp_path):
    model = tiny_model("llama", len(tiny_tokenizer))
    tokens = torch.randint(0, len(tiny_tokenizer), (2, 16), generator=torch.Generator().manual_seed(0))
    config = gx.QuantConfig(bits=4, group_size=32, accuracy_level=0, format=fmt, layer_bits=layer_bits)
    result = gx.export(model, config, tmp_path / "q.onnx", calib_tokens=tokens)
    assert result.skipped == []  # lm_head matched --skip but a layer_bits pattern names it
    want = {name: config.for_layer(name).bits for name in linear_names(model)}
    assert {r.name: r.bits for r in result.reports} == want
    assert len(set(want.values())) == 3
    proto = onnx.load(str(result.path))
    meta = read_metadata(proto)
    assert {layer["name"]: layer["bits"] for layer in meta["layers"]} == want
    assert meta["config"]["layer_bits"] == [list(p) for p in layer_bits]
    op = "MatMulNBits" if fmt == "ort" else OP_TYPE
    node_bits = sorted(next(a.i for a in n.attribute if a.name == "bits") for n in proto.graph.node if n.op_type == op)
    assert node_bits == sorted(want.values())
    ids = torch.randint(0, len(tiny_tokenizer), (2, 9))
    ref = result.graph_module(ids).detach().numpy()
    got = InferenceSession(result.path).run({"input_ids": ids.numpy()})[0]
    assert rel_err(got, ref) <= 1e-4
