"""The unchanged export on a real float BERT encoder (all-MiniLM-L6-v2 from PyPI)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gptq_export as gx
from gptq_export.evaluate import cosine_rows, mean_pool
from gptq_export.models import load_model, minilm_dir
from gptq_export.runtime import InferenceSession

pytestmark = pytest.mark.slow


def test_minilm_4bit_embeddings_stay_close_to_float(tmp_path):
    folder = minilm_dir()
    loaded = load_model(folder)
    out = tmp_path / "minilm.onnx"
    res = gx.export(folder, gx.QuantConfig(bits=4, group_size=128, format="gptq"), out, gx.CalibConfig(nsamples=8, seqlen=128))
    # 6 layers x (q, k, v, attention output, intermediate, output); the pooler is not on this path.
    assert len(res.reports) == 36
    assert [n for n, _ in res.skipped] == ["pooler.dense"]
    sentences = ["The cat sat on the mat.", "Quantization shrinks neural networks.", "Paris is in France."]
    batch = loaded.tokenizer(sentences, padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        fp = mean_pool(loaded.model(input_ids=ids, attention_mask=mask).last_hidden_state.numpy(), mask.numpy())
    hidden = InferenceSession(out).run({"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    cos = cosine_rows(mean_pool(hidden, mask.numpy()), fp)
    assert np.all(cos > 0.95), cos
    # ...and the ONNX file computes exactly the quantized torch graph.
    ref = res.graph_module(ids, mask).detach().numpy()
    assert np.linalg.norm(hidden - ref) / np.linalg.norm(ref) <= 1e-4
