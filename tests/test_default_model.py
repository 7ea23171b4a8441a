"""End to end on the real embedded model (SmolLM2-135M-Instruct): export 4-bit, run in onnxruntime.

Slow (about three minutes on 2 cores, most of it torch.onnx.export); runs in CI.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import gptq_export as gx
from gptq_export.data import eval_windows, packaged_text
from gptq_export.emit import OP_TYPE
from gptq_export.evaluate import perplexity
from gptq_export.models import load_model
from gptq_export.runtime import InferenceSession

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("smol") / "smol-w4g128.onnx"
    result = gx.export(None, gx.QuantConfig(bits=4, group_size=128, format="gptq"), out, gx.CalibConfig(nsamples=4, seqlen=128))
    return result


def test_every_linear_but_the_tied_head_is_a_custom_node(exported):
    assert len(exported.reports) == 30 * 7
    assert [n for n, _ in exported.skipped] == ["lm_head"]
    proto = onnx.load(str(exported.path))
    onnx.checker.check_model(proto)
    assert sum(n.op_type == OP_TYPE and n.domain == gx.DOMAIN for n in proto.graph.node) == 210
    # GPTQ beats RTN on the layer objective it optimizes, layer by layer on average.
    assert np.mean([r.loss for r in exported.reports]) < np.mean([r.rtn_loss for r in exported.reports])


def test_onnx_perplexity_is_far_below_vocabulary_and_matches_torch(exported):
    tok = load_model(None).tokenizer
    windows = eval_windows(tok, packaged_text("wiki"), 256, 2)
    sess = InferenceSession(exported.path)
    ppl = perplexity(sess, windows)
    # A random model of this shape scores ~55,000 and the fp32 model ~23 (docs/assets).
    assert 5 < ppl < 60, ppl
    ids = windows[:1, :64]
    ref = exported.graph_module(ids).detach().numpy()
    got = sess.run({"input_ids": ids.numpy()})[0]
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) <= 1e-4


@pytest.fixture(scope="module")
def genai_folder(tmp_path_factory):
    """The default model as an onnxruntime-genai folder: ort 4-bit g128 at accuracy level 0."""
    out = tmp_path_factory.mktemp("smol-genai") / "smollm2-w4"
    config = gx.QuantConfig(bits=4, group_size=128, format="ort", accuracy_level=0)
    return gx.export(None, config, out, gx.CalibConfig(nsamples=4, seqlen=128))


def test_genai_folder_greedy_tokens_equal_torch(genai_folder):
    """Up to 32 greedy tokens (stopping at eos, as all three do by default): HF generate() with
    QuantLinear == our onnxruntime loop == onnxruntime-genai."""
    import onnxruntime_genai as og
    import torch
    from test_genai import genai_greedy

    from gptq_export.quant_linear_module import swap_linears

    loaded = load_model(None)
    prompt_text = "Once upon a time, in a small village by the sea, there lived"
    ids = loaded.tokenizer(prompt_text, return_tensors="np")["input_ids"]
    og_model = og.Model(str(genai_folder.path))
    np.testing.assert_array_equal(og.Tokenizer(og_model).encode(prompt_text), ids[0])  # the copied tokenizer

    swap_linears(loaded.model, genai_folder.packed)
    eos = loaded.model.generation_config.eos_token_id
    with torch.no_grad():
        want = loaded.model.generate(torch.as_tensor(ids), max_new_tokens=32, do_sample=False)[0, ids.shape[1]:]
    want = want.numpy()
    assert len(want) >= 24, want  # a long enough continuation for the comparison to mean something
    np.testing.assert_array_equal(gx.generate(genai_folder.path, ids, 32, eos_token_id=eos)[0], want)

    np.testing.assert_array_equal(genai_greedy(genai_folder.path, ids, 32, stop_at_eos=True)[0], want)
