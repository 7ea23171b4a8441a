"""gptq_export.decode: sampling rules, eos handling and the errors of the generation loop."""

from __future__ import annotations

import numpy as np
import pytest

import gptq_export as gx
from gptq_export.decode import Decoder, Sampling
from gptq_export.errors import RuntimeSetupError


def test_greedy_is_argmax():
    logits = np.random.default_rng(0).normal(size=(3, 50))
    np.testing.assert_array_equal(Sampling().pick(logits, np.random.default_rng(0)), logits.argmax(-1))


def test_top_k_only_draws_from_the_k_best():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(1, 40))
    best = set(np.argsort(-logits[0])[:3].tolist())
    s = Sampling(do_sample=True, top_k=3, seed=0)
    draws = {int(s.pick(logits, rng)[0]) for _ in range(300)}
    assert draws <= best and len(draws) > 1


def test_top_p_keeps_the_smallest_nucleus():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    rng = np.random.default_rng(2)
    s = Sampling(do_sample=True, top_p=0.7)
    draws = np.array([int(s.pick(logits, rng)[0]) for _ in range(2000)])
    assert set(draws.tolist()) == {0, 1}  # 0.5 < 0.7 needs the second token; 0.8 >= 0.7 stops there
    assert abs((draws == 0).mean() - 0.5 / 0.8) < 0.05


def test_temperature_sampling_matches_softmax():
    logits = np.array([[2.0, 1.0, 0.0]])
    rng = np.random.default_rng(3)
    s = Sampling(do_sample=True, temperature=2.0)
    draws = np.array([int(s.pick(logits, rng)[0]) for _ in range(6000)])
    p = np.exp(logits[0] / 2) / np.exp(logits[0] / 2).sum()
    np.testing.assert_allclose(np.bincount(draws, minlength=3) / len(draws), p, atol=0.03)


@pytest.mark.parametrize("kwargs", [{"temperature": 0.0}, {"top_k": -1}, {"top_p": 0.0}, {"top_p": 1.5}])
def test_bad_sampling_settings(kwargs):
    with pytest.raises(ValueError):
        Sampling(do_sample=True, **kwargs)


@pytest.fixture(scope="module")
def decoder_file(tmp_path_factory):
    from test_genai import varied_model

    model = varied_model("llama", 120)
    path = gx.export_float(model, tmp_path_factory.mktemp("decode") / "fp.onnx", kv_cache=True)
    return model, path


def test_sampled_generation_is_seeded_and_streams(decoder_file):
    _, path = decoder_file
    dec = Decoder(path)
    prompt = np.array([[5, 6, 7]])
    seen: list[int] = []
    a = gx.generate(dec, prompt, 10, Sampling(do_sample=True, top_k=20, seed=7), on_token=seen.append)
    b = gx.generate(dec, prompt, 10, Sampling(do_sample=True, top_k=20, seed=7))
    np.testing.assert_array_equal(a, b)
    assert seen == a[0].tolist()


def test_eos_stops_generation(decoder_file):
    model, path = decoder_file
    prompt = np.array([[5, 6, 7]])
    greedy = gx.generate(path, prompt, 8)[0]
    eos = int(greedy[2])
    stopped = gx.generate(path, prompt, 8, eos_token_id=eos)[0]
    first = greedy.tolist().index(eos)
    np.testing.assert_array_equal(stopped, greedy[: first + 1])


def test_prompt_batch_rows_are_independent(decoder_file):
    _, path = decoder_file
    prompts = np.array([[5, 6, 7], [9, 3, 1]])
    both = gx.generate(path, prompts, 6)
    for row in range(2):
        np.testing.assert_array_equal(both[row], gx.generate(path, prompts[row:row + 1], 6)[0])


def test_errors(decoder_file, tmp_path):
    _, path = decoder_file
    with pytest.raises(ValueError, match="prompt is empty"):
        gx.generate(path, np.zeros((1, 0), np.int64), 4)
    with pytest.raises(RuntimeSetupError, match="does not exist"):
        Decoder(tmp_path / "missing")
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(RuntimeSetupError, match="not a readable ONNX model"):
        Decoder(tmp_path / "junk.onnx")



def test_a_file_without_kv_cache_is_refused(decoder_file, tmp_path):
    model, _ = decoder_file
    plain = gx.export_float(model, tmp_path / "plain.onnx")
    with pytest.raises(RuntimeSetupError, match="not a KV-cache decoder"):
        Decoder(plain)
