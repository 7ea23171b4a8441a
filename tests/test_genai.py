"""KV-cache decoder and onnxruntime-genai folders (`-o DIR`) on tiny GPT-2, OPT and Llama models.

Greedy tokens from three implementations must be equal for 32 new tokens:
  * PyTorch: the Hugging Face model with its Linears swapped for QuantLinear (the same packed
    weights, `quant_linear_module.swap_linears`) and `model.generate()` with its own KV cache;
  * our loop (`gptq_export.generate`) over the exported decoder in plain onnxruntime;
  * onnxruntime-genai loading the folder unchanged.
The tiny models are initialised with std 0.2 (not 0.02) so greedy decoding does not collapse to one
repeated token. The `ort` format runs at accuracy level 0 (fp32 compute, like torch).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import save_tiny_model

import gptq_export as gx
from gptq_export.api import convert
from gptq_export.decode import Decoder
from gptq_export.quant_linear_module import swap_linears

NEW_TOKENS = 32
PROMPT = 9


def varied_model(arch: str, vocab: int) -> torch.nn.Module:
    """Tiny random decoders whose greedy continuations vary (init std 0.2)."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    if arch == "gpt2":
        cfg = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=vocab, n_positions=128, initializer_range=0.2,
                         bos_token_id=0, eos_token_id=0)
        return GPT2LMHeadModel(cfg).eval()
    if arch == "opt":
        cfg = OPTConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, ffn_dim=128, vocab_size=vocab,
                        max_position_embeddings=128, word_embed_proj_dim=64, init_std=0.2, bos_token_id=0,
                        eos_token_id=0, pad_token_id=1)
        return OPTForCausalLM(cfg).eval()
    cfg = LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=96, vocab_size=vocab, max_position_embeddings=128, initializer_range=0.2,
                      bos_token_id=0, eos_token_id=0)
    return LlamaForCausalLM(cfg).eval()


