"""Tests of gptq_export.data: packaged texts, calibration windows, evaluation windows."""

from __future__ import annotations

import pytest
import torch

from gptq_export.config import CalibConfig
from gptq_export.data import (
    _chunks,
    calibration_windows,
    eval_windows,
    packaged_text,
    read_text_file,
)
from gptq_export.errors import CalibrationError


def _stream(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]


def _is_substream(window: list[int], stream: list[int]) -> bool:
    first = window[0]
    return any(stream[i : i + len(window)] == window for i, t in enumerate(stream) if t == first)


@pytest.fixture(scope="module")
def short_text() -> str:
    """About 20 kB of C4: enough windows, quick to tokenize and search."""
    return packaged_text("c4")[:20_000]


@pytest.fixture
def short_file(tmp_path, short_text):
    path = tmp_path / "calib.txt"
    path.write_text(short_text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- packaged texts


def test_packaged_texts():
    c4, wiki = packaged_text("c4"), packaged_text("wiki")
    assert len(c4) > 1_000_000 and len(wiki) > 1_000_000
    assert not any(line.startswith("<doc") or line.strip() == "</doc>" for line in wiki.splitlines())
    assert "<doc id=" not in wiki
    assert "European Parliament" in wiki[:2000]  # article text is kept


def test_packaged_text_unknown():
    with pytest.raises(ValueError, match="unknown packaged text"):
        packaged_text("pile")


def test_chunks_are_lossless():
    text = packaged_text("wiki")[:200_000]
    pieces = _chunks(text, size=5_000)
    assert "".join(pieces) == text and len(pieces) > 10


# --------------------------------------------------------------------------- read_text_file


def test_read_text_file_errors(tmp_path):
    with pytest.raises(CalibrationError, match="does not exist"):
        read_text_file(tmp_path / "missing.txt")
    with pytest.raises(CalibrationError, match="is not a file"):
        read_text_file(tmp_path)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(CalibrationError, match="is not UTF-8"):
        read_text_file(bad)


# --------------------------------------------------------------------------- calibration windows


def test_calibration_windows_shape_and_substrings(tiny_tokenizer, short_file, short_text):
    calib = CalibConfig(text=str(short_file), nsamples=6, seqlen=64, seed=0)
    windows, seqlen = calibration_windows(tiny_tokenizer, calib, max_context=None)
    assert seqlen == 64
    assert windows.shape == (6, 64) and windows.dtype == torch.int64
    stream = _stream(tiny_tokenizer, short_text)
    for row in windows.tolist():
        assert _is_substream(row, stream)


def test_calibration_windows_seeded(tiny_tokenizer, short_file):
    def draw(seed: int) -> torch.Tensor:
        calib = CalibConfig(text=str(short_file), nsamples=4, seqlen=32, seed=seed)
        return calibration_windows(tiny_tokenizer, calib, max_context=None)[0]

    assert torch.equal(draw(0), draw(0))
    assert not torch.equal(draw(0), draw(1))


def test_calibration_seqlen_capped_by_context(tiny_tokenizer, short_file):
    calib = CalibConfig(text=str(short_file), nsamples=2, seqlen=512, seed=0)
    windows, seqlen = calibration_windows(tiny_tokenizer, calib, max_context=48)
    assert seqlen == 48 and windows.shape == (2, 48)


def test_calibration_default_text_is_c4(tiny_tokenizer):
    windows, seqlen = calibration_windows(tiny_tokenizer, CalibConfig(nsamples=2, seqlen=16), max_context=None)
    assert windows.shape == (2, 16) and seqlen == 16
    assert int(windows.max()) < len(tiny_tokenizer)


def test_calibration_errors(tiny_tokenizer, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n", encoding="utf-8")
    with pytest.raises(CalibrationError, match=r"calibration text .*empty\.txt is empty"):
        calibration_windows(tiny_tokenizer, CalibConfig(text=str(empty)), None)

    short = tmp_path / "short.txt"
    short.write_text("just a few words here", encoding="utf-8")
    with pytest.raises(CalibrationError, match=r"has \d+ tokens but 129 are needed.*lower --seqlen.*--calib"):
        calibration_windows(tiny_tokenizer, CalibConfig(text=str(short), seqlen=128), None)

    with pytest.raises(CalibrationError, match="does not exist"):
        calibration_windows(tiny_tokenizer, CalibConfig(text=str(tmp_path / "missing.txt")), None)

    with pytest.raises(CalibrationError, match="model has no tokenizer files"):
        calibration_windows(None, CalibConfig(), None)


def test_calibration_exactly_enough_tokens(tiny_tokenizer, tmp_path):
    text = "one two three four five six seven eight nine ten"
    n = len(_stream(tiny_tokenizer, text))
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    windows, _ = calibration_windows(tiny_tokenizer, CalibConfig(text=str(path), nsamples=3, seqlen=n - 1), None)
    assert torch.equal(windows, torch.tensor([_stream(tiny_tokenizer, text)[: n - 1]] * 3))


# --------------------------------------------------------------------------- eval windows


def test_eval_windows(tiny_tokenizer, short_text):
    stream = torch.tensor(_stream(tiny_tokenizer, short_text))
    windows = eval_windows(tiny_tokenizer, short_text, seqlen=100, max_windows=None)
    n = stream.numel() // 100
    assert windows.shape == (n, 100) and windows.dtype == torch.int64
    assert torch.equal(windows.flatten(), stream[: n * 100])  # consecutive, non-overlapping
    capped = eval_windows(tiny_tokenizer, short_text, seqlen=100, max_windows=3)
    assert torch.equal(capped, windows[:3])
    assert torch.equal(eval_windows(tiny_tokenizer, short_text, 100, 3), capped)


def test_eval_windows_errors(tiny_tokenizer):
    with pytest.raises(CalibrationError, match="fewer than one window"):
        eval_windows(tiny_tokenizer, "too short", seqlen=64, max_windows=None)
    with pytest.raises(CalibrationError, match="no tokenizer"):
        eval_windows(None, "text", seqlen=4, max_windows=None)
    with pytest.raises(CalibrationError, match="max_windows"):
        eval_windows(tiny_tokenizer, "text " * 100, seqlen=4, max_windows=0)


def test_eval_windows_on_wiki(tiny_tokenizer):
    windows = eval_windows(tiny_tokenizer, packaged_text("wiki"), seqlen=256, max_windows=4)
    assert windows.shape == (4, 256)
