"""ONNX emit: external data for big models, atomic writes, metadata."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from test_api import tiny_model

import gptq_export as gx
from gptq_export import emit
from gptq_export.emit import read_metadata
from gptq_export.errors import ExportError
from gptq_export.runtime import InferenceSession


@pytest.fixture(scope="module")
def gpt2():
    return tiny_model("gpt2", 300)


def calib_tokens():
    return torch.randint(0, 300, (2, 16))


def test_external_data_when_weights_pass_the_threshold(gpt2, tmp_path, monkeypatch):
    monkeypatch.setattr(emit, "EXTERNAL_DATA_THRESHOLD", 0)
    out = tmp_path / "big.onnx"
    res = gx.export(gpt2, gx.QuantConfig(bits=4, group_size=32, format="gptq"), out, calib_tokens=calib_tokens())
    data = tmp_path / "big.onnx.data"
    assert data.exists() and data.stat().st_size > 100_000  # the big tensors moved out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    assert res.file_bytes == out.stat().st_size + data.stat().st_size
    ids = torch.randint(0, 300, (1, 9))
    got = InferenceSession(out).run({"input_ids": ids.numpy()})[0]
    ref = res.graph_module(ids).detach().numpy()
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) <= 1e-4


def test_failed_check_leaves_no_file(gpt2, tmp_path, monkeypatch):
    def broken(*_a, **_k):
        raise onnx.checker.ValidationError("simulated")

    monkeypatch.setattr(emit.onnx.checker, "check_model", broken)
    with pytest.raises(ExportError, match="onnx.checker"):
        gx.export(gpt2, gx.QuantConfig(bits=4, group_size=32), tmp_path / "m.onnx", calib_tokens=calib_tokens())
    assert list(tmp_path.iterdir()) == []


def test_existing_file_is_replaced_only_on_success(gpt2, tmp_path):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"old")
    gx.export(gpt2, gx.QuantConfig(bits=8, group_size=-1), out, calib_tokens=calib_tokens())
    model = onnx.load(str(out))
    meta = read_metadata(model)
    assert meta["config"]["bits"] == 8 and meta["config"]["group_size"] == -1
    assert {d["name"] for d in meta["layers"]} == {f"transformer.h.{i}.{m}" for i in range(2)
                                                   for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    assert meta["skipped"] == [{"name": "lm_head", "reason": "matches --skip pattern 'lm_head'"}]
    assert all(d["loss"] <= d["rtn_loss"] * 1.0001 for d in meta["layers"])


def test_float_export_has_no_custom_nodes_and_matches_torch(gpt2, tmp_path):
    path = gx.export_float(gpt2, tmp_path / "fp.onnx")
    model = onnx.load(str(path))
    assert not [n for n in model.graph.node if n.domain == gx.DOMAIN]
    ids = torch.randint(0, 300, (2, 5))
    got = InferenceSession(path).run({"input_ids": ids.numpy()})[0]
    ref = gpt2(ids, use_cache=False).logits.detach().numpy()
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) <= 1e-5
