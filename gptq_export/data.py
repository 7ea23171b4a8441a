"""Text data: packaged C4 / Wikipedia samples, calibration windows and evaluation windows.

The packaged texts live in ``gptq_export/data`` (see data/NOTICE.md for sources and licences):
``c4`` (calibration) and ``wiki`` (evaluation, with the ``<doc ...>`` wrapper lines removed).
"""

from __future__ import annotations

import hashlib
import os
import re
import weakref
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from .config import CalibConfig
from .errors import CalibrationError

PACKAGED_TEXTS = ("c4", "wiki")

#: Texts are tokenized in chunks of about this many characters, cut at paragraph starts.
_CHUNK_CHARS = 16_000
_DOC_OPEN = re.compile(r"^<doc\b[^>]*>\s*$")
_DOC_CLOSE = re.compile(r"^</doc>\s*$")
#: Cut points: just before a run of newlines between two non-space characters, where GPT-2 /
#: Llama-3 style regex pre-tokenizers and WordPiece split anyway, so chunking keeps the tokens.
_CUT = re.compile(r"(?<=\S)\n+(?=\S)")

# tokenizer -> {(sha1 of text, len(tokenizer)): 1-D token tensor}
_TOKEN_CACHE: weakref.WeakKeyDictionary[Any, dict[tuple[str, int], torch.Tensor]] = weakref.WeakKeyDictionary()
_CACHE_PER_TOKENIZER = 4


@cache
def packaged_text(name: str) -> str:
    """The packaged sample ``"c4"`` or ``"wiki"`` (Wikipedia without its ``<doc>`` wrapper lines)."""
    if name not in PACKAGED_TEXTS:
        raise ValueError(f"unknown packaged text {name!r}; choose one of {', '.join(PACKAGED_TEXTS)}")
    text = resources.files("gptq_export").joinpath("data", f"{name}.utf8").read_text(encoding="utf-8")
    if name == "wiki":
        text = _strip_doc_lines(text)
    return text


def _strip_doc_lines(text: str) -> str:
    """Drop ``<doc ...>`` / ``</doc>`` lines, keeping one blank line between articles."""
    out: list[str] = []
    for line in text.splitlines():
        if _DOC_OPEN.match(line):
            continue
        if _DOC_CLOSE.match(line):
            if out and out[-1] != "":
                out.append("")
            continue
        out.append(line)
    return "\n".join(out).strip() + "\n"


def read_text_file(path: str | os.PathLike[str]) -> str:
    """Read a UTF-8 text file; CalibrationError when it is missing, unreadable or not UTF-8."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CalibrationError(f"text file {p} does not exist; pass an existing UTF-8 text file")
    if not p.is_file():
        raise CalibrationError(f"{p} is not a file; pass a UTF-8 text file")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CalibrationError(
            f"text file {p} is not UTF-8 (bad byte at offset {exc.start}); convert it, e.g. iconv -t UTF-8"
        ) from exc
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise CalibrationError(f"cannot read text file {p} ({reason}); check its permissions") from exc


def _chunks(text: str, size: int = _CHUNK_CHARS) -> list[str]:
    """Split ``text`` into pieces of about ``size`` characters at paragraph starts (lossless)."""
    pieces: list[str] = []
    start = 0
    for m in _CUT.finditer(text):
        if m.start() - start >= size:
            pieces.append(text[start : m.start()])
            start = m.start()
    if start < len(text):
        pieces.append(text[start:])
    return pieces


def _encode(tokenizer: Any, text: str) -> torch.Tensor:
    """Token ids of ``text`` (no special tokens) as a 1-D int64 tensor, cached per tokenizer."""
    key = (hashlib.sha1(text.encode("utf-8")).hexdigest(), _tokenizer_len(tokenizer))
    try:
        per_tok = _TOKEN_CACHE.setdefault(tokenizer, {})
    except TypeError:  # not weak-referenceable or not hashable: no cache
        per_tok = {}
    if key in per_tok:
        return per_tok[key]
    chunks = _chunks(text)
    if not chunks:
        ids = torch.zeros(0, dtype=torch.long)
    else:
        # verbose=False silences "Token indices sequence length is longer than ..." (we cut windows).
        encoded = tokenizer(chunks, add_special_tokens=False, verbose=False)["input_ids"]
        flat = [t for piece in encoded for t in piece]
        ids = torch.tensor(flat, dtype=torch.long)
    if len(per_tok) >= _CACHE_PER_TOKENIZER:
        per_tok.pop(next(iter(per_tok)))
    per_tok[key] = ids
    return ids


def _tokenizer_len(tokenizer: Any) -> int:
    try:
        return len(tokenizer)
    except TypeError:
        return -1


def _need_tokenizer(tokenizer: Any | None) -> None:
    if tokenizer is None:
        raise CalibrationError("model has no tokenizer files; add them to the model folder or pass calibration tokens")


def calibration_windows(tokenizer: Any | None, calib: CalibConfig, max_context: int | None) -> tuple[torch.Tensor, int]:
    """Draw ``calib.nsamples`` random token windows; returns (LongTensor [nsamples, seqlen], seqlen).

    The text is ``calib.text`` or the packaged C4 sample, tokenized once without special tokens.
    seqlen is ``calib.seqlen`` capped by ``max_context``; start offsets come from a torch
    Generator seeded with ``calib.seed``, so the same seed gives the same windows.
    """
    _need_tokenizer(tokenizer)
    if calib.text is not None:
        text, label = read_text_file(calib.text), f"calibration text {calib.text}"
    else:
        text, label = packaged_text("c4"), "packaged calibration text c4"
    if not text.strip():
        raise CalibrationError(f"{label} is empty; pass a UTF-8 file with a few thousand words via --calib")
    seqlen = calib.seqlen
    if max_context is not None and max_context > 0:
        seqlen = min(seqlen, max_context)
    ids = _encode(tokenizer, text)
    n_tokens = int(ids.numel())
    if n_tokens == 0:
        raise CalibrationError(f"{label} is empty after tokenization; pass a UTF-8 file with real text via --calib")
    if n_tokens < seqlen + 1:
        raise CalibrationError(
            f"{label} has {n_tokens} tokens but {seqlen + 1} are needed for seqlen {seqlen}; "
            "lower --seqlen or pass a longer --calib file"
        )
    gen = torch.Generator().manual_seed(calib.seed)
    starts = torch.randint(0, n_tokens - seqlen, (calib.nsamples,), generator=gen)
    index = starts[:, None] + torch.arange(seqlen)[None, :]
    return ids[index].contiguous(), seqlen


def eval_windows(tokenizer: Any | None, text: str, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    """Consecutive non-overlapping windows from the start of ``text``: LongTensor [n, seqlen].

    Deterministic; the tail shorter than one window is dropped. ``max_windows`` caps n.
    """
    _need_tokenizer(tokenizer)
    if max_windows is not None and max_windows < 1:
        raise CalibrationError(f"max_windows={max_windows} is invalid; use at least 1 or None (all windows)")
    if seqlen < 1:
        raise CalibrationError(f"evaluation seqlen {seqlen} is invalid; use at least 2 tokens")
    ids = _encode(tokenizer, text)
    n = int(ids.numel()) // seqlen
    if max_windows is not None:
        n = min(n, max_windows)
    if n < 1:
        raise CalibrationError(
            f"evaluation text has {int(ids.numel())} tokens, fewer than one window of {seqlen}; "
            "lower the sequence length or use a longer text"
        )
    return ids[: n * seqlen].view(n, seqlen).clone()
