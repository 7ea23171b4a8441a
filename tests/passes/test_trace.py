"""passes/trace.py: the Dim.AUTO fallback for the sequence dim, for plain and KV-cache graphs."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from test_genai import varied_model

import gptq_export as gx
from gptq_export.models import load_model
from gptq_export.passes import trace


@pytest.mark.parametrize("kv_cache", [False, True])
def test_constraint_violation_falls_back_to_auto_seq(kv_cache, monkeypatch, tmp_path):
    """torch 2.11 + transformers 5.17 reject [1, max_seq] for Llama's sequence dim; we retry with Dim.AUTO."""
    real = trace._export
    calls = []

    def flaky(wrapper, example, shapes):
        calls.append(shapes)
        if len(calls) == 1:
            raise RuntimeError("Constraints violated (seq)! For more information, run with TORCH_LOGS=...")
        return real(wrapper, example, shapes)

    monkeypatch.setattr(trace, "_export", flaky)
    model = varied_model("llama", 100)
    traced = trace.trace_model(load_model(model), kv_cache=kv_cache)
    assert traced.auto_seq and len(calls) == 2
    assert calls[1][0][1] is torch.export.Dim.AUTO
    path = gx.export_float(model, tmp_path / "m.onnx", kv_cache=kv_cache)  # the fallback again, through emit
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape == (["batch_size", "sequence_length"] if kv_cache else ["batch", "seq"])
    ids = np.random.default_rng(0).integers(0, 100, (1, 5))
    feed = {"input_ids": ids}
    if kv_cache:
        feed.update({"attention_mask": np.ones((1, 5), np.int64), "position_ids": np.arange(5)[None]})
        feed.update({i.name: np.zeros((1, 2, 0, 16), np.float32) for i in sess.get_inputs()[3:]})
    with torch.no_grad():
        want = model(torch.as_tensor(ids)).logits.numpy()
    np.testing.assert_allclose(sess.run(None, feed)[0], want, rtol=1e-4, atol=1e-4)


def test_other_trace_errors_are_one_line_trace_errors(monkeypatch):
    def broken(wrapper, example, shapes):
        raise RuntimeError("data-dependent control flow\nlong details")

    monkeypatch.setattr(trace, "_export", broken)
    with pytest.raises(gx.GptqExportError, match="torch.export could not trace .*data-dependent control flow"):
        trace.trace_model(load_model(varied_model("llama", 100)))


def test_sliding_window_cache_is_refused_with_one_line():
    from transformers import MistralConfig, MistralForCausalLM

    model = MistralForCausalLM(MistralConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                             num_key_value_heads=2, intermediate_size=96, vocab_size=100,
                                             sliding_window=8))
    with pytest.raises(gx.GptqExportError, match="DynamicSlidingWindowLayer.*export it without --kv-cache") as info:
        trace.kv_layout(model)
    assert "\n" not in str(info.value)
    assert trace.kv_layout(varied_model("llama", 100)) == trace.KVLayout(num_layers=2, kv_heads=2, head_dim=16)