def torch_greedy(model: torch.nn.Module, prompt: np.ndarray, n: int) -> np.ndarray:
    with torch.no_grad():
        out = model.generate(torch.as_tensor(prompt), max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[:, prompt.shape[1]:].numpy()


def genai_greedy(folder, prompt: np.ndarray, n: int, stop_at_eos: bool = False) -> np.ndarray:
    """onnxruntime-genai's greedy tokens [1, n] (fewer when stop_at_eos and eos comes first)."""
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    length = prompt.shape[1] + n
    params.set_search_options(max_length=length, min_length=0 if stop_at_eos else length, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(prompt.astype(np.int32))
    out = []
    while not gen.is_done():
        gen.generate_next_token()
        out.append(int(gen.get_next_tokens()[0]))
    return np.array([out])


@pytest.fixture(scope="module", params=["gpt2", "opt", "llama"])
def exported(request, tiny_tokenizer, tmp_path_factory):
    """A genai folder (ort 4-bit g32, accuracy level 0) of a tiny model, with the torch reference."""
    arch = request.param
    vocab = len(tiny_tokenizer)
    root = tmp_path_factory.mktemp(f"genai-{arch}")
    src = save_tiny_model(varied_model(arch, vocab), tiny_tokenizer, root / "src")
    config = gx.QuantConfig(bits=4, group_size=32, format="ort", accuracy_level=0)
    result = gx.export(src, config, root / "out", gx.CalibConfig(nsamples=4, seqlen=32, seed=1))
    reference = varied_model(arch, vocab)
    swap_linears(reference, result.packed)
    return arch, result, reference


def test_folder_layout_and_config(exported, tiny_tokenizer):
    arch, result, reference = exported
    files = sorted(p.name for p in result.path.iterdir())
    assert {"model.onnx", "genai_config.json", "tokenizer.json", "tokenizer_config.json"} <= set(files)
    assert not [f for f in files if f.startswith(".")]  # no temporary leftovers
    cfg = json.loads((result.path / "genai_config.json").read_text())
    dec = cfg["model"]["decoder"]
    assert dec["num_hidden_layers"] == 2 and dec["head_size"] == 16
    assert dec["num_key_value_heads"] == (2 if arch == "llama" else 4)
    assert cfg["search"]["past_present_share_buffer"] is False
    assert cfg["model"]["vocab_size"] == len(tiny_tokenizer)
    assert result.kv_cache and result.summary()["kv_cache"] is True
    sess = ort.InferenceSession(str(result.path / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    assert names == ["input_ids", "attention_mask", "position_ids",
                     *[f"past_key_values.{i}.{kv}" for i in range(2) for kv in ("key", "value")]]
    assert [o.name for o in sess.get_outputs()] == ["logits", *[f"present.{i}.{kv}" for i in range(2)
                                                                for kv in ("key", "value")]]
    past = sess.get_inputs()[3].shape
    assert past[0] == "batch_size" and past[2] == "past_sequence_length"
    assert sess.get_inputs()[1].shape == ["batch_size", "total_sequence_length"]
    ops = {n.op_type for n in onnx.load(str(result.path / "model.onnx")).graph.node}
    assert "MatMulNBits" in ops


def test_greedy_tokens_equal_torch_ours_and_genai(exported):
    arch, result, reference = exported
    prompt = np.random.default_rng(3).integers(4, reference.config.vocab_size, (1, PROMPT))
    want = torch_greedy(reference, prompt, NEW_TOKENS)
    assert len(set(want[0].tolist())) > 4, "the reference continuation is degenerate; the test would be weak"
    ours = gx.generate(result.path, prompt, NEW_TOKENS)
    np.testing.assert_array_equal(ours, want)
    np.testing.assert_array_equal(genai_greedy(result.path, prompt, NEW_TOKENS), want)


def test_decoder_logits_match_torch_prefill_and_steps(exported):
    """Prefill (empty past) then single-token steps give the torch model's logits (batch 2)."""
    arch, result, reference = exported
    dec = Decoder(result.path)
    ids = np.random.default_rng(5).integers(4, reference.config.vocab_size, (2, 7))
    with torch.no_grad():
        full = reference(torch.as_tensor(ids)).logits.numpy()
    logits, past = dec.step(ids[:, :4], dec.empty_past(2), 0)
    np.testing.assert_allclose(logits, full[:, 3], rtol=1e-4, atol=1e-4 * np.abs(full).max())
    for t in range(4, 7):
        logits, past = dec.step(ids[:, t:t + 1], past, t)
        np.testing.assert_allclose(logits, full[:, t], rtol=1e-4, atol=1e-4 * np.abs(full).max())
    assert past["past_key_values.0.key"].shape[2] == 7


def test_kv_cache_file_output_and_float_decoder(tiny_tokenizer, tmp_path):
    """--kv-cache with a .onnx file writes just the decoder; export_float gives the FP decoder too."""
    vocab = len(tiny_tokenizer)
    model = varied_model("llama", vocab)
    tokens = torch.randint(0, vocab, (2, 32), generator=torch.Generator().manual_seed(0))
    config = gx.QuantConfig(bits=4, group_size=32, format="gptq")
    result = gx.export(model, config, tmp_path / "q.onnx", calib_tokens=tokens, kv_cache=True)
    assert result.path.is_file() and result.kv_cache
    fp = gx.export_float(model, tmp_path / "fp.onnx", kv_cache=True)
    prompt = np.random.default_rng(1).integers(4, vocab, (1, 6))
    want = torch_greedy(model, prompt, 12)
    np.testing.assert_array_equal(gx.generate(fp, prompt, 12), want)
    reference = varied_model("llama", vocab)
    swap_linears(reference, result.packed)
    want = torch_greedy(reference, prompt, 12)
    np.testing.assert_array_equal(gx.generate(result.path, prompt, 12), want)
    # convert() turns the gptq decoder into the stock formats with the same weights.
    for fmt in ("ort", "qdq"):
        other = convert(result.path, tmp_path / f"{fmt}.onnx", fmt, accuracy_level=0)
        np.testing.assert_array_equal(gx.generate(other, prompt, 12), want)
