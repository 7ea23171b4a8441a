"""QuantConfig: per-layer code widths (layer_bits) and how they interact with skip and formats."""

from __future__ import annotations

import pytest

from gptq_export.config import Format, QuantConfig
from gptq_export.errors import ConfigError


def test_layer_bits_first_match_wins_and_overrides_skip():
    cfg = QuantConfig(bits=4, layer_bits=(("lm_head", 8), ("*.down_proj", 2), ("*", 3)))
    assert cfg.for_layer("lm_head").bits == 8
    assert cfg.for_layer("model.layers.0.mlp.down_proj").bits == 2
    assert cfg.for_layer("model.layers.0.mlp.up_proj").bits == 3  # the catch-all comes last
    assert cfg.overrides_skip("lm_head") and cfg.all_bits() == (2, 3, 4, 8)
    plain = QuantConfig(bits=4)
    assert plain.for_layer("lm_head") is plain and not plain.overrides_skip("lm_head")
    assert cfg.for_layer("lm_head").layer_bits == cfg.layer_bits  # the rest of the settings is kept


def test_layer_bits_decide_the_format():
    assert QuantConfig(bits=4, layer_bits=(("lm_head", 8),)).resolved_format() is Format.ORT
    assert QuantConfig(bits=4, layer_bits=(("lm_head", 3),)).resolved_format() is Format.GPTQ
    with pytest.raises(ConfigError, match="--format qdq cannot hold 2-bit weights"):
        QuantConfig(bits=4, format="qdq", layer_bits=(("*.down_proj", 2),))


@pytest.mark.parametrize("bad", [(("lm_head", 5),), (("", 8),), (("lm_head",),), ("lm_head",), ((3, 8),),
                                 (("lm_head", True),)])
def test_bad_layer_bits(bad):
    with pytest.raises(ConfigError, match="layer_bits"):
        QuantConfig(layer_bits=bad)


def test_to_dict_is_json_ready():
    d = QuantConfig(layer_bits=[("lm_head", 8)]).to_dict()
    assert d["layer_bits"] == [["lm_head", 8]] and d["skip"] == ["lm_head", "*.lm_head"]
