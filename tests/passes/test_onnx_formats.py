"""The ONNX -> ONNX format pass: `gptq` QuantLinear -> MatMulNBits (`ort`) and DequantizeLinear + MatMul (`qdq`).

Weights are decoded from each format's initializers with NumPy (act-order permutation undone from
the Gather in front of the node) and must be EXACTLY the `gptq` weights. Hand-built QuantLinear
graphs cover the block choices fast; one tiny Llama export covers the real graph (q/k/v share one
Gather under act-order) and the API path (`export(format="ort")` == `convert(gptq file)`).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from test_api import tiny_model

import gptq_export as gx
from gptq_export.api import convert
from gptq_export.cli import main
from gptq_export.config import DOMAIN, Format
from gptq_export.emit import OP_TYPE, read_metadata
from gptq_export.errors import ConfigError, ExportError
from gptq_export.kernels.ort_layout import dequantize_blocked, dequantize_matmulnbits
from gptq_export.kernels.reference import dequantize, pack_codes, pack_zeros, quant_matmul
from gptq_export.passes.onnx_formats import block_size_for, convert_format, to_matmulnbits, to_qdq

# --------------------------------------------------------------------------- helpers


def random_layer(rng, name, n, k, bits, group_size, sym=False, act_order=False, bias=False) -> dict:
    """A QuantLinear's packed tensors as GPTQ writes them (act-order: groups over a random column order)."""
    g = k if group_size == -1 else group_size
    groups = -(-k // g)
    g_idx = np.arange(k) // g
    if act_order:
        order = rng.permutation(k)
        g_idx = np.empty(k, dtype=np.int64)
        g_idx[order] = np.arange(k) // g
    codes = rng.integers(0, 1 << bits, size=(k, n))
    zeros = np.full((groups, n), 1 << (bits - 1)) if sym else rng.integers(0, 1 << bits, size=(groups, n))
    return {
        "name": name, "bits": bits, "K": k, "N": n, "group_size": g,
        "qweight": pack_codes(codes, bits), "scales": (rng.random((groups, n)) * 0.1 + 0.01).astype(np.float32),
        "qzeros": pack_zeros(zeros, bits), "g_idx": g_idx.astype(np.int32),
        "bias": (rng.standard_normal(n) * 0.1).astype(np.float32) if bias else np.zeros(0, np.float32),
    }


def quant_linear_model(layers: list[dict], inputs: list[str] | None = None) -> onnx.ModelProto:
    """A graph of QuantLinear nodes (layer i reads graph input inputs[i], default "x"), one output each."""
    inputs = inputs or ["x"] * len(layers)
    k_of = {x: layer["K"] for x, layer in zip(inputs, layers, strict=True)}
    nodes, inits, outputs = [], [], []
    for x, layer in zip(inputs, layers, strict=True):
        names = [f"{layer['name']}.{t}" for t in ("qweight", "scales", "qzeros", "g_idx", "bias")]
        for t, nm in zip(("qweight", "scales", "qzeros", "g_idx", "bias"), names, strict=True):
            inits.append(numpy_helper.from_array(layer[t], nm))
        nodes.append(helper.make_node(OP_TYPE, [x, *names], [f"{layer['name']}.out"], domain=DOMAIN,
                                      name=f"{layer['name']}/quant", K=layer["K"], N=layer["N"], bits=layer["bits"],
                                      group_size=layer["group_size"]))
        outputs.append(helper.make_tensor_value_info(f"{layer['name']}.out", TensorProto.FLOAT, ["M", layer["N"]]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["M", k])
                                           for x, k in k_of.items()], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(DOMAIN, 1)])


def reference_outputs(layers: list[dict], feeds: list[np.ndarray]) -> list[np.ndarray]:
    """y = x @ W + bias of each layer, from the `gptq` NumPy reference."""
    return [quant_matmul(x, lay["qweight"], lay["scales"], lay["qzeros"], lay["g_idx"], lay["bias"], lay["bits"],
                         lay["K"], lay["N"]) for lay, x in zip(layers, feeds, strict=True)]


