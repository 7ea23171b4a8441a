"""`--diff other.onnx`: per-layer setting and weight differences between two exported files.

Layers are matched by their Linear name; weights are compared after decoding each file's format
to the canonical form (`layer.decode`), so a `gptq` file and its `ort`/`qdq` conversion compare
as identical. One layer is decoded at a time.
"""

from __future__ import annotations

from .layer import SETTINGS, decode, diff_layer
from .reader import OnnxFile
from .report import analyse, build_report


def diff_files(a: OnnxFile, b: OnnxFile) -> dict:
    """JSON-able differences of `a` against `b`."""
    rep_a, rep_b = build_report(a), build_report(b)
    _, nodes_a, reader_a = analyse(a)
    _, nodes_b, reader_b = analyse(b)
    qa = {q.name: q for q in nodes_a}
    qb = {q.name: q for q in nodes_b}
    rows_b = {r["name"]: r for r in rep_b["layers"]}
    layers = []
    for ra in rep_a["layers"]:
        rb = rows_b.get(ra["name"])
        if rb is None or ra["name"] not in qa or ra["name"] not in qb:
            continue
        settings = {k: [ra[k], rb[k]] for k in SETTINGS if ra[k] != rb[k]}
        entry = {"name": ra["name"], "settings": settings, "bytes": [ra["bytes"], rb["bytes"]],
                 "loss": [ra["loss"], rb["loss"]], "rtn_loss": [ra["rtn_loss"], rb["rtn_loss"]]}
        if (ra["K"], ra["N"]) == (rb["K"], rb["N"]):
            entry["weight"] = diff_layer(decode(qa[ra["name"]], reader_a), decode(qb[ra["name"]], reader_b))
        else:
            entry["weight"] = None
        layers.append(entry)
    names_a = [r["name"] for r in rep_a["layers"]]
    names_b = [r["name"] for r in rep_b["layers"]]
    cfg_a = rep_a["metadata"].get("config") if isinstance(rep_a["metadata"].get("config"), dict) else {}
    cfg_b = rep_b["metadata"].get("config") if isinstance(rep_b["metadata"].get("config"), dict) else {}
    config = {k: [cfg_a.get(k), cfg_b.get(k)] for k in sorted(set(cfg_a) | set(cfg_b)) if cfg_a.get(k) != cfg_b.get(k)}
    fl_a = {d["name"]: d["reason"] for d in rep_a["float_linears"]}
    fl_b = {d["name"]: d["reason"] for d in rep_b["float_linears"]}
    return {
        "schema_version": rep_a["schema_version"],
        "a": rep_a["file"],
        "b": rep_b["file"],
        "format": [rep_a["format"], rep_b["format"]],
        "total_bytes": [rep_a["sizes"]["total_bytes"], rep_b["sizes"]["total_bytes"]],
        "config": config,
        "only_in_a": [n for n in names_a if n not in set(names_b)],
        "only_in_b": [n for n in names_b if n not in set(names_a)],
        "float_only_in_a": sorted(set(fl_a) - set(fl_b)),
        "float_only_in_b": sorted(set(fl_b) - set(fl_a)),
        "layers": layers,
        "identical_weights": bool(layers) and all(e["weight"] and e["weight"]["identical"] for e in layers)
        and not [n for n in names_a if n not in set(names_b)] and not [n for n in names_b if n not in set(names_a)],
    }


def format_diff(d: dict) -> str:
    lines = [f"a: {d['a']} ({d['format'][0]}, {d['total_bytes'][0]} bytes)",
             f"b: {d['b']} ({d['format'][1]}, {d['total_bytes'][1]} bytes)"]
    for k, (va, vb) in d["config"].items():
        lines.append(f"config {k}: {va} -> {vb}")
    for key, label in (("only_in_a", "quantized only in a"), ("only_in_b", "quantized only in b"),
                       ("float_only_in_a", "float only in a"), ("float_only_in_b", "float only in b")):
        if d[key]:
            lines.append(f"{label}: {', '.join(d[key])}")
    if d["layers"]:
        width = max(12, min(60, max(len(e["name"]) for e in d["layers"])))
        lines.append(f"{'layer':<{width}} {'rel L2':>10} {'max |dW|':>10} {'same codes':>10}  settings")
        for e in d["layers"]:
            w = e["weight"]
            rel = "-" if not w or w["rel_l2"] is None else f"{w['rel_l2']:.3g}"
            mx = "-" if not w else f"{w['max_abs']:.3g}"
            same = "-" if not w or "same_code_fraction" not in w else f"{100 * w['same_code_fraction']:.1f}%"
            sett = ", ".join(f"{k} {va}->{vb}" for k, (va, vb) in e["settings"].items()) or "same"
            lines.append(f"{e['name']:<{width}} {rel:>10} {mx:>10} {same:>10}  {sett}")
    lines.append("dequantized weights identical" if d["identical_weights"] else "no common layer" if not d["layers"] else
                 f"{sum(1 for e in d['layers'] if e['weight'] and not e['weight']['identical'])} of "
                 f"{len(d['layers'])} common layers differ")
    return "\n".join(lines)
