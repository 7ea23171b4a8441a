"""Configuration: one frozen dataclass per concern, validated on construction.

`QuantConfig` says how weights are quantized; `CalibConfig` says which tokens are used to
observe activations. Defaults live here only: the CLI reads them from these classes.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass
from enum import Enum

from .errors import ConfigError

#: ONNX domain (and torch library namespace) of our custom operators.
DOMAIN = "gptq_export"

SUPPORTED_BITS = (2, 3, 4, 8)
ACCURACY_LEVELS = (0, 1, 2, 3, 4)


class Format(str, Enum):
    """How quantized Linears are written to ONNX."""

    ORT = "ort"  # stock onnxruntime: com.microsoft.MatMulNBits (bits 2, 4, 8)
    QDQ = "qdq"  # standard ONNX: blocked DequantizeLinear (int4/uint4, int8/uint8) + MatMul (bits 4, 8)
    GPTQ = "gptq"  # our custom-domain op `gptq_export::QuantLinear` (packed int32 bitstream, any bits)

    def __str__(self) -> str:
        return self.value


#: Code widths each format can hold.
FORMAT_BITS = {Format.ORT: (2, 4, 8), Format.QDQ: (4, 8), Format.GPTQ: SUPPORTED_BITS}
#: Smallest block of the stock formats; a group size must be a multiple of it (or -1) to be exact.
MIN_BLOCK = 16


class Method(str, Enum):
    """How the quantized weights are chosen on the grid."""

    GPTQ = "gptq"  # Frantar et al. 2023, Algorithm 1, with the sequential scheme
    RTN = "rtn"  # round-to-nearest on the same grid (baseline)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class QuantConfig:
    """Weight quantization settings, shared by every pass.

    bits: code width (2, 3, 4 or 8).
    group_size: columns of K that share one scale/zero; -1 means one group per output row.
    sym: symmetric grid (zero fixed at 2^(bits-1)) instead of asymmetric min-max.
    act_order: process columns by descending Hessian diagonal (GPTQ "desc_act").
    static_groups: compute every group's scale/zero from the original W before GPTQ runs,
        so act-order keeps contiguous groups (g_idx = k // group_size).
    percdamp: dampening, as a fraction of the mean Hessian diagonal.
    block_size: columns per lazy-batch block of Algorithm 1.
    method: GPTQ or RTN (round to nearest, same grid).
    format: ONNX representation of quantized Linears; None (auto) = ort where it can hold the
        settings (bits 2/4/8, group size a multiple of 16 or -1), else gptq. See `resolved_format`.
    accuracy_level: MatMulNBits compute type of the ort format: 4 = int8 activations (measured
        faster on CPU, about 5e-3 relative error), 0 = exact (fp32, as the stored weights say);
        1 fp32, 2 fp16, 3 bf16 as in onnxruntime.
    skip: fnmatch patterns of module names left in float (lm_head by default).
    layer_bits: (pattern, bits) pairs: Linears whose name matches a pattern (first match wins) use
        that code width instead of `bits`, and are quantized even when `skip` matches them
        (e.g. (("lm_head", 8),) for an 8-bit head next to 4-bit layers).
    """

    bits: int = 4
    group_size: int = 128
    sym: bool = False
    act_order: bool = True
    static_groups: bool = False
    percdamp: float = 0.01
    block_size: int = 128
    method: Method = Method.GPTQ
    format: Format | None = None
    accuracy_level: int = 4
    skip: tuple[str, ...] = ("lm_head", "*.lm_head")
    layer_bits: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        if self.bits not in SUPPORTED_BITS:
            raise ConfigError(
                f"bits={self.bits} is not supported; choose one of {', '.join(map(str, SUPPORTED_BITS))}"
            )
        if self.group_size != -1 and (self.group_size < 1 or isinstance(self.group_size, bool)):
            raise ConfigError(f"group_size={self.group_size} is invalid; use a positive size or -1 (per channel)")
        if not 0.0 < self.percdamp < 10.0:
            raise ConfigError(f"percdamp={self.percdamp} is invalid; use a small positive fraction such as 0.01")
        if self.block_size < 1:
            raise ConfigError(f"block_size={self.block_size} is invalid; use a positive size such as 128")
        if self.static_groups and self.group_size == -1:
            raise ConfigError("--static-groups needs a group size; set --group-size (e.g. 128)")
        # Accept plain strings for the enums (API users), but store the enum.
        try:
            object.__setattr__(self, "method", Method(self.method))
        except ValueError:
            raise ConfigError(f"method={self.method!r} is unknown; choose one of {[m.value for m in Method]}") from None
        if self.format is not None:
            try:
                object.__setattr__(self, "format", Format(self.format))
            except ValueError:
                raise ConfigError(
                    f"format={self.format!r} is unknown; choose one of {[f.value for f in Format]}"
                ) from None
        if isinstance(self.accuracy_level, bool) or self.accuracy_level not in ACCURACY_LEVELS:
            raise ConfigError(
                f"accuracy_level={self.accuracy_level!r} is invalid; choose 0 (exact) to 4 (int8 activations)"
            )
        object.__setattr__(self, "skip", tuple(self.skip))
        object.__setattr__(self, "layer_bits", self._checked_layer_bits())
        if self.format is not None:
            problem = self._unfit(self.format)
            if problem:
                fits = " or ".join(f"--format {f.value}" for f in Format if not self._unfit(f))
                raise ConfigError(f"--format {self.format.value} cannot hold {problem}; use {fits}")

    def _checked_layer_bits(self) -> tuple[tuple[str, int], ...]:
        pairs = []
        for item in self.layer_bits:
            try:
                pattern, bits = item
            except (TypeError, ValueError):
                raise ConfigError(f"layer_bits entry {item!r} is invalid; use (pattern, bits) pairs") from None
            if not isinstance(pattern, str) or not pattern:
                raise ConfigError(f"layer_bits pattern {pattern!r} is invalid; use a module-name pattern such as lm_head")
            if isinstance(bits, bool) or bits not in SUPPORTED_BITS:
                raise ConfigError(f"layer_bits {pattern}={bits} is not supported; choose one of "
                                  f"{', '.join(map(str, SUPPORTED_BITS))}")
            pairs.append((pattern, int(bits)))
        return tuple(pairs)

    def all_bits(self) -> tuple[int, ...]:
        """Every code width this config can write (bits and the layer_bits overrides)."""
        return tuple(sorted({self.bits, *(b for _, b in self.layer_bits)}))

    def _override(self, name: str) -> int | None:
        return next((b for pattern, b in self.layer_bits if fnmatch.fnmatchcase(name, pattern)), None)

    def overrides_skip(self, name: str) -> bool:
        """True when a layer_bits pattern names this layer (it is quantized even if skip matches)."""
        return self._override(name) is not None

    def for_layer(self, name: str) -> QuantConfig:
        """The settings of one Linear: `bits` replaced by its layer_bits override, if any."""
        bits = self._override(name)
        return self if bits is None or bits == self.bits else dataclasses.replace(self, bits=bits)

    def _unfit(self, fmt: Format) -> str | None:
        """Why `fmt` cannot represent these settings exactly (None when it can)."""
        bad = [b for b in self.all_bits() if b not in FORMAT_BITS[fmt]]
        if bad:
            return f"{bad[0]}-bit weights"
        if fmt is not Format.GPTQ and self.group_size != -1 and self.group_size % MIN_BLOCK:
            return f"group size {self.group_size} (needs a multiple of {MIN_BLOCK} or -1)"
        return None

    def resolved_format(self) -> Format:
        """The format an export writes: `format`, or for auto (None) ort where it fits, else gptq."""
        if self.format is not None:
            return self.format
        return Format.ORT if self._unfit(Format.ORT) is None else Format.GPTQ

    def groups_for(self, in_features: int) -> int:
        """Group size actually used for a layer with `in_features` inputs (per channel -> K)."""
        return in_features if self.group_size == -1 else self.group_size

    def check_layer(self, name: str, in_features: int) -> None:
        """Raise ConfigError when the group size cannot tile this layer's K.

        A group size must divide K, except the standard power-of-two sizes (>= 16), where the
        last group of a row may be shorter (as in MatMulNBits): 128 on K=576 gives 4 full
        groups and one of 64.
        """
        g = self.group_size
        if g == -1 or in_features % g == 0:
            return
        if g >= 16 and g & (g - 1) == 0:
            return
        raise ConfigError(
            f"group size {g} does not divide K={in_features} of layer {name}; choose a divisor of "
            f"{in_features}, a power of two >= 16 (last group may be partial), or -1 (per channel)"
        )

    def to_dict(self) -> dict:
        """JSON-able settings (enums as strings, format None = auto)."""
        d = dataclasses.asdict(self)
        d["method"] = self.method.value
        d["format"] = self.format.value if self.format is not None else None
        d["skip"] = list(self.skip)
        d["layer_bits"] = [list(pair) for pair in self.layer_bits]
        return d


@dataclass(frozen=True)
class CalibConfig:
    """Calibration token windows.

    text: path of a UTF-8 text file; None means the packaged C4 sample.
    nsamples x seqlen: random windows drawn with `seed`; seqlen is capped by the model's context.
    The paper uses 128 x 2048; the CPU defaults (32 x 512) keep a 135M model under five minutes.
    """

    text: str | None = None
    nsamples: int = 32
    seqlen: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        if self.nsamples < 1:
            raise ConfigError(f"nsamples={self.nsamples} is invalid; use at least 1 (the paper uses 128)")
        if self.seqlen < 2:
            raise ConfigError(f"seqlen={self.seqlen} is invalid; use at least 2 tokens (the paper uses 2048)")
