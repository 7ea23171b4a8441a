"""Fuzz gptq-inspect with corrupted variants of real exports: never a traceback, never a hang.

Each variant of the tiny Llama's gptq / ort / qdq files (test_inspect.exported_models) is one of:
truncated at a random offset, random bits flipped, a quantized node's attribute rewritten to a
wrong value or type or removed, initializers removed or reshaped, a wrong op domain or type,
garbage metadata, or broken external data. Every variant goes through `main(argv)` in-process
(with one of: plain, --json, --layer NAME, --html, --diff) under a per-case alarm, and must end in
exit 0 with a report on stdout, or exit 2 with exactly one "gptq-inspect: error:" line on stderr,
and never in the catch-all "cannot inspect" line (a crash the reader did not foresee).
A failure names the case and its seed: rerun one with `-k` and FUZZ_SEED=<seed>.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import signal
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from test_inspect import exported_models

from gptq_export.inspect import main as inspect_main

CASES = 240
BASE_SEED = int(os.environ.get("FUZZ_SEED", "20240607"))
TIMEOUT_S = 20
QUANT_OPS = {"QuantLinear", "MatMulNBits", "DequantizeLinear"}
LAYER = "model.layers.1.mlp.up_proj"


class _Timeout(Exception):
    pass


def _alarm(_sig, _frame):
    raise _Timeout


@pytest.fixture(scope="module")
def sources():
    m = exported_models()
    return {fmt: (m.paths[fmt].read_bytes(), onnx.load(str(m.paths[fmt]))) for fmt in ("gptq", "ort", "qdq")}


# --------------------------------------------------------------------------- mutations


def _truncate(rng, data, proto, tmp):
    return data[: rng.randrange(0, len(data))]


def _flip_bits(rng, data, proto, tmp):
    b = bytearray(data)
    for _ in range(rng.choice([1, 2, 8, 64])):
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def _flip_header(rng, data, proto, tmp):
    """Bit flips in the first 4 KB (graph structure, names) rather than in weight bytes."""
    b = bytearray(data)
    for _ in range(rng.choice([1, 3, 10])):
        i = rng.randrange(min(len(b), 4096))
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def _quant_nodes(proto):
    return [n for n in proto.graph.node if n.op_type in QUANT_OPS]


def _attribute(rng, data, proto, tmp):
    p = _copy(proto)
    node = rng.choice(_quant_nodes(p))
    names = [a.name for a in node.attribute] or ["K"]
    name = rng.choice(names + ["bits", "K", "N", "block_size", "group_size"])
    kind = rng.randrange(7)
    keep = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(keep)
    if kind == 0:
        pass  # removed
    elif kind == 1:
        node.attribute.append(helper.make_attribute(name, rng.choice([0, -1, -7, 3, 5, 7, 9, 33, 1 << 40, 1 << 62])))
    elif kind == 2:
        node.attribute.append(helper.make_attribute(name, 4.5))
    elif kind == 3:
        node.attribute.append(helper.make_attribute(name, "four"))
    elif kind == 4:
        node.attribute.append(helper.make_attribute(name, [4, 4]))
    elif kind == 5:
        node.attribute.append(helper.make_attribute(name, rng.randrange(1, 4096)))
    else:
        node.attribute.append(helper.make_attribute(name, numpy_helper.from_array(np.array([4], np.int64))))
    return p.SerializeToString()


def _remove_initializers(rng, data, proto, tmp):
    p = _copy(proto)
    inits = list(p.graph.initializer)
    drop = set(rng.sample(range(len(inits)), rng.choice([1, 3, 10])))
    del p.graph.initializer[:]
    p.graph.initializer.extend(t for i, t in enumerate(inits) if i not in drop)
    return p.SerializeToString()


def _reshape_initializer(rng, data, proto, tmp):
    p = _copy(proto)
    used = {i for n in _quant_nodes(p) for i in n.input}
    t = rng.choice([t for t in p.graph.initializer if t.name in used])
    dims = list(t.dims)
    choice = rng.randrange(4)
    if choice == 0 and dims:
        dims[rng.randrange(len(dims))] += rng.choice([-1, 1, 31, -(dims[0])])
    elif choice == 1:
        dims = dims + [1]
    elif choice == 2:
        dims = [rng.choice([0, 1 << 31, -3])]
    else:
        t.data_type = rng.choice([1, 2, 3, 6, 7, 8, 10, 21, 22, 99])
    del t.dims[:]
    t.dims.extend(dims)
    return p.SerializeToString()


def _wrong_domain(rng, data, proto, tmp):
    p = _copy(proto)
    for node in rng.sample(_quant_nodes(p), 3):
        if rng.random() < 0.5:
            node.domain = rng.choice(["", "gptq_export", "com.microsoft", "x.y"])
        else:
            node.op_type = rng.choice(["MatMul", "QuantLinear", "MatMulNBits", "DequantizeLinear", "Gather"])
        if rng.random() < 0.3:
            del node.input[rng.randrange(len(node.input)):]
    return p.SerializeToString()


def _garbage_metadata(rng, data, proto, tmp):
    p = _copy(proto)
    value = rng.choice(['{"name": 1}', "[1, 2, 3]", "not json", '[{"name": "x", "K": "a", "loss": NaN}]',
                        "[" * 5000, '{"bits": 4}', '[{"name": null}]', '[{"name": "model.layers.0.mlp.up_proj", '
                        '"K": 1e400, "loss": -Infinity, "rtn_loss": "x"}]', "\udcff".encode("utf-8", "surrogatepass")
                        .decode("utf-8", "replace")])
    key = rng.choice(["gptq_export.layers", "gptq_export.skipped", "gptq_export.config", "gptq_export.format"])
    for prop in p.metadata_props:
        if prop.key == key:
            prop.value = value
    return p.SerializeToString()


def _external(rng, data, proto, tmp):
    p = _copy(proto)
    path = tmp / "ext.onnx"
    onnx.save_model(p, str(path), save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    q = onnx.load(str(path), load_external_data=False)
    used = {i for n in _quant_nodes(q) for i in n.input}
    t = rng.choice([t for t in q.graph.initializer if t.name in used and t.external_data])
    entry = {e.key: e for e in t.external_data}
    kind = rng.randrange(5)
    if kind == 0:
        entry["location"].value = rng.choice(["/etc/passwd", "../x.data", "missing.data", ""])
    elif kind == 1:
        entry["offset"].value = rng.choice(["-5", "abc", str(1 << 40)])
    elif kind == 2 and "length" in entry:
        entry["length"].value = rng.choice(["0", "7", str(1 << 40), "-1"])
    elif kind == 3:
        os.truncate(tmp / "ext.onnx.data", rng.randrange(0, (tmp / "ext.onnx.data").stat().st_size))
    else:
        (tmp / "ext.onnx.data").unlink()
    return q.SerializeToString()


def _copy(proto):
    p = onnx.ModelProto()
    p.CopyFrom(proto)
    return p


MUTATIONS = [_truncate, _flip_bits, _flip_header, _attribute, _attribute, _remove_initializers,
             _reshape_initializer, _wrong_domain, _garbage_metadata, _external]


# --------------------------------------------------------------------------- the test


def _run(argv):
    out, err = io.StringIO(), io.StringIO()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(TIMEOUT_S)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = inspect_main(argv)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return rc, out.getvalue(), err.getvalue()


def _problem(rc: int, out: str, err: str) -> str | None:
    """What is wrong with one run's outcome (None: a report, or exactly one error line)."""
    if "Traceback" in out + err:
        return f"traceback:\n{err[-2000:]}"
    if rc == 0:
        return None if out.strip() and err == "" else f"exit 0 with stderr {err[:300]!r}"
    lines = err.splitlines()
    if rc != 2 or len(lines) != 1 or not lines[0].startswith("gptq-inspect: error:") or out:
        return f"exit {rc}, stderr {err[:500]!r}"
    if "cannot inspect" in lines[0]:
        return f"the reader did not foresee this: {lines[0]}"
    return None


