"""Our keys in an ONNX model's metadata_props: `gptq_export.<name>` = JSON (or a plain string).

Light on purpose (json only): the inspector reads metadata without importing torch.
"""

from __future__ import annotations

import json
from typing import Any

META_PREFIX = "gptq_export."


def encode_metadata(metadata: dict[str, object]) -> dict[str, str]:
    """{name: value} -> {prefixed key: value, JSON-encoded unless a string}."""
    return {META_PREFIX + k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}


def read_metadata(model: Any) -> dict[str, object]:
    """Our metadata_props of an onnx.ModelProto, JSON-decoded, without the key prefix. A value that is
    not valid JSON (or nests too deeply to decode) is returned as the raw string."""
    out: dict[str, object] = {}
    for prop in model.metadata_props:
        if prop.key.startswith(META_PREFIX):
            key = prop.key[len(META_PREFIX):]
            try:
                out[key] = json.loads(prop.value)
            except (json.JSONDecodeError, RecursionError):
                out[key] = prop.value
    return out
