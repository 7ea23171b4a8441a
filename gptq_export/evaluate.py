"""Perplexity of an exported causal LM, computed from its ONNX file in onnxruntime."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .runtime import InferenceSession


def window_nll(logits: np.ndarray, ids: np.ndarray) -> tuple[float, int]:
    """Summed next-token negative log-likelihood (float64) and token count of [b, s, V] logits."""
    logits = logits[:, :-1].astype(np.float64)
    target = ids[:, 1:]
    m = logits.max(axis=-1, keepdims=True)
    logz = np.log(np.exp(logits - m).sum(axis=-1)) + m[..., 0]
    picked = np.take_along_axis(logits, target[..., None], axis=-1)[..., 0]
    return float((logz - picked).sum()), int(target.size)


def perplexity(
    session: InferenceSession | str,
    windows: torch.Tensor,
    batch_size: int = 1,
    progress: Callable[[int, int, float], None] | None = None,
) -> float:
    """exp(mean NLL) over non-overlapping windows [n, seqlen] (each window predicts its own tokens)."""
    sess = session if isinstance(session, InferenceSession) else InferenceSession(session)
    ids_all = windows.numpy().astype(np.int64)
    nll, count = 0.0, 0
    for start in range(0, len(ids_all), batch_size):
        ids = ids_all[start : start + batch_size]
        logits = sess.run({sess.input_names[0]: ids})[0]
        s, c = window_nll(logits, ids)
        nll, count = nll + s, count + c
        if progress:
            progress(min(start + batch_size, len(ids_all)), len(ids_all), float(np.exp(nll / count)))
    return float(np.exp(nll / count))


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Sentence embeddings: mask-weighted mean of token states [b, s, d], L2-normalised (float64)."""
    m = mask[..., None].astype(np.float64)
    emb = (hidden.astype(np.float64) * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
    return emb / np.linalg.norm(emb, axis=-1, keepdims=True)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows."""
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
