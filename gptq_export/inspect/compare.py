"""`--compare fp.onnx q.onnx --text FILE`: perplexity of both files and per-layer activation SNR.

Both models run in onnxruntime on the same token windows (the `gptq` format through
`gptq_export.runtime`'s custom op). In-memory copies of the two graphs get extra outputs: every
quantized layer's input and output in the quantized file, and the matching float Linear's in the
float file. Layers are matched on their input value's name and N (both files come from the same
trace, so intermediate values keep their torch.fx names), else in graph order on K x N.

Per layer (SNR = 10 log10(sum y_fp^2 / sum (y_fp - y)^2), in dB; null = no difference):

- ``input_snr_db`` / ``output_snr_db``: end to end, the quantized model's activations against the
  float model's, at the layer's input and output (errors of earlier layers included);
- ``isolated_snr_db``: the layer alone, ``x_fp @ W_q + b`` against ``y_fp`` on the float model's
  own input (weights decoded from the file, exact fp32 math): the layer that hurts most has the
  lowest one.

Tokens: ``--tokenizer DIR`` (a Hugging Face tokenizer folder), else the first folder among the
quantized file's and the float file's that holds ``tokenizer.json`` or ``tokenizer_config.json``.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from .layer import decode
from .reader import (
    DOMAIN,
    FloatLinear,
    InspectError,
    OnnxFile,
    QuantNode,
    TensorReader,
    clean,
    find_float_linears,
    load_onnx,
)
from .report import SCHEMA_VERSION, analyse

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
EXTERNAL_FOLDER_KEY = "session.model_external_initializers_file_folder_path"


def find_tokenizer(explicit: str | os.PathLike | None, *model_files: Path) -> Path:
    if explicit is not None:
        p = Path(explicit)
        if p.is_file():
            p = p.parent
        if not p.is_dir() or not any((p / n).is_file() for n in TOKENIZER_FILES):
            raise InspectError(f"--tokenizer {clean(explicit)} is not a folder with tokenizer.json or "
                               "tokenizer_config.json")
        return p
    for f in model_files:
        if any((f.parent / n).is_file() for n in TOKENIZER_FILES):
            return f.parent
    raise InspectError("no tokenizer found next to the models (tokenizer.json); pass --tokenizer DIR "
                       "(a Hugging Face model or tokenizer folder)")


def load_tokens(text_file: str | os.PathLike, tokenizer_dir: Path, max_tokens: int) -> np.ndarray:
    """Token ids of the start of `text_file` (at most max_tokens)."""
    p = Path(text_file)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InspectError(f"--text {clean(p)} does not exist; pass a UTF-8 text file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InspectError(f"--text {clean(p)} cannot be read as UTF-8 text ({type(exc).__name__})") from None
    text = text[: max(max_tokens, 1) * 16]  # plenty of characters for max_tokens tokens
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        ids = tok(text, add_special_tokens=False, verbose=False)["input_ids"]
    except Exception as exc:  # transformers raises many types for a broken folder
        raise InspectError(f"cannot load the tokenizer in {clean(tokenizer_dir)} ({type(exc).__name__}); pass "
                           "--tokenizer DIR") from exc
    ids = np.asarray(ids[:max_tokens], dtype=np.int64)
    if ids.size < 2:
        raise InspectError(f"--text {clean(p)} gives {ids.size} token(s); at least 2 are needed")
    return ids


# --------------------------------------------------------------------------- sessions


def _session(f: OnnxFile, extra_outputs: list[str]):
    """An onnxruntime session of `f` with `extra_outputs` added as graph outputs."""
    import onnxruntime as ort

    model = onnx.ModelProto()
    model.CopyFrom(f.model)
    have = {o.name for o in model.graph.output}
    types = {v.name: v for v in list(model.graph.value_info) + list(model.graph.input)}
    for name in extra_outputs:
        if name in have:
            continue
        have.add(name)
        if name in types:
            vi = onnx.ValueInfoProto()
            vi.CopyFrom(types[name])
            model.graph.output.append(vi)
        else:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    if any(o.domain == DOMAIN for o in model.opset_import):
        from ..runtime import session_options

        opts = session_options()
    else:
        opts = ort.SessionOptions()
    if f.external_files:
        opts.add_session_config_entry(EXTERNAL_FOLDER_KEY, str(f.path.parent.resolve()))
    try:
        blob = model.SerializeToString()
        return ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InspectError(f"onnxruntime cannot run {clean(f.path)}: {clean(first, 240)}") from exc


_NP = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32,
       "tensor(float16)": np.float16, "tensor(bool)": np.bool_}


def _feeds(sess, ids: np.ndarray) -> dict[str, np.ndarray]:
    """Inputs for one window [1, seq]: ids, an all-ones mask, positions, and empty KV-cache tensors."""
    seq = ids.shape[1]
    feed = {}
    for i in sess.get_inputs():
        dt = _NP.get(i.type)
        if dt is None:
            raise InspectError(f"input {clean(i.name)} has type {i.type}, which --compare cannot feed")
        name = i.name.lower()
        if name in ("input_ids", "ids", "tokens"):
            feed[i.name] = ids.astype(dt)
        elif "mask" in name:
            feed[i.name] = np.ones((1, seq), dtype=dt)
        elif "position" in name:
            feed[i.name] = np.arange(seq, dtype=dt)[None]
        elif "past" in name or "cache" in name:
            shape = [d if isinstance(d, int) else (1 if "batch" in str(d).lower() else 0) for d in i.shape]
            feed[i.name] = np.zeros(shape, dtype=dt)
        else:
            raise InspectError(f"input {clean(i.name)} is neither token ids, a mask, positions nor a KV cache; "
                               "--compare cannot feed it")
    return feed


# --------------------------------------------------------------------------- matching


@dataclass
class Pair:
    q: QuantNode
    fp: FloatLinear | None


def match_layers(qnodes: list[QuantNode], fls: list[FloatLinear]) -> list[Pair]:
    """Pair each quantized layer with the float model's Linear.

    By (input value name, K, N) in graph order, which holds when both files come from the same
    trace; else (different traces, e.g. a KV-cache decoder against the plain float export) in graph
    order on K x N. Whichever pairs more layers wins.
    """
    by_key: dict[tuple[str, int, int], list[FloatLinear]] = {}
    for fl in fls:
        by_key.setdefault((fl.x, fl.K, fl.N), []).append(fl)
    by_name = []
    for q in qnodes:
        cands = by_key.get((q.x, q.K, q.N), [])
        by_name.append(Pair(q, cands.pop(0) if cands else None))
    by_order, rest = [], list(fls)
    for q in qnodes:
        j = next((j for j, fl in enumerate(rest) if (fl.K, fl.N) == (q.K, q.N)), None)
        by_order.append(Pair(q, rest[j] if j is not None else None))
        if j is not None:
            rest = rest[j + 1:]

    def matched(pairs: list[Pair]) -> int:
        return sum(p.fp is not None for p in pairs)

    return by_order if matched(by_order) > matched(by_name) else by_name


def snr_db(signal: float, noise: float) -> float | None:
    if noise <= 0 or not math.isfinite(noise):
        return None if noise == 0 else -math.inf if signal > 0 else None
    if signal <= 0:
        return -math.inf
    return 10 * math.log10(signal / noise)


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


def _nll(logits: np.ndarray, ids: np.ndarray) -> tuple[float, int]:
    """Sum of next-token negative log-likelihoods over one window, and the count."""
    lg = logits[0, :-1].astype(np.float64)
    target = ids[0, 1:]
    mx = lg.max(axis=-1, keepdims=True)
    lse = (mx[:, 0] + np.log(np.exp(lg - mx).sum(axis=-1)))
    return float((lse - lg[np.arange(len(target)), target]).sum()), len(target)


class _WeightCache:
    """Dense decoded weights of the quantized layers, bounded in bytes (LRU)."""

    def __init__(self, reader: TensorReader, max_bytes: int = 1 << 30):
        self.reader, self.max_bytes, self.items, self.bytes = reader, max_bytes, OrderedDict(), 0

    def get(self, q: QuantNode) -> tuple[np.ndarray, np.ndarray | None]:
        if q.name in self.items:
            self.items.move_to_end(q.name)
            return self.items[q.name]
        w = decode(q, self.reader).dense()
        b = self.reader.array(q.tensors["bias"]).astype(np.float32).reshape(-1) if "bias" in q.tensors else None
        if w.nbytes <= self.max_bytes:
            self.items[q.name] = (w, b)
            self.bytes += w.nbytes
            while self.bytes > self.max_bytes:
                _, (old, _) = self.items.popitem(last=False)
                self.bytes -= old.nbytes
        return w, b


def compare(fp_path, q_path, text: str | os.PathLike, tokenizer: str | os.PathLike | None = None,
            seqlen: int = 128, max_tokens: int = 1024) -> dict:
    """Run both files on the same tokens; JSON-able result (see module docstring)."""
    if seqlen < 2 or max_tokens < 2:
        raise InspectError("--seqlen and --max-tokens must be at least 2")
    fp_file, q_file = load_onnx(fp_path), load_onnx(q_path)
    _, qnodes, reader = analyse(q_file)
    if not qnodes:
        raise InspectError(f"{clean(q_file.path)} has no quantized layer; pass the quantized file second")
    pairs = match_layers(qnodes, find_float_linears(fp_file))
    tok_dir = find_tokenizer(tokenizer, q_file.path, fp_file.path)
    ids = load_tokens(text, tok_dir, max_tokens)
    windows = [ids[i:i + seqlen] for i in range(0, len(ids) - 1, seqlen)]
    windows = [w for w in windows if len(w) >= 2]

    q_extra = [v for p in pairs if p.fp is not None for v in (p.q.x, p.q.y)]
    fp_extra = [v for p in pairs if p.fp is not None for v in (p.fp.x, p.fp.y)]
    s_fp, s_q = _session(fp_file, fp_extra), _session(q_file, q_extra)
    out_fp = [o.name for o in s_fp.get_outputs()]
    out_q = [o.name for o in s_q.get_outputs()]
    main_out = out_fp[0]
    if main_out not in out_q:
        raise InspectError(f"the float model's output {clean(main_out)} is not an output of {clean(q_file.path)}; "
                           "compare files of the same model")
    n = len(pairs)
    acc = np.zeros((n, 6))  # input signal/noise, output signal/noise, isolated signal/noise
    final = np.zeros(2)
    nll = np.zeros(2)
    count = 0
    cache = _WeightCache(reader)
    for w in windows:
        win = w[None].astype(np.int64)
        try:
            r_fp = dict(zip(out_fp, s_fp.run(None, _feeds(s_fp, win)), strict=True))
            r_q = dict(zip(out_q, s_q.run(None, _feeds(s_q, win)), strict=True))
        except InspectError:
            raise
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InspectError(f"onnxruntime failed on the compare tokens: {clean(first, 240)}") from exc
        a, b = r_fp[main_out].astype(np.float64), r_q[main_out].astype(np.float64)
        if a.shape != b.shape:
            raise InspectError(f"outputs differ in shape ({a.shape} vs {b.shape}); compare files of the same model")
        final += [float((a * a).sum()), float(((a - b) ** 2).sum())]
        vocab = a.shape[-1]
        if a.ndim == 3 and "logits" in main_out.lower():
            if int(win.max()) >= vocab:
                raise InspectError(f"token id {int(win.max())} is outside the model's {vocab} logits; use the "
                                   "model's own tokenizer (--tokenizer DIR)")
            la, ca = _nll(r_fp[main_out], win)
            lb, _ = _nll(r_q[main_out], win)
            nll += [la, lb]
            count += ca
        for i, p in enumerate(pairs):
            if p.fp is None:
                continue
            x_fp, y_fp = r_fp[p.fp.x].astype(np.float64), r_fp[p.fp.y].astype(np.float64)
            x_q, y_q = r_q[p.q.x], r_q[p.q.y]
            if x_fp.shape != x_q.shape or y_fp.shape != y_q.shape:
                continue
            acc[i, 0] += float((x_fp ** 2).sum())
            acc[i, 1] += float(((x_fp - x_q) ** 2).sum())
            acc[i, 2] += float((y_fp ** 2).sum())
            acc[i, 3] += float(((y_fp - y_q) ** 2).sum())
            wq, bias = cache.get(p.q)
            if x_fp.shape[-1] == wq.shape[0] and y_fp.shape[-1] == wq.shape[1]:
                y_iso = x_fp.astype(np.float32) @ wq
                if bias is not None and bias.shape[0] == wq.shape[1]:
                    y_iso = y_iso + bias
                acc[i, 4] += float((y_fp ** 2).sum())
                acc[i, 5] += float(((y_fp - y_iso) ** 2).sum())
    layers = []
    for i, p in enumerate(pairs):
        entry = {"name": clean(p.q.name), "fp_node": clean(p.fp.node) if p.fp else None,
                 "input_snr_db": None, "output_snr_db": None, "isolated_snr_db": None}
        if p.fp is not None:
            entry.update(input_snr_db=_finite(snr_db(acc[i, 0], acc[i, 1])),
                         output_snr_db=_finite(snr_db(acc[i, 2], acc[i, 3])),
                         isolated_snr_db=_finite(snr_db(acc[i, 4], acc[i, 5])))
        layers.append(entry)
    scored = [e for e in layers if e["isolated_snr_db"] is not None]
    worst = min(scored, key=lambda e: e["isolated_snr_db"])["name"] if scored else None
    ppl = {"fp": math.exp(nll[0] / count) if count else None, "q": math.exp(nll[1] / count) if count else None}
    return {
        "schema_version": SCHEMA_VERSION,
        "fp": clean(fp_file.path, 1000),
        "q": clean(q_file.path, 1000),
        "tokenizer": clean(tok_dir, 1000),
        "text": clean(text, 1000),
        "tokens": int(sum(len(w) for w in windows)),
        "windows": len(windows),
        "seqlen": seqlen,
        "output": clean(main_out),
        "perplexity": ppl if count else None,
        "output_snr_db": _finite(snr_db(final[0], final[1])),
        "layers": layers,
        "unmatched": [e["name"] for e in layers if e["fp_node"] is None],
        "worst_layer": worst,
    }


def format_compare(c: dict) -> str:
    lines = [f"float: {c['fp']}", f"quantized: {c['q']}",
             f"{c['tokens']} tokens of {c['text']} ({c['windows']} windows of up to {c['seqlen']}), tokenizer "
             f"{c['tokenizer']}"]
    if c["perplexity"]:
        p = c["perplexity"]
        lines.append(f"perplexity: float {p['fp']:.4g}, quantized {p['q']:.4g} ({100 * (p['q'] / p['fp'] - 1):+.2f}%)")
    snr = c["output_snr_db"]
    lines.append(f"output {c['output']} SNR: {'identical' if snr is None else f'{snr:.2f} dB'}")

    def db(x):
        return "exact" if x is None else f"{x:.2f}"

    width = max([12] + [min(60, len(e["name"])) for e in c["layers"]])
    lines.append(f"{'layer':<{width}} {'isolated dB':>11} {'input dB':>9} {'output dB':>9}")
    for e in c["layers"]:
        if e["fp_node"] is None:
            lines.append(f"{e['name']:<{width}} {'no matching float Linear':>31}")
            continue
        mark = "  <- worst" if e["name"] == c["worst_layer"] else ""
        lines.append(f"{e['name']:<{width}} {db(e['isolated_snr_db']):>11} {db(e['input_snr_db']):>9} "
                     f"{db(e['output_snr_db']):>9}{mark}")
    if c["worst_layer"]:
        lines.append(f"lowest isolated SNR (hurts most): {c['worst_layer']}")
    return "\n".join(lines)