def run_stock(model: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    """Plain onnxruntime (no custom-op library), exact settings: no int8 activations, no QDQ fusion at level 4."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, feed)


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _strip(name: str, suffix: str) -> str:
    return name[: -len(suffix)] if name.endswith(suffix) else name


def dequantized_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every quantized layer's weight W [K, N] (float64, original K order), decoded from the initializers."""
    arrays = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}

    def unpermute(x: str, w: np.ndarray) -> np.ndarray:
        gather = producer.get(x)
        if gather is None or gather.op_type != "Gather" or gather.input[1] not in arrays:
            return w
        perm = arrays[gather.input[1]]
        out = np.empty_like(w)
        out[perm] = w  # x[..., perm] @ w == x @ out
        return out

    weights = {}
    for node in model.graph.node:
        a = _attrs(node)
        if node.op_type == OP_TYPE:
            q, s, z, g = (arrays[i] for i in node.input[1:5])
            weights[_strip(node.input[1], ".qweight")] = dequantize(q, s, z, g, a["bits"], a["K"], a["N"], np.float64)
        elif node.op_type == "MatMulNBits":
            zp = arrays[node.input[3]] if len(node.input) > 3 and node.input[3] else None
            w = dequantize_matmulnbits(arrays[node.input[1]], arrays[node.input[2]], zp, a["bits"], a["K"],
                                       a["block_size"]).T
            weights[_strip(node.input[1], ".B")] = unpermute(node.input[0], w)
        elif node.op_type == "MatMul" and producer.get(node.input[1]) is not None \
                and producer[node.input[1]].op_type == "DequantizeLinear":
            dq = producer[node.input[1]]
            w_q = arrays[dq.input[0]].astype(np.int64)
            zp = arrays[dq.input[2]].astype(np.int64) if len(dq.input) > 2 and dq.input[2] else None
            assert _attrs(dq)["axis"] == 0
            w = dequantize_blocked(w_q, arrays[dq.input[1]], zp, _attrs(dq)["block_size"])
            weights[_strip(dq.input[0], ".w_q")] = unpermute(node.input[0], w)
    return weights


