"""onnxruntime-genai folders: `-o DIR` writes model.onnx (+ external data), genai_config.json and the
tokenizer files, so `onnxruntime_genai.Model(DIR)` loads the export unchanged.

    KV-cache decoder (ONNX) + HF config + tokenizer -> DIR/{model.onnx, genai_config.json, tokenizer.json, ...}

The graph concatenates past and new keys (it never writes into a preallocated cache), so
`past_present_share_buffer` is false. The folder is built beside the target and renamed into place;
a folder from an earlier export (it has a genai_config.json) is replaced, any other non-empty
folder is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import onnx_ir as ir

from .errors import ExportError
from .passes.trace import KVLayout

MODEL_FILE = "model.onnx"
CONFIG_FILE = "genai_config.json"
#: Model types onnxruntime-genai 0.18 knows by name with our I/O; others (gpt2, opt...) use its generic type
#: (its `gpt2` type expects other inputs).
GENAI_TYPES = frozenset({"llama", "mistral", "qwen2", "phi3", "gemma", "gemma2", "granite", "olmo",
                         "nemotron", "smollm3", "chatglm"})
GENERIC_TYPE = "decoder"


def is_folder_output(output: str | os.PathLike) -> bool:
    """True when `output` names a folder (anything not ending in .onnx)."""
    return Path(output).suffix != ".onnx"


def check_folder_output(folder: str | os.PathLike) -> None:
    """Fail early (before any long work) if `folder` cannot receive a genai folder; creates nothing."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ExportError(f"output {folder} is a file; give a new folder name or a name ending in .onnx")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / CONFIG_FILE).is_file():
        raise ExportError(f"output folder {folder} is not empty and holds no earlier export; "
                          "choose a new folder or empty it")
    ancestor = folder.parent.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK):
        raise ExportError(f"cannot write to {ancestor}; choose a writable -o")


def _first_int(value: Any) -> int | None:
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return int(value) if value is not None else None


def token_ids(model: Any) -> dict[str, int | list[int] | None]:
    """bos / eos / pad ids, preferring the generation config (instruct models end turns there)."""
    cfg = model.config
    gen = getattr(model, "generation_config", None)

    def pick(name: str):
        value = getattr(gen, name, None) if gen is not None else None
        return value if value is not None else getattr(cfg, name, None)

    eos = pick("eos_token_id")
    pad = pick("pad_token_id")
    return {"bos_token_id": _first_int(pick("bos_token_id")), "eos_token_id": eos,
            "pad_token_id": _first_int(pad) if pad is not None else _first_int(eos)}


def genai_config(model: Any, kv: KVLayout, context_length: int) -> dict:
    """genai_config.json for the KV-cache decoder in MODEL_FILE (greedy search by default)."""
    cfg = model.config
    model_type = getattr(cfg, "model_type", "") or ""
    ids = token_ids(model)
    decoder = {
        "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
        "filename": MODEL_FILE,
        "head_size": kv.head_dim,
        "hidden_size": int(cfg.hidden_size),
        "num_attention_heads": int(cfg.num_attention_heads),
        "num_hidden_layers": kv.num_layers,
        "num_key_value_heads": kv.kv_heads,
        "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids",
                   "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
        "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value"},
    }
    return {
        "model": {
            **{k: v for k, v in ids.items() if v is not None},
            "context_length": context_length,
            "decoder": decoder,
            "type": model_type if model_type in GENAI_TYPES else GENERIC_TYPE,
            "vocab_size": int(cfg.vocab_size),
        },
        "search": {
            "diversity_penalty": 0.0, "do_sample": False, "early_stopping": True, "length_penalty": 1.0,
            "max_length": context_length, "min_length": 0, "no_repeat_ngram_size": 0, "num_beams": 1,
            "num_return_sequences": 1, "past_present_share_buffer": False, "repetition_penalty": 1.0,
            "temperature": 1.0, "top_k": 1, "top_p": 1.0,
        },
    }


def write_folder(onnx_model: ir.Model, folder: str | os.PathLike, config: dict, tokenizer: Any | None) -> Path:
    """Write MODEL_FILE, CONFIG_FILE and the tokenizer files into `folder` (atomically, see module doc)."""
    from .emit import save_model

    folder = Path(folder)
    check_folder_output(folder)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    except OSError as exc:
        raise ExportError(f"cannot write to {folder.parent}: {exc.strerror}; choose a writable -o") from exc
    old = None
    try:
        save_model(onnx_model, tmp / MODEL_FILE)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        os.chmod(tmp, 0o755)
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            os.replace(folder, old)
        os.replace(tmp, folder)
    except OSError as exc:
        if old is not None and not folder.exists():
            os.replace(old, folder)
            old = None
        raise ExportError(f"cannot write {folder}: {exc.strerror}; choose a writable -o") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return folder
