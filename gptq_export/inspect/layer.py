"""One layer's weights, decoded from any of the three formats: `--layer NAME` details and `--diff`.

Every format is brought to one canonical form, in the Linear's own K order (act-order undone):
``codes`` uint8 [K, N], ``group`` int [K] (group of each input column), ``scales`` float32 [G, N]
and ``zeros`` float32 [G, N], with ``W[k, n] = scales[g, n] * (codes[k, n] - zeros[g, n])``,
``g = group[k]``. The dequantized weight is never held in full: statistics and differences are
accumulated over row chunks, so a layer costs one byte per weight (its codes) plus a chunk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .reader import InspectError, QuantNode, TensorReader, clean

CHUNK_ROWS = 1024


@dataclass
class Decoded:
    name: str
    bits: int
    codes: np.ndarray  # uint8 [K, N]
    group: np.ndarray  # int64 [K]
    scales: np.ndarray  # float32 [G, N]
    zeros: np.ndarray  # float32 [G, N]

    @property
    def K(self) -> int:
        return self.codes.shape[0]

    @property
    def N(self) -> int:
        return self.codes.shape[1]

    def chunks(self, rows: int = CHUNK_ROWS):
        """(start row, dequantized float32 rows [r, N]) over the whole weight."""
        for k0 in range(0, self.K, rows):
            g = self.group[k0:k0 + rows]
            c = self.codes[k0:k0 + rows].astype(np.float32)
            yield k0, (c - self.zeros[g]) * self.scales[g]

    def dense(self) -> np.ndarray:
        """The whole dequantized weight [K, N] float32 (tests and small layers)."""
        return np.concatenate([w for _, w in self.chunks()], axis=0) if self.K else np.zeros((0, self.N), np.float32)


def _check(cond: bool, layer: str, what: str) -> None:
    if not cond:
        raise InspectError(f"layer {clean(layer)}: {what}; the file is corrupted")


def _unpermute(perm: np.ndarray | None, K: int, layer: str) -> np.ndarray | None:
    """inverse index: original k -> stored row; None when there is no permutation."""
    if perm is None:
        return None
    perm = np.asarray(perm).reshape(-1).astype(np.int64)
    _check(perm.shape[0] == K and np.array_equal(np.sort(perm), np.arange(K)), layer,
           "the act-order permutation is not a permutation of K")
    inv = np.empty(K, dtype=np.int64)
    inv[perm] = np.arange(K)
    return inv


def decode(q: QuantNode, reader: TensorReader) -> Decoded:
    """Read and decode layer `q` (only its own tensors are read)."""
    try:
        if q.format == "gptq":
            return _decode_gptq(q, reader)
        if q.format == "ort":
            return _decode_ort(q, reader)
        return _decode_qdq(q, reader)
    except InspectError:
        raise
    except (ValueError, IndexError, TypeError, KeyError) as exc:
        raise InspectError(f"layer {clean(q.name)}: its tensors do not decode ({clean(exc, 120)}); the file is "
                           "corrupted") from exc


def _need(q: QuantNode, *roles: str) -> None:
    for r in roles:
        _check(r in q.tensors, q.name, f"{r} is not an initializer")


def _decode_gptq(q: QuantNode, reader: TensorReader) -> Decoded:
    from ..kernels.reference import packed_rows, unpack_codes, unpack_zeros

    _need(q, "qweight", "scales", "qzeros", "g_idx")
    K, N, bits = q.K, q.N, q.bits
    qweight = reader.array(q.tensors["qweight"])
    _check(qweight.shape == (packed_rows(K, bits), N), q.name, f"qweight has shape {qweight.shape}, K={K} N={N} "
           f"bits={bits} need {(packed_rows(K, bits), N)}")
    scales = reader.array(q.tensors["scales"]).astype(np.float32)
    _check(scales.ndim == 2 and scales.shape[1] == N and scales.shape[0] >= 1, q.name,
           f"scales has shape {scales.shape}")
    G = scales.shape[0]
    qzeros = reader.array(q.tensors["qzeros"])
    _check(qzeros.shape == (G, packed_rows(N, bits)), q.name, f"qzeros has shape {qzeros.shape}")
    g_idx = reader.array(q.tensors["g_idx"]).reshape(-1).astype(np.int64)
    _check(g_idx.shape == (K,) and (K == 0 or (g_idx.min() >= 0 and g_idx.max() < G)), q.name,
           f"g_idx has shape {g_idx.shape} or values outside 0..{G - 1}")
    codes = unpack_codes(qweight, bits, K)
    zeros = unpack_zeros(qzeros, bits, N).astype(np.float32)
    return Decoded(q.name, bits, codes, g_idx, scales, zeros)


def _decode_ort(q: QuantNode, reader: TensorReader) -> Decoded:
    from ..kernels.ort_layout import num_blocks, unpack_matmulnbits_weight, unpack_matmulnbits_zeros

    _need(q, "B", "scales")
    K, N, bits, block = q.K, q.N, q.bits, q.block_size or 0
    _check(bits in (2, 4, 8) and block >= 1, q.name, f"bits={bits} block_size={block} cannot be decoded")
    kb = num_blocks(K, block)
    B = reader.array(q.tensors["B"])
    blob = block * bits // 8
    _check(B.size == N * kb * blob, q.name, f"B has {B.size} bytes, N x blocks x blob needs {N * kb * blob}")
    stored = unpack_matmulnbits_weight(B.reshape(N, kb, blob), bits, K).T  # [K, N] in stored (permuted) order
    scales = reader.array(q.tensors["scales"]).astype(np.float32)
    _check(scales.size == N * kb, q.name, f"scales has {scales.size} values, need {N * kb}")
    scales = scales.reshape(N, kb).T.copy()
    if "zero_points" in q.tensors:
        zp = reader.array(q.tensors["zero_points"])
        per_row = -(-kb * bits // 8)
        _check(zp.size == N * per_row, q.name, f"zero_points has {zp.size} bytes, need {N * per_row}")
        zeros = unpack_matmulnbits_zeros(zp.reshape(N, per_row), bits, kb).T.astype(np.float32)
    else:
        zeros = np.full((kb, N), 1 << (bits - 1), dtype=np.float32)
    group = np.arange(K) // block
    inv = _unpermute(reader.array(q.tensors["perm"]) if "perm" in q.tensors else None, K, q.name)
    if inv is not None:
        stored, group = stored[inv], group[inv]
    return Decoded(q.name, bits, np.ascontiguousarray(stored), group, scales, zeros)


def _decode_qdq(q: QuantNode, reader: TensorReader) -> Decoded:
    _need(q, "w_q", "scale")
    K, N, bits, block = q.K, q.N, q.bits, q.block_size or q.K
    w = reader.array(q.tensors["w_q"])
    _check(w.shape == (K, N), q.name, f"w_q has shape {w.shape}")
    kb = -(-K // max(block, 1))
    scale = reader.array(q.tensors["scale"]).astype(np.float32)
    _check(scale.size == kb * N, q.name, f"scale has {scale.size} values, need {kb * N}")
    scale = scale.reshape(kb, N)
    signed = w.dtype == np.int8
    if "zero_point" in q.tensors:
        zp = reader.array(q.tensors["zero_point"]).astype(np.float32)
        _check(zp.size == kb * N, q.name, f"zero_point has {zp.size} values, need {kb * N}")
        zeros = zp.reshape(kb, N)
    else:
        zeros = np.zeros((kb, N), dtype=np.float32)
    offset = 1 << (bits - 1) if signed else 0  # signed codes q - 2^(bits-1): back to unsigned codes
    codes = (w.astype(np.int16) + offset).astype(np.uint8) if bits <= 8 else w
    zeros = zeros + offset
    group = np.arange(K) // max(block, 1)
    inv = _unpermute(reader.array(q.tensors["perm"]) if "perm" in q.tensors else None, K, q.name)
    if inv is not None:
        codes, group = codes[inv], group[inv]
    return Decoded(q.name, bits, np.ascontiguousarray(codes), group, scale, zeros)


# --------------------------------------------------------------------------- statistics


def _stats(a: np.ndarray) -> dict:
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    if a.size == 0:
        return {"count": 0}
    finite = np.isfinite(a)
    f = a[finite]
    out = {"count": int(a.size), "non_finite": int(a.size - f.size)}
    if f.size:
        out.update(min=float(f.min()), max=float(f.max()), mean=float(f.mean()), std=float(f.std()))
    return out


class _Running:
    """min/max/sum/sum of squares over chunks."""

    def __init__(self):
        self.n = 0
        self.s = self.ss = self.abs_max = 0.0
        self.lo, self.hi = math.inf, -math.inf
        self.zero = self.bad = 0

    def add(self, w: np.ndarray) -> None:
        w = w.astype(np.float64, copy=False).reshape(-1)
        ok = np.isfinite(w)
        self.bad += int(w.size - ok.sum())
        w = w[ok]
        if w.size:
            self.n += w.size
            self.s += float(w.sum())
            self.ss += float(np.dot(w, w))
            self.lo, self.hi = min(self.lo, float(w.min())), max(self.hi, float(w.max()))
            self.abs_max = max(self.abs_max, float(np.abs(w).max()))
            self.zero += int((w == 0).sum())

    def result(self) -> dict:
        if not self.n:
            return {"count": 0, "non_finite": self.bad}
        mean = self.s / self.n
        return {"count": self.n, "non_finite": self.bad, "min": self.lo, "max": self.hi, "mean": mean,
                "std": math.sqrt(max(self.ss / self.n - mean * mean, 0.0)), "rms": math.sqrt(self.ss / self.n),
                "abs_max": self.abs_max, "zero_fraction": self.zero / self.n}


def layer_details(row: dict, q: QuantNode, reader: TensorReader) -> dict:
    """`--layer`: the table row, its tensors, scale/zero statistics, code histogram, weight statistics."""
    d = decode(q, reader)
    levels = 1 << d.bits
    hist = np.bincount(d.codes.reshape(-1), minlength=levels)[:levels]
    total = max(int(hist.sum()), 1)
    p = hist[hist > 0] / total
    zeros_hist = np.bincount(np.clip(d.zeros.reshape(-1), 0, levels - 1).astype(np.int64), minlength=levels)
    w = _Running()
    for _, chunk in d.chunks():
        w.add(chunk)
    tensors = []
    for role, name in q.tensors.items():
        t = reader.init[name]
        from .reader import dtype_name, payload_bytes

        tensors.append({"role": role, "name": clean(name), "dtype": dtype_name(t.data_type),
                        "shape": [int(x) for x in t.dims], "bytes": payload_bytes(t),
                        "external": t.data_location == 1})
    return {
        "layer": row,
        "tensors": tensors,
        "groups": int(d.scales.shape[0]),
        "scales": _stats(d.scales),
        "zeros": {**_stats(d.zeros), "histogram": [int(x) for x in zeros_hist[:levels]]},
        "codes": {"histogram": [int(x) for x in hist], "entropy_bits": float(-(p * np.log2(p)).sum()),
                  "min_code_fraction": float(hist[0] / total), "max_code_fraction": float(hist[-1] / total)},
        "weight": w.result(),
    }


def format_details(det: dict) -> str:
    r = det["layer"]
    lines = [f"layer {r['name']} ({r['format']}, node {r['node']}): K x N = {r['K']} x {r['N']}, {r['bits']} bits, "
             f"group {r['group_size']}, act-order {'yes' if r['act_order'] else 'no'}, "
             f"{'sym' if r['sym'] else 'asym'}, {r['bytes']} bytes ({r['bits_per_weight']:.2f} bits/weight)"]
    if r["loss"] is not None:
        lines.append(f"export loss: gptq {r['loss']:.4g}, rtn {r['rtn_loss'] if r['rtn_loss'] is None else format(r['rtn_loss'], '.4g')}")
    for t in det["tensors"]:
        lines.append(f"  tensor {t['role']:<12} {t['name']}  {t['dtype']}{t['shape']}  {t['bytes']} bytes"
                     f"{' (external)' if t['external'] else ''}")

    def st(d: dict) -> str:
        if not d.get("count"):
            return "empty"
        return (f"min {d['min']:.4g}  max {d['max']:.4g}  mean {d['mean']:.4g}  std {d['std']:.4g}"
                if "min" in d else f"{d['count']} values, none finite")

    lines.append(f"groups: {det['groups']}")
    lines.append(f"scales: {st(det['scales'])}")
    lines.append(f"zero points: {st(det['zeros'])}")
    hist = det["codes"]["histogram"]
    peak = max(hist) or 1
    lines.append(f"codes: entropy {det['codes']['entropy_bits']:.3f} of {r['bits']} bits; at the lowest code "
                 f"{100 * det['codes']['min_code_fraction']:.2f}%, at the highest {100 * det['codes']['max_code_fraction']:.2f}%")
    if len(hist) <= 16:
        for code, count in enumerate(hist):
            lines.append(f"  {code:>3} {count:>10} {'#' * round(40 * count / peak)}")
    else:
        per = len(hist) // 16
        for i in range(16):
            count = sum(hist[i * per:(i + 1) * per])
            lines.append(f"  {i * per:>3}-{(i + 1) * per - 1:<3} {count:>10} {'#' * round(40 * count / (peak * per))}")
    w = det["weight"]
    if w.get("count"):
        lines.append(f"dequantized weight: min {w['min']:.4g}  max {w['max']:.4g}  mean {w['mean']:.4g}  std "
                     f"{w['std']:.4g}  rms {w['rms']:.4g}  zero {100 * w['zero_fraction']:.2f}%"
                     f"{'  non-finite ' + str(w['non_finite']) if w['non_finite'] else ''}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- diff


SETTINGS = ("format", "K", "N", "bits", "group_size", "block_size", "act_order", "sym", "bias")


def diff_layer(a: Decoded, b: Decoded) -> dict:
    """Weight difference of two decodings of the same Linear (same K x N)."""
    num = den = 0.0
    max_abs = 0.0
    for (_, wa), (_, wb) in zip(a.chunks(), b.chunks(), strict=True):
        d = wa.astype(np.float64) - wb
        num += float(np.dot(d.reshape(-1), d.reshape(-1)))
        den += float(np.dot(wb.reshape(-1).astype(np.float64), wb.reshape(-1).astype(np.float64)))
        if d.size:
            max_abs = max(max_abs, float(np.nanmax(np.abs(d))))
    out = {"rel_l2": math.sqrt(num / den) if den > 0 else (0.0 if num == 0 else None), "max_abs": max_abs,
           "identical": num == 0.0}
    if a.bits == b.bits:
        out["same_code_fraction"] = float((a.codes == b.codes).mean()) if a.codes.size else 1.0
    return out
