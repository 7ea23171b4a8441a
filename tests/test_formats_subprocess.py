"""The stock formats run in a plain onnxruntime process: no gptq_export, no onnxruntime-extensions.

For tiny GPT-2, OPT and Llama models, each case exports the `gptq` file with `export()` and derives
the `ort` (accuracy levels 0 and 4) and `qdq` files from it with `convert()` (the same tensors
`export(format=...)` writes: see tests/passes/test_onnx_formats.py). A separate Python process that
imports only onnxruntime and numpy runs them on fixed token ids from a .npy file; its logits must
match the `gptq` file run in-process through gptq_export.runtime and the rewritten torch graph.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
import torch
from test_api import tiny_model

import gptq_export as gx
from gptq_export.api import convert
from gptq_export.runtime import InferenceSession

VOCAB = 300
EXACT = 1e-4  # accuracy level 0 / QDQ at level 0 vs the gptq file and the torch graph
INT8_ACTIVATIONS = 2e-2  # accuracy level 4 (int8 activations): a sanity bound

# One parametrization covering every axis without the full cross product:
# architectures x bits {2, 4, 8} x sym/asym x act-order on/off x per-channel / groups / static groups.
CASES = {  # id: (arch, bits, group_size, sym, act_order, static_groups)
    "gpt2-4bit-g32-asym": ("gpt2", 4, 32, False, False, False),
    "gpt2-8bit-perchannel-sym-actorder": ("gpt2", 8, -1, True, True, False),
    "gpt2-2bit-g16-asym-actorder": ("gpt2", 2, 16, False, True, False),
    "gpt2-4bit-g128-sym-actorder": ("gpt2", 4, 128, True, True, False),  # one group for K=64, two for K=256
    "opt-4bit-perchannel-asym-actorder": ("opt", 4, -1, False, True, False),
    "opt-2bit-g32-sym": ("opt", 2, 32, True, False, False),
    "opt-8bit-g64-asym-actorder": ("opt", 8, 64, False, True, False),
    "llama-4bit-g32-sym-actorder": ("llama", 4, 32, True, True, False),
    "llama-2bit-perchannel-asym": ("llama", 2, -1, False, False, False),
    "llama-8bit-g32-sym": ("llama", 8, 32, True, False, False),
    "llama-4bit-g16-asym-actorder-static": ("llama", 4, 16, False, True, True),
}

RUNNER = textwrap.dedent(
    """
    import sys
    import numpy as np
    import onnxruntime as ort

    ids_path, out_dir, *files = sys.argv[1:]
    ids = np.load(ids_path)
    for spec in files:
        name, path = spec.split("=", 1)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        # Keep onnxruntime from fusing DequantizeLinear + MatMul at accuracy level 4 (int8 activations).
        opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        np.save(f"{out_dir}/{name}.npy", sess.run(None, {"input_ids": ids})[0])
    for mod in ("gptq_export", "onnxruntime_extensions", "torch"):
        assert mod not in sys.modules, mod + " was imported"
    """
)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("case", list(CASES))
def test_stock_formats_match_gptq_in_a_plain_onnxruntime_process(case, tmp_path):
    arch, bits, group_size, sym, act_order, static = CASES[case]
    model = tiny_model(arch, VOCAB)
    tokens = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    config = gx.QuantConfig(bits=bits, group_size=group_size, sym=sym, act_order=act_order, static_groups=static,
                            format="gptq")
    result = gx.export(model, config, tmp_path / "gptq.onnx", calib_tokens=tokens)

    files = {"ort": convert(result.path, tmp_path / "ort.onnx", "ort", accuracy_level=0),
             "ort-int8": convert(result.path, tmp_path / "ort-int8.onnx", "ort", accuracy_level=4)}
    if bits in (4, 8):
        files["qdq"] = convert(result.path, tmp_path / "qdq.onnx", "qdq")
    for name, path in files.items():
        proto = onnx.load(str(path))
        assert {n.domain for n in proto.graph.node} <= {"", "com.microsoft"}, name
        assert {o.domain for o in proto.opset_import} <= {"", "com.microsoft"}, name
        want = "MatMulNBits" if name.startswith("ort") else "DequantizeLinear"
        assert sum(n.op_type == want for n in proto.graph.node) == len(result.reports), name

    ids = np.random.default_rng(1).integers(0, VOCAB, size=(2, 12))
    np.save(tmp_path / "ids.npy", ids)
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, str(tmp_path / "ids.npy"), str(tmp_path), *[f"{k}={v}" for k, v in files.items()]],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    logits = {name: np.load(tmp_path / f"{name}.npy") for name in files}

    gptq = InferenceSession(result.path, intra_op_threads=1).run({"input_ids": ids})[0]
    torch_graph = result.graph_module(torch.from_numpy(ids)).detach().numpy()
    assert rel_err(gptq, torch_graph) <= EXACT
    for name in ("ort", "qdq"):
        if name in logits:
            assert logits[name].shape == gptq.shape
            assert rel_err(logits[name], gptq) <= EXACT, name
            assert rel_err(logits[name], torch_graph) <= EXACT, name
    assert rel_err(logits["ort-int8"], torch_graph) <= INT8_ACTIVATIONS