def assert_same_weights(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys() and a
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


# --------------------------------------------------------------------------- hand-built graphs

SYNTHETIC = {  # id: [(n, k, bits, group_size, sym, act_order, bias)]
    "4bit-g32-asym-bias-shortlast": [(24, 100, 4, 32, False, False, True)],
    "4bit-g32-actorder-shared-input": [(16, 64, 4, 32, False, True, False), (8, 64, 4, 32, True, True, True)],
    "8bit-perchannel-K100": [(12, 100, 8, -1, False, True, False)],
    "8bit-g48-actorder": [(10, 96, 8, 48, True, True, False)],
    "2bit-g16-sym": [(9, 48, 2, 16, True, False, True)],
    "2bit-g512-K1000": [(5, 1000, 2, 512, False, True, False)],
}


@pytest.mark.parametrize(
    "case,fmt",
    [(c, f) for c in SYNTHETIC for f in ("ort", "qdq") if f == "ort" or SYNTHETIC[c][0][2] != 2],  # qdq: 4/8 bits
)
def test_hand_built_layers_convert_exactly(case, fmt):
    rng = np.random.default_rng(0)
    layers = [random_layer(rng, f"layer{i}", *spec) for i, spec in enumerate(SYNTHETIC[case])]
    model = quant_linear_model(layers)
    converted = convert_format(model, fmt, accuracy_level=0)
    assert isinstance(converted, onnx.ModelProto)
    onnx.checker.check_model(converted)
    assert not [n for n in converted.graph.node if n.domain == DOMAIN]
    assert DOMAIN not in {o.domain for o in converted.opset_import}
    assert not [i for i in converted.graph.initializer if i.name.endswith((".g_idx", ".qweight", ".qzeros"))]
    assert_same_weights(dequantized_weights(converted), dequantized_weights(model))

    x = rng.standard_normal((3, layers[0]["K"])).astype(np.float32)
    got = run_stock(converted, {"x": x})
    for g, want in zip(got, reference_outputs(layers, [x] * len(layers)), strict=True):
        assert np.linalg.norm(g - want) <= 1e-5 * np.linalg.norm(want)


def test_act_order_layers_with_one_input_and_one_perm_share_a_gather():
    rng = np.random.default_rng(1)
    a = random_layer(rng, "a", 8, 64, 4, 16, act_order=True)
    b = dict(random_layer(rng, "b", 8, 64, 4, 16), g_idx=a["g_idx"])  # same perm (like q/k/v)
    c = random_layer(rng, "c", 8, 64, 4, 16, act_order=True)  # another perm
    model = to_matmulnbits(quant_linear_model([a, b, c]), 0)
    gathers = [n for n in model.graph.node if n.op_type == "Gather"]
    assert len(gathers) == 2
    mnb = {n.name: n for n in model.graph.node if n.op_type == "MatMulNBits"}
    assert mnb["a/MatMulNBits"].input[0] == mnb["b/MatMulNBits"].input[0] != mnb["c/MatMulNBits"].input[0]
    assert {n.input[0] for n in gathers} == {"x"}


@pytest.mark.parametrize(
    "k,group_size,act_order,block",
    [(576, 576, False, 64), (100, 100, False, 128), (4096, 4096, False, 256), (8, 8, False, 16),
     (576, 128, False, 128), (2048, 512, False, 256), (96, 48, True, 16), (64, 16, True, 16)],
)
def test_block_size_choice(k, group_size, act_order, block):
    g = np.sort(random_layer(np.random.default_rng(2), "l", 1, k, 4, group_size, act_order=act_order)["g_idx"])
    assert block_size_for(g, group_size, "l") == block


def test_group_size_without_a_block_is_refused_with_one_line():
    g = np.arange(96) // 24
    with pytest.raises(ExportError) as err:
        block_size_for(g, 24, "model.layers.0.mlp.down_proj")
    msg = str(err.value)
    assert "\n" not in msg and "group size 24" in msg and "down_proj" in msg and "--format gptq" in msg


@pytest.mark.parametrize("fmt,bits", [("ort", 3), ("qdq", 3), ("qdq", 2)])
def test_pass_refuses_bits_it_cannot_hold(fmt, bits):
    model = quant_linear_model([random_layer(np.random.default_rng(3), "layer", 4, 64, bits, 32)])
    with pytest.raises(ExportError) as err:
        convert_format(model, fmt)
    msg = str(err.value)
    assert "\n" not in msg and f"{bits}-bit" in msg and f"--format {fmt}" in msg and "use --format gptq" in msg


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"bits": 3, "format": "ort"}, "--format ort cannot hold 3-bit weights; use --format gptq"),
        ({"bits": 2, "format": "qdq"}, "--format qdq cannot hold 2-bit weights; use --format ort or --format gptq"),
        ({"group_size": 24, "format": "qdq"}, "--format qdq cannot hold group size 24 (needs a multiple of 16 or -1); "
                                              "use --format gptq"),
        ({"accuracy_level": 5}, "accuracy_level=5 is invalid"),
    ],
)
def test_config_refuses_settings_the_format_cannot_hold(kwargs, message):
    with pytest.raises(ConfigError) as err:
        gx.QuantConfig(**kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_auto_format_resolution():
    assert gx.QuantConfig().format is None and gx.QuantConfig().resolved_format() is Format.ORT
    assert gx.QuantConfig(bits=3).resolved_format() is Format.GPTQ
    assert gx.QuantConfig(group_size=24).resolved_format() is Format.GPTQ
    assert gx.QuantConfig(bits=8, group_size=-1).resolved_format() is Format.ORT
    assert gx.QuantConfig(format="qdq").to_dict()["format"] == "qdq"
    assert gx.QuantConfig().to_dict()["format"] is None


def test_cli_unrepresentable_format_is_one_error_line(tmp_path, capsys):
    rc = main([str(tmp_path / "no-model"), "--bits", "3", "--format", "ort", "-o", str(tmp_path / "m.onnx")])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert err == "gptq-export: error: --format ort cannot hold 3-bit weights; use --format gptq\n"
    assert list(tmp_path.iterdir()) == []


def test_convert_keeps_external_data_lazy_and_exact(tmp_path):
    rng = np.random.default_rng(4)
    layers = [random_layer(rng, "big", 32, 256, 4, 64, act_order=True, bias=True)]
    src = tmp_path / "src.onnx"
    onnx.save(quant_linear_model(layers), str(src), save_as_external_data=True, all_tensors_to_one_file=True,
              location="src.onnx.data", size_threshold=0)
    out = convert(src, tmp_path / "out" / "m.onnx", "ort", accuracy_level=0)
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.onnx", "m.onnx.data"]
    model = onnx.load(str(out))
    assert read_metadata(model)["format"] == "ort"
    x = rng.standard_normal((2, 256)).astype(np.float32)
    [got] = run_stock(model, {"x": x})
    [want] = reference_outputs(layers, [x])
    assert np.linalg.norm(got - want) <= 1e-5 * np.linalg.norm(want)
    with pytest.raises(ExportError, match="--format gptq"):
        convert(out, tmp_path / "again.onnx", "qdq")  # not a gptq file any more


# --------------------------------------------------------------------------- a real export


@pytest.fixture(scope="module")
def llama_exports(tmp_path_factory):
    """Tiny Llama, 4-bit g32 asym act-order: gptq and ort through export(), qdq through convert()."""
    root = tmp_path_factory.mktemp("formats")
    model = tiny_model("llama", 300)
    tokens = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    cfg = {"bits": 4, "group_size": 32, "act_order": True}
    paths = {}
    res = gx.export(model, gx.QuantConfig(**cfg, format="gptq"), root / "gptq.onnx", calib_tokens=tokens)
    paths["gptq"] = res.path
    res_ort = gx.export(model, gx.QuantConfig(**cfg, format="ort", accuracy_level=0), root / "ort.onnx",
                        calib_tokens=tokens)
    paths["ort"] = res_ort.path
    paths["qdq"] = convert(paths["gptq"], root / "qdq.onnx", "qdq")
    paths["ort-converted"] = convert(paths["gptq"], root / "ort-converted.onnx", "ort", accuracy_level=0)
    return {"paths": paths, "result": res, "result_ort": res_ort}


def test_real_export_weights_are_exactly_equal_across_formats(llama_exports):
    models = {k: onnx.load(str(p)) for k, p in llama_exports["paths"].items()}
    weights = {k: dequantized_weights(m) for k, m in models.items()}
    assert len(weights["gptq"]) == 14  # 2 layers x (q, k, v, o, gate, up, down)
    for fmt in ("ort", "qdq", "ort-converted"):
        assert_same_weights(weights[fmt], weights["gptq"])
    # export(format="ort") writes the very tensors convert() derives from the gptq file.
    inits = {k: {i.name: i.raw_data for i in models[k].graph.initializer} for k in ("ort", "ort-converted")}
    assert inits["ort"] == inits["ort-converted"]


def test_real_export_graph_metadata_and_names(llama_exports):
    model = onnx.load(str(llama_exports["paths"]["ort"]))
    assert {o.domain for o in model.opset_import} == {"", "com.microsoft"}
    nodes = list(model.graph.node)
    mnb = {n.name.rsplit("/", 1)[0].removeprefix("model."): n for n in nodes if n.op_type == "MatMulNBits"}
    assert len(mnb) == 14
    act_gathers = [n for n in nodes if n.op_type == "Gather" and n.name.endswith("/act_order_gather")]
    for i in range(2):
        qkv = {mnb[f"model.layers.{i}.self_attn.{p}_proj"].input[0] for p in "qkv"}
        gate_up = {mnb[f"model.layers.{i}.mlp.{p}_proj"].input[0] for p in ("gate", "up")}
        assert len(qkv) == 1 and len(gate_up) == 1  # q/k/v share one Gather, gate/up another
    assert len(act_gathers) == 8  # per layer: q/k/v, o, gate/up, down
    names = {i.name for i in model.graph.initializer}
    assert "model.model.layers.0.self_attn.q_proj.B" in names
    assert "model.model.layers.0.self_attn.q_proj.scales" in names
    assert "model.model.layers.0.self_attn.q_proj.zero_points" in names
    assert not [n for n in names if n.endswith((".g_idx", ".qweight", ".qzeros"))]
    meta = read_metadata(model)
    assert meta["format"] == "ort" and meta["config"]["format"] == "ort" and meta["config"]["accuracy_level"] == 0
    assert llama_exports["result_ort"].summary()["format"] == "ort"
    assert read_metadata(onnx.load(str(llama_exports["paths"]["qdq"])))["format"] == "qdq"
    assert read_metadata(onnx.load(str(llama_exports["paths"]["gptq"])))["format"] == "gptq"


def test_ir_model_is_rewritten_in_place(llama_exports):
    model = ir.load(llama_exports["paths"]["gptq"])
    assert to_qdq(model) is model
    assert not [n for n in model.graph if n.domain == DOMAIN]
