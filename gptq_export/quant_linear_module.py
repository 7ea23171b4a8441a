"""`QuantLinear`: an nn.Module holding one packed Linear, and `swap_linears` to put them in a model.

    from gptq_export.quant_linear_module import swap_linears
    swap_linears(model, packed)          # packed: {module name: PackedLinear}, e.g. from gx.export
    model.to("cuda", torch.float16)      # then run / generate as usual

On CUDA tensors the forward runs the fused CUDA kernels (`gptq_export.kernels.torch_cuda`: the
packed weights are repacked once per device into the GPU tile layout, kept next to the module's
buffers); elsewhere, and under `torch.compile`, it runs the `gptq_export::quant_linear` op (its
CUDA implementation runs the same kernels; NumPy reference on the CPU).
The buffers are the packed `gptq` format (`gptq_export.kernels.reference`), so `state_dict()`
holds exactly the tensors of the exported ONNX initializers.
"""

from __future__ import annotations

import torch
from torch import nn

from .ops import quant_linear
from .pack import PackedLinear


class QuantLinear(nn.Module):
    """y = x @ W + bias with W stored packed (qweight, scales, qzeros, g_idx buffers)."""

    def __init__(self, packed: PackedLinear, bias: torch.Tensor | None = None):
        super().__init__()
        self.in_features = packed.in_features
        self.out_features = packed.out_features
        self.bits = packed.bits
        self.group_size = packed.group_size
        self.register_buffer("qweight", packed.qweight)
        self.register_buffer("scales", packed.scales)
        self.register_buffer("qzeros", packed.qzeros)
        self.register_buffer("g_idx", packed.g_idx)
        if bias is not None and bias.shape != (self.out_features,):
            raise ValueError(f"bias must have shape ({self.out_features},), got {tuple(bias.shape)}")
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self._gpu: dict = {}  # device -> (GpuLinear, float32 bias or None); rebuilt after .to()/.half()

    def _apply(self, fn, recurse=True):
        self._gpu = {}
        return super()._apply(fn, recurse)

    def gpu_layer(self, device: torch.device):
        """(GpuLinear, float32 bias) on `device`, built once."""
        hit = self._gpu.get(device)
        if hit is None:
            from .kernels.torch_cuda import gpu_linear

            layer = gpu_linear(self.qweight, self.scales, self.qzeros, self.g_idx, self.bits, self.in_features,
                               self.out_features, device)
            bias = None
            if self.bias is not None:
                bias = self.bias.detach().to(device=device, dtype=torch.float32).contiguous()
            hit = self._gpu[device] = (layer, bias)
        return hit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Under torch.compile the op (opaque to the compiler, same CUDA kernels) replaces the
        # direct call, which dynamo cannot trace.
        if x.is_cuda and not torch.compiler.is_compiling():
            from .kernels.torch_cuda import linear

            layer, bias = self.gpu_layer(x.device)
            return linear(x, layer, bias)
        bias = self.bias if self.bias is not None else x.new_zeros(0)
        return quant_linear(x, self.qweight, self.scales, self.qzeros, self.g_idx, bias, self.in_features,
                            self.out_features, self.bits, self.group_size)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, bias={self.bias is not None}")


def _linear_shape(module: nn.Module) -> tuple[int, int] | None:
    """(in, out) features of an nn.Linear or a transformers Conv1D (weight [in, out]); else None."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None:
        k, n = module.weight.shape
        return int(k), int(n)
    return None


def swap_linears(model: nn.Module, packed: dict[str, PackedLinear]) -> list[str]:
    """Replace each named Linear of `model` by a QuantLinear of its packed weights (in place).

    The new module takes the old one's device and its bias (dtype kept). Returns the names swapped,
    in order. Raises KeyError for a name that is not a submodule, TypeError for one that is not a
    Linear (nn.Linear or transformers' Conv1D) and ValueError for a shape mismatch.
    """
    done = []
    for name, p in packed.items():
        try:
            old = model.get_submodule(name)
        except AttributeError as exc:
            raise KeyError(f"model has no submodule {name!r}") from exc
        shape = _linear_shape(old)
        if shape is None:
            raise TypeError(f"{name} is a {type(old).__name__}, not a Linear")
        if shape != (p.in_features, p.out_features):
            raise ValueError(f"{name}: module is {shape[0]} -> {shape[1]}, packed weights are "
                             f"{p.in_features} -> {p.out_features}")
        device = next((t.device for t in old.parameters(recurse=False)), torch.device("cpu"))
        new = QuantLinear(p, old.bias.detach() if getattr(old, "bias", None) is not None else None).to(device)
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, new)
        done.append(name)
    return done
