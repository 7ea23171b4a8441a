"""Token generation over an exported KV-cache decoder with onnxruntime (greedy or sampled).

    import gptq_export as gx
    decoder = gx.Decoder("out/smollm2")           # a genai folder or a .onnx written with --kv-cache
    ids = gx.generate(decoder, prompt_ids, max_new_tokens=64, on_token=print)

Files in the `ort`, `qdq` or float formats run in plain onnxruntime; `gptq` files through
`gptq_export.runtime` (our custom op). The prompt is one prefill call with an empty past (length 0);
every further token is one call with the presents fed back as the next past.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import DOMAIN
from .errors import RuntimeSetupError

PAST_PREFIX = "past_key_values."
TokenFn = Callable[[int], None]


def model_file(path: str | os.PathLike) -> Path:
    """The .onnx file of `path`: the file itself, or model.onnx inside a genai folder."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.onnx"
    if not path.is_file():
        raise RuntimeSetupError(f"{path} does not exist; export a decoder with gptq-export -o DIR (or --kv-cache)")
    return path


def _uses_custom_op(path: Path) -> bool:
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise RuntimeSetupError(f"{path} is not a readable ONNX model ({type(exc).__name__}); re-export it") from exc
    return any(op.domain == DOMAIN for op in proto.opset_import)


@dataclass
class Sampling:
    """Greedy when do_sample is False; else temperature, then top-k (0 = off), then top-p (1 = off)."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}; use do_sample=False for greedy")
        if self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"need top_k >= 0 and 0 < top_p <= 1, got {self.top_k}, {self.top_p}")

    def pick(self, logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Next token per row of logits [batch, vocab]."""
        if not self.do_sample:
            return logits.argmax(-1)
        z = logits.astype(np.float64) / self.temperature
        if self.top_k:
            kth = np.sort(z, axis=-1)[:, -min(self.top_k, z.shape[-1])][:, None]
            z = np.where(z < kth, -np.inf, z)
        p = np.exp(z - z.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        if self.top_p < 1:
            order = np.argsort(-p, axis=-1)
            sorted_p = np.take_along_axis(p, order, -1)
            keep_sorted = np.cumsum(sorted_p, -1) - sorted_p < self.top_p  # always keeps the top token
            keep = np.zeros_like(keep_sorted)
            np.put_along_axis(keep, order, keep_sorted, -1)
            p = np.where(keep, p, 0.0)
            p /= p.sum(-1, keepdims=True)
        return np.array([rng.choice(p.shape[-1], p=row) for row in p])


class Decoder:
    """A KV-cache decoder (genai folder or .onnx) in an onnxruntime session."""

    def __init__(self, path: str | os.PathLike, device: str = "cpu", intra_op_threads: int | None = None):
        self.path = model_file(path)
        if _uses_custom_op(self.path):
            from .runtime import InferenceSession

            sess = InferenceSession(self.path, device=device, intra_op_threads=intra_op_threads).session
        else:
            if device != "cpu":
                raise RuntimeSetupError(f"device {device!r} is only for gptq-format files; this file runs on the "
                                        "CPU in plain onnxruntime")
            import onnxruntime as ort

            opts = ort.SessionOptions()
            if intra_op_threads:
                opts.intra_op_num_threads = intra_op_threads
            try:
                sess = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
            except Exception as exc:
                raise RuntimeSetupError(f"onnxruntime cannot load {self.path}: {str(exc).splitlines()[0][:300]}") from exc
        self.session = sess
        inputs = {i.name: i for i in sess.get_inputs()}
        self.past_names = [n for n in inputs if n.startswith(PAST_PREFIX)]
        if not self.past_names or not {"input_ids", "attention_mask", "position_ids"} <= inputs.keys():
            raise RuntimeSetupError(f"{self.path} is not a KV-cache decoder (inputs: {', '.join(list(inputs)[:4])}); "
                                    "export it with -o DIR or --kv-cache")
        shape = inputs[self.past_names[0]].shape  # [batch, kv_heads, past, head_dim]
        self.kv_heads, self.head_dim = int(shape[1]), int(shape[3])
        self.output_names = [o.name for o in sess.get_outputs()]

    def empty_past(self, batch: int) -> dict[str, np.ndarray]:
        return {n: np.zeros((batch, self.kv_heads, 0, self.head_dim), np.float32) for n in self.past_names}

    def step(self, ids: np.ndarray, past: dict[str, np.ndarray], past_len: int) -> tuple[np.ndarray, dict]:
        """Run ids [batch, seq] after `past_len` cached tokens: (last logits [batch, vocab], new past)."""
        batch, seq = ids.shape
        feed = {
            "input_ids": ids.astype(np.int64),
            "attention_mask": np.ones((batch, past_len + seq), np.int64),
            "position_ids": np.broadcast_to(np.arange(past_len, past_len + seq, dtype=np.int64), (batch, seq)).copy(),
            **past,
        }
        out = self.session.run(None, feed)
        new_past = {n.replace("present.", PAST_PREFIX, 1): v for n, v in zip(self.output_names[1:], out[1:],
                                                                            strict=True)}
        return out[0][:, -1, :], new_past


def generate(
    decoder: Decoder | str | os.PathLike,
    input_ids,
    max_new_tokens: int = 32,
    sampling: Sampling | None = None,
    eos_token_id: int | list[int] | None = None,
    on_token: TokenFn | None = None,
) -> np.ndarray:
    """New tokens [batch, <= max_new_tokens] after the prompt input_ids [batch, seq] (or [seq]).

    Stops early when every row has produced an eos token (rows that finished repeat eos).
    on_token(id) is called for each new token of row 0 as soon as it is known (streaming).
    """
    dec = decoder if isinstance(decoder, Decoder) else Decoder(decoder)
    sampling = sampling or Sampling()
    ids = np.atleast_2d(np.asarray(input_ids, dtype=np.int64))
    if ids.shape[1] == 0:
        raise ValueError("the prompt is empty; give at least one token")
    eos = set(np.atleast_1d(eos_token_id).tolist()) if eos_token_id is not None else set()
    rng = np.random.default_rng(sampling.seed)
    past, past_len, cur = dec.empty_past(ids.shape[0]), 0, ids
    done = np.zeros(ids.shape[0], bool)
    new: list[np.ndarray] = []
    for _ in range(max_new_tokens):
        logits, past = dec.step(cur, past, past_len)
        past_len += cur.shape[1]
        nxt = sampling.pick(logits, rng)
        if eos:
            nxt = np.where(done, next(iter(eos)), nxt)
            done |= np.isin(nxt, list(eos))
        new.append(nxt)
        if on_token is not None:
            on_token(int(nxt[0]))
        if eos and done.all():
            break
        cur = nxt[:, None]
    return np.stack(new, axis=1) if new else np.zeros((ids.shape[0], 0), np.int64)
