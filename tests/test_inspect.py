"""gptq-inspect on real exports of a tiny Llama in every format (gptq, ort, qdq) and its float export.

Checked: the table has one row per quantized layer (against the metadata and against the graph's
own nodes), sizes add up to the bytes on disk, the JSON round-trips, layer decoding matches the
packed reference, `--diff` of one export in two formats finds identical weights, `--compare` gives
perplexities and per-layer SNRs that agree with a direct onnxruntime run, a >2 GB external-data
file is read without loading its weights, and the HTML report is self-contained.

The exports are made once per test session (`exported_models`), shared with test_inspect_fuzz.py:
one GPTQ export (format gptq), converted to ort and qdq with `gptq_export.api.convert` (the same
ONNX -> ONNX pass `export(format=...)` runs; test_onnx_formats.py checks the two agree), and the
float export; two traces instead of four keep this module's set-up near 20 s on 2 cores.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from conftest import build_tiny_tokenizer, save_tiny_model
from onnx import numpy_helper
from test_api import tiny_model

import gptq_export as gx
from gptq_export.api import convert
from gptq_export.inspect import SCHEMA_VERSION, load_onnx, load_report
from gptq_export.inspect import main as inspect_main
from gptq_export.inspect.layer import decode
from gptq_export.inspect.report import analyse

FORMATS = ("gptq", "ort", "qdq")
CONFIG = dict(bits=4, group_size=32, act_order=True)
CALIB = gx.CalibConfig(nsamples=2, seqlen=16, seed=1)
NODE_OF = {"gptq": ("gptq_export", "QuantLinear"), "ort": ("com.microsoft", "MatMulNBits"),
           "qdq": ("", "DequantizeLinear")}
_CACHE: dict[str, SimpleNamespace] = {}


def exported_models() -> SimpleNamespace:
    """A tiny Llama folder (with tokenizer) holding its export in each format and its float export."""
    if "models" not in _CACHE:
        root = Path(tempfile.mkdtemp(prefix="gptq-inspect-tests-"))
        atexit.register(shutil.rmtree, root, True)
        tok = build_tiny_tokenizer()
        model = tiny_model("llama", len(tok))
        folder = save_tiny_model(model, tok, root / "llama")
        paths = {"gptq": folder / "q-gptq.onnx"}
        result = gx.export(folder, gx.QuantConfig(**CONFIG, format="gptq"), paths["gptq"], CALIB)
        for fmt in ("ort", "qdq"):  # the same weights in the stock formats, as `export(format=...)` writes them
            paths[fmt] = convert(paths["gptq"], folder / f"q-{fmt}.onnx", fmt)
        paths["fp"] = gx.export_float(folder, folder / "fp.onnx")
        quantized = sorted(r.name for r in result.reports)
        _CACHE["models"] = SimpleNamespace(root=root, folder=folder, paths=paths, quantized=quantized,
                                           vocab=len(tok))
    return _CACHE["models"]


@pytest.fixture(scope="module")
def models() -> SimpleNamespace:
    return exported_models()


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = inspect_main(argv)
    return rc, out.getvalue(), err.getvalue()


def assert_one_line_error(rc: int, out: str, err: str, *phrases: str) -> None:
    assert rc == 2, (out, err)
    assert "Traceback" not in out + err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gptq-inspect: error:"), err
    for p in phrases:
        assert p in lines[0], lines[0]


# --------------------------------------------------------------------------- table and sizes


@pytest.mark.parametrize("fmt", FORMATS)
def test_rows_are_the_quantized_layers(models, fmt):
    rep = load_report(models.paths[fmt])
    proto = onnx.load(str(models.paths[fmt]), load_external_data=False)
    domain, op = NODE_OF[fmt]
    graph_nodes = [n for n in proto.graph.node if n.domain == domain and n.op_type == op]
    meta_layers = json.loads(next(p.value for p in proto.metadata_props if p.key == "gptq_export.layers"))
    assert rep["format"] == fmt and rep["schema_version"] == SCHEMA_VERSION
    assert sorted(r["name"] for r in rep["layers"]) == models.quantized == sorted(d["name"] for d in meta_layers)
    assert len(rep["layers"]) == len(graph_nodes) == len(rep["quantized_nodes"])
    by_name = {d["name"]: d for d in meta_layers}
    for r in rep["layers"]:
        assert (r["K"], r["N"]) == (by_name[r["name"]]["K"], by_name[r["name"]]["N"])
        assert r["loss"] == by_name[r["name"]]["loss"] and r["rtn_loss"] == by_name[r["name"]]["rtn_loss"]
        assert (r["bits"], r["group_size"], r["act_order"], r["sym"]) == (4, 32, True, False)
        assert r["bytes"] > 0 and r["in_metadata"]
    assert rep["float_linears"] == [{"name": "lm_head", "reason": "matches --skip pattern 'lm_head'"}]
    assert rep["warnings"] == []
    assert rep["inputs"] == [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"]}]
    assert rep["outputs"][0]["name"] == "logits"
    assert rep["op_types"][f"{domain + '.' if domain else ''}{op}"] == len(graph_nodes)


@pytest.mark.parametrize("fmt", [*FORMATS, "fp"])
def test_sizes_add_up_to_the_file(models, fmt):
    path = models.paths[fmt]
    rep = load_report(path)
    s = rep["sizes"]
    assert s["file_bytes"] == s["total_bytes"] == path.stat().st_size
    assert s["quantized_bytes"] + s["float_weight_bytes"] + s["other_bytes"] == s["total_bytes"]
    assert s["quantized_bytes"] == sum(r["bytes"] for r in rep["layers"])
    # Independently: every initializer's data, counted once, is the quantized + float weights...
    proto = onnx.load(str(path))
    data = sum(numpy_helper.to_array(t).nbytes if t.data_type not in (21, 22) else len(t.raw_data)
               for t in proto.graph.initializer)
    assert s["quantized_bytes"] + s["float_weight_bytes"] == data
    # ... and the rest is the graph: the model serialized without tensor data, within framing slack.
    for t in proto.graph.initializer:
        t.ClearField("raw_data")
    stripped = len(proto.SerializeToString())
    assert 0 <= s["other_bytes"] - stripped <= 8 * len(proto.graph.initializer)  # tag + length of each raw_data
    if fmt == "fp":
        assert rep["layers"] == [] and s["quantized_bytes"] == 0 and rep["format"] == "float"
    else:
        assert s["compression_vs_fp16"] > 1 or s["other_bytes"] > s["quantized_bytes"]  # tiny graphs: mostly graph


@pytest.mark.parametrize("fmt", FORMATS)
def test_json_round_trips_and_cli_json_parses(models, fmt):
    rep = load_report(models.paths[fmt])
    assert json.loads(json.dumps(rep)) == rep
    rc, out, err = run_cli([str(models.paths[fmt]), "--json"])
    assert rc == 0 and err == ""
    assert json.loads(out) == rep


def test_text_report_lists_layers_sizes_and_float_linears(models):
    rc, out, err = run_cli([str(models.paths["ort"])])
    assert rc == 0 and err == ""
    for name in models.quantized:
        assert name in out
    assert "left in float: lm_head: matches --skip pattern" in out
    assert "com.microsoft.MatMulNBits x14" in out and "input_ids int64[batch, seq]" in out
    assert f"{len(models.quantized)} quantized layers; total loss" in out


def test_genai_folder_reads_its_model_onnx(models, tmp_path):
    folder = tmp_path / "genai"
    folder.mkdir()
    shutil.copy(models.paths["ort"], folder / "model.onnx")
    (folder / "genai_config.json").write_text("{}")
    rep = load_report(folder)
    assert rep["genai_config"].endswith("genai_config.json") and len(rep["layers"]) == len(models.quantized)
    assert_one_line_error(*run_cli([str(tmp_path)]), "no .onnx file")


# --------------------------------------------------------------------------- decoding, --layer, --diff


def test_decoded_gptq_layer_equals_the_packed_reference(models):
    from gptq_export.kernels.reference import dequantize

    f = load_onnx(models.paths["gptq"])
    _, nodes, reader = analyse(f)
    init = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(models.paths["gptq"])).graph.initializer}
    for q in nodes:
        t = q.tensors
        ref = dequantize(init[t["qweight"]], init[t["scales"]], init[t["qzeros"]], init[t["g_idx"]], q.bits, q.K, q.N)
        np.testing.assert_array_equal(decode(q, reader).dense(), ref)


@pytest.mark.parametrize("fmt", ["ort", "qdq"])
def test_diff_of_one_export_in_two_formats_is_identical(models, fmt):
    rc, out, err = run_cli([str(models.paths["gptq"]), "--diff", str(models.paths[fmt]), "--json"])
    assert rc == 0 and err == ""
    d = json.loads(out)["diff"]
    assert d["identical_weights"] and d["only_in_a"] == d["only_in_b"] == []
    assert len(d["layers"]) == len(models.quantized)
    for e in d["layers"]:
        assert e["weight"]["rel_l2"] == 0 and e["weight"]["same_code_fraction"] == 1.0
        assert e["settings"]["format"] == ["gptq", fmt]
    assert d["config"]["format"] == ["gptq", fmt]


def test_diff_finds_the_one_changed_layer(models, tmp_path):
    proto = onnx.load(str(models.paths["ort"]))
    target = "model.layers.1.mlp.up_proj"
    t = next(t for t in proto.graph.initializer if t.name.endswith(target + ".scales"))
    t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 2, t.name))
    changed = tmp_path / "changed.onnx"
    onnx.save(proto, str(changed))
    rc, out, err = run_cli([str(changed), "--diff", str(models.paths["qdq"])])
    assert rc == 0 and err == ""
    assert "1 of 14 common layers differ" in out
    d = json.loads(run_cli([str(changed), "--diff", str(models.paths["qdq"]), "--json"])[1])["diff"]
    for e in d["layers"]:
        # W' = 2 W  ->  ||W' - W|| / ||W|| = 1 exactly; the codes themselves are unchanged.
        assert e["weight"]["rel_l2"] == (pytest.approx(1.0) if e["name"] == target else 0.0)
        assert e["weight"]["same_code_fraction"] == 1.0


def test_layer_details_match_numpy_on_the_decoded_weight(models):
    name = "model.layers.0.mlp.down_proj"
    rc, out, err = run_cli([str(models.paths["qdq"]), "--layer", name, "--json"])
    assert rc == 0 and err == ""
    det = json.loads(out)["layer_details"]
    f = load_onnx(models.paths["qdq"])
    _, nodes, reader = analyse(f)
    d = decode(next(q for q in nodes if q.name == name), reader)
    w = d.dense().astype(np.float64)
    assert det["layer"]["name"] == name and (d.K, d.N) == (96, 64)
    assert sum(det["codes"]["histogram"]) == d.K * d.N and len(det["codes"]["histogram"]) == 16
    assert det["codes"]["histogram"] == np.bincount(d.codes.reshape(-1), minlength=16).tolist()
    for key, value in (("min", w.min()), ("max", w.max()), ("mean", w.mean()), ("std", w.std())):
        assert det["weight"][key] == pytest.approx(value, rel=1e-6, abs=1e-9)
    assert det["groups"] == 3 and det["scales"]["count"] == 3 * 64
    assert {t["role"] for t in det["tensors"]} == {"w_q", "scale", "zero_point", "perm"}
    rc, out, err = run_cli([str(models.paths["qdq"]), "--layer", "down_proj"])  # ambiguous: two layers
    assert_one_line_error(rc, out, err, "matches 2 layers")
    assert_one_line_error(*run_cli([str(models.paths["qdq"]), "--layer", "nope"]), "no quantized layer named")


# --------------------------------------------------------------------------- >2 GB, external data


def test_external_data_over_2gb_is_read_without_loading_weights(models, tmp_path):
    """A sparse 2.4 GB .data file: the report and --layer read only what they need."""
    proto = onnx.load(str(models.paths["gptq"]))
    path = tmp_path / "big.onnx"
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="big.onnx.data", size_threshold=0)
    proto = onnx.load(str(path), load_external_data=False)
    data = tmp_path / "big.onnx.data"
    offset = (data.stat().st_size + 4095) // 4096 * 4096
    huge = onnx.TensorProto(name="unused.huge_weight", data_type=onnx.TensorProto.FLOAT, dims=[50_000, 12_000],
                            data_location=onnx.TensorProto.EXTERNAL)
    for k, v in (("location", "big.onnx.data"), ("offset", str(offset)), ("length", str(50_000 * 12_000 * 4))):
        huge.external_data.add(key=k, value=v)
    proto.graph.initializer.append(huge)
    onnx.save_model(proto, str(path))
    os.truncate(data, offset + 50_000 * 12_000 * 4)  # sparse: no disk used
    tracemalloc.start()
    t0 = time.perf_counter()
    rep = load_report(path)
    rc, out, err = run_cli([str(path), "--layer", "model.layers.1.self_attn.v_proj", "--json"])
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    s = rep["sizes"]
    assert s["total_bytes"] == path.stat().st_size + data.stat().st_size > 2**31
    assert s["external_data"] == [{"file": "big.onnx.data", "bytes": data.stat().st_size}]
    assert s["quantized_bytes"] + s["float_weight_bytes"] + s["other_bytes"] == s["total_bytes"]
    assert s["float_weight_bytes"] > 2.4e9 and len(rep["layers"]) == len(models.quantized)
    assert rc == 0 and err == ""
    inline = json.loads(run_cli([str(models.paths["gptq"]), "--layer", "model.layers.1.self_attn.v_proj",
                                 "--json"])[1])["layer_details"]
    ext = json.loads(out)["layer_details"]
    assert ext["weight"] == inline["weight"] and ext["codes"] == inline["codes"]
    assert all(t["external"] for t in ext["tensors"])
    assert peak < 50e6 and seconds < 30


def test_truncated_external_data_is_a_one_line_error(models, tmp_path):
    proto = onnx.load(str(models.paths["ort"]))
    path = tmp_path / "m.onnx"
    onnx.save_model(proto, str(path), save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    data = tmp_path / "m.onnx.data"
    os.truncate(data, data.stat().st_size // 2)
    rc, out, err = run_cli([str(path), "--layer", "model.layers.1.mlp.down_proj"])
    assert_one_line_error(rc, out, err, "points past the end of m.onnx.data", "truncated")
    rep = load_report(path)  # the summary reads nothing from it, but sees the missing bytes
    assert any("truncated" in w for w in rep["warnings"])


# --------------------------------------------------------------------------- --compare


def test_compare_perplexity_and_layer_snr(models, tmp_path):
    text = Path(gx.__file__).parent / "data" / "wiki.utf8"
    rc, out, err = run_cli(["--compare", str(models.paths["fp"]), str(models.paths["ort"]), "--text", str(text),
                            "--max-tokens", "96", "--seqlen", "48", "--json"])
    assert rc == 0 and err == "", err
    c = json.loads(out)
    assert c["tokens"] == 96 and c["windows"] == 2 and c["unmatched"] == []
    assert c["tokenizer"] == str(models.folder)  # found next to the file
    assert [e["name"] for e in c["layers"]] == [r["name"] for r in load_report(models.paths["ort"])["layers"]]

    # Perplexity of the float model, recomputed here with plain onnxruntime on the same tokens.
    import onnxruntime as ort
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(str(models.folder))(text.read_text()[:5000], add_special_tokens=False,
                                                           verbose=False)["input_ids"][:96]
    sess = ort.InferenceSession(str(models.paths["fp"]), providers=["CPUExecutionProvider"])
    nll, n = 0.0, 0
    for w in (ids[:48], ids[48:]):
        logits = sess.run(None, {"input_ids": np.array([w], dtype=np.int64)})[0][0, :-1].astype(np.float64)
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - \
            logits.max(-1, keepdims=True)
        nll -= logp[np.arange(len(w) - 1), w[1:]].sum()
        n += len(w) - 1
    assert c["perplexity"]["fp"] == pytest.approx(math.exp(nll / n), rel=1e-4)
    assert c["perplexity"]["q"] > 1 and c["output_snr_db"] > 5

    # The first layers read the embedding, identical in both models: input exact, and end-to-end
    # output SNR = isolated SNR (up to MatMulNBits' int8 activations at accuracy level 4).
    first = c["layers"][0]
    assert first["input_snr_db"] is None
    assert abs(first["output_snr_db"] - first["isolated_snr_db"]) < 3
    iso = [e["isolated_snr_db"] for e in c["layers"]]
    assert all(5 < v < 60 for v in iso)
    assert c["worst_layer"] == c["layers"][int(np.argmin(iso))]["name"]


def test_compare_gptq_format_through_the_custom_op(models, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text((Path(gx.__file__).parent / "data" / "wiki.utf8").read_text()[:3000])
    html = tmp_path / "cmp.html"
    rc, out, err = run_cli(["--compare", str(models.paths["fp"]), str(models.paths["gptq"]), "--text", str(text),
                            "--max-tokens", "40", "--html", str(html)])
    assert rc == 0 and err == "", err
    assert "perplexity: float" in out and "lowest isolated SNR (hurts most)" in out
    page = html.read_text()
    assert 'id="snr-chart"' in page and 'id="loss-chart"' in page


def test_compare_bad_inputs(models, tmp_path):
    fp, q = str(models.paths["fp"]), str(models.paths["ort"])
    assert_one_line_error(*run_cli(["--compare", fp, q]), "needs --text")
    assert_one_line_error(*run_cli(["--compare", fp, q, "--text", str(tmp_path / "none.txt")]), "does not exist")
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(models.paths["ort"], lone / "q.onnx")
    shutil.copy(models.paths["fp"], lone / "fp.onnx")
    (tmp_path / "t.txt").write_text("hello world, hello again")
    assert_one_line_error(*run_cli(["--compare", str(lone / "fp.onnx"), str(lone / "q.onnx"), "--text",
                                    str(tmp_path / "t.txt")]), "no tokenizer found", "--tokenizer DIR")
    assert_one_line_error(*run_cli(["--compare", q, fp, "--text", str(tmp_path / "t.txt")]), "no quantized layer")


# --------------------------------------------------------------------------- HTML


def test_html_report_is_self_contained(models, tmp_path):
    html = tmp_path / "r.html"
    rc, out, err = run_cli([str(models.paths["qdq"]), "--html", str(html)])
    assert rc == 0 and err == ""
    page = html.read_text()
    assert page.count('class="gptq"') == page.count('class="rtn"') == len(models.quantized)
    assert page.count('class="qlayer"') == len(models.quantized)
    assert page.count('class="block"') >= 2  # model.layers.0 and model.layers.1
    for bad in ("<script", "<link", "src=", "@import", "url("):
        assert bad not in page
    assert page.replace("http://www.w3.org/2000/svg", "").count("http") == 0


def test_screenshot_tool_sees_the_chart(models, tmp_path):
    from gptq_export.inspect.html import find_chromium

    if find_chromium() is None:
        pytest.skip("no chromium binary found (chromium, chromium-browser, google-chrome or $CHROMIUM): the "
                    "headless screenshot check runs only where one is installed")
    tool = Path(__file__).parent.parent / "tools" / "inspect_screenshot.py"
    proc = subprocess.run([sys.executable, str(tool), str(models.paths["ort"]), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert result["passed"] and result["gptq"]["bands"] == result["rtn"]["bands"] == len(models.quantized)
    assert (tmp_path / "report.png").stat().st_size > 10_000
    rc, out, err = run_cli([str(models.paths["gptq"]), "--png", str(tmp_path / "direct.png")])  # --png alone
    assert rc == 0 and err == "" and (tmp_path / "direct.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("case,phrase", [
    ("missing", "does not exist"), ("empty", "is empty"), ("text", "is not a readable ONNX model"),
    ("random", "is not a readable ONNX model"), ("folder", "no .onnx file"), ("no-args", "give a MODEL"),
    ("bad-option", "unrecognized arguments"),
])
def test_bad_input_is_one_line(case, phrase, tmp_path):
    path = tmp_path / "m.onnx"
    argv = [str(path)]
    if case == "empty":
        path.write_bytes(b"")
    elif case == "text":
        path.write_text("this is not a model\n")
    elif case == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    elif case == "folder":
        argv = [str(tmp_path)]
    elif case == "no-args":
        argv = []
    elif case == "bad-option":
        path.write_text("x")
        argv = [str(path), "--frobnicate"]
    assert_one_line_error(*run_cli(argv), phrase)


def test_real_process_truncated_file(models, tmp_path):
    """What a terminal shows: one line, exit 2, through the installed entry point's function."""
    data = models.paths["ort"].read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 3])
    code = "import sys; from gptq_export.cli import inspect_main; sys.exit(inspect_main())"
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("gptq-inspect: error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    ok = subprocess.run([sys.executable, "-m", "gptq_export.inspect", str(models.paths["ort"]), "--json"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and ok.stderr == "" and json.loads(ok.stdout)["format"] == "ort"


def test_compare_feeds_kv_cache_inputs_and_matches_layers_of_another_trace():
    """KV-cache decoders (past_key_values.{i}.key ...) get empty caches; layers pair up in graph order
    when the two files come from different traces (value names differ)."""
    from gptq_export.inspect.compare import _feeds, match_layers
    from gptq_export.inspect.reader import FloatLinear, QuantNode

    inputs = [SimpleNamespace(name="input_ids", type="tensor(int64)", shape=["batch_size", "sequence_length"]),
              SimpleNamespace(name="attention_mask", type="tensor(int64)", shape=["batch_size", "total_seq"]),
              SimpleNamespace(name="position_ids", type="tensor(int64)", shape=["batch_size", "sequence_length"]),
              SimpleNamespace(name="past_key_values.0.key", type="tensor(float)",
                              shape=["batch_size", 2, "past_sequence_length", 16])]
    feed = _feeds(SimpleNamespace(get_inputs=lambda: inputs), np.array([[5, 6, 7]]))
    assert feed["past_key_values.0.key"].shape == (1, 2, 0, 16)
    assert feed["attention_mask"].tolist() == [[1, 1, 1]] and feed["position_ids"].tolist() == [[0, 1, 2]]

    def q(name, x, k, n):
        return QuantNode(name, name, "op", "ort", k, n, 4, 32, 32, False, False, x, name + ".y")

    qs = [q("a", "x1", 64, 64), q("b", "x1", 64, 32), q("c", "x2", 64, 96)]
    fls = [FloatLinear("f_a", 64, 64, "t1", "ya", "w"), FloatLinear("f_b", 64, 32, "t1", "yb", "w"),
           FloatLinear("f_c", 64, 96, "t9", "yc", "w"), FloatLinear("head", 64, 400, "t5", "logits", "w")]
    assert [p.fp.node for p in match_layers(qs, fls)] == ["f_a", "f_b", "f_c"]
    same_trace = [FloatLinear("g_b", 64, 32, "x1", "yb", "w"), FloatLinear("g_a", 64, 64, "x1", "ya", "w"),
                  FloatLinear("g_c", 64, 96, "x2", "yc", "w")]
    assert [p.fp.node for p in match_layers(qs, same_trace)] == ["g_a", "g_b", "g_c"]