def test_corrupted_variants_end_in_a_report_or_one_line(sources, tmp_path):
    outcomes = {0: 0, 2: 0}
    failures: list[str] = []
    m = exported_models()
    for case in range(CASES):
        seed = BASE_SEED + case
        rng = random.Random(seed)
        fmt = rng.choice(sorted(sources))
        mutate = MUTATIONS[case % len(MUTATIONS)]
        folder = tmp_path / f"case{case}"
        folder.mkdir()
        data, proto = sources[fmt]
        variant = mutate(rng, data, proto, folder)
        path = folder / ("ext.onnx" if mutate is _external else "m.onnx")
        path.write_bytes(variant)
        extra = rng.choice([[], ["--json"], ["--layer", LAYER], ["--html", str(folder / "r.html")],
                            ["--diff", str(m.paths["gptq"])]])
        what = f"case {case} seed {seed}: {mutate.__name__} of the {fmt} file, options {extra}"
        try:
            rc, out, err = _run([str(path), *extra])
        except _Timeout:
            failures.append(f"{what}: no answer within {TIMEOUT_S} s")
            continue
        problem = _problem(rc, out, err)
        if problem:
            failures.append(f"{what}: {problem}")
        else:
            outcomes[rc] += 1
    assert not failures, f"{len(failures)} of {CASES} cases failed:\n" + "\n".join(failures[:15])
    # Both outcomes occur: the mutations are neither all harmless nor all fatal.
    assert outcomes[0] > 20 and outcomes[2] > 20, outcomes


@pytest.mark.parametrize("cut", [0.5, 0.97])
def test_real_process_on_a_corrupted_file(sources, tmp_path, cut):
    """Two cases as a real process: exit 2, one line on stderr, nothing on stdout."""
    data, _ = sources["gptq"]
    b = bytearray(data[: int(len(data) * cut)])
    path = tmp_path / "bad.onnx"
    path.write_bytes(bytes(b))
    code = "import sys; from gptq_export.cli import inspect_main; sys.exit(inspect_main())"
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("gptq-inspect: error:"), proc.stderr
