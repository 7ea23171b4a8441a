"""PyTorch front end of the CUDA kernels: the CUDA implementation of `gptq_export::quant_linear`
and of `QuantLinear.forward`.

Tensors cross to CuPy without copies through DLPack, kernels run on PyTorch's current stream (so
they order with PyTorch's own work and can be captured in CUDA graphs), and every buffer a call
needs (output, prefill scratch) is allocated by PyTorch's caching allocator. The GPU tile layout
of a layer is built once (repack on the GPU) and cached by the identity of its packed tensors.
"""

from __future__ import annotations

import os
import threading
import weakref

import numpy as np
import torch

from . import cuda as kc
from . import cuda_fused as kf

_lock = threading.Lock()
_layers: dict[int, tuple[weakref.ref, tuple, kc.GpuLinear]] = {}
_streams: dict[tuple[int, int], object] = {}
#: Environment switch of `linear`'s direct launch of the one-token kernel ("0": off, the general
#: path through DLPack views and a CuPy context; read per call). On by default: 1.77x the eager
#: decode speed on an H100 (docs/gpu-results.md, twelfth session).
DIRECT_ENV = "GPTQ_EXPORT_TORCH_DIRECT"
#: cudaStream_t of PyTorch's current stream on a device, without building a torch.cuda.Stream
#: (what Inductor's generated code calls); None in CPU-only builds of PyTorch.
_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)


def to_cupy(t: torch.Tensor, device: torch.device | None = None):
    """Zero-copy CuPy view of a CUDA tensor (DLPack); a CPU tensor is uploaded to `device`."""
    import cupy

    t = t.detach()
    if t.is_cuda:
        return cupy.from_dlpack(t)
    if device is None or device.type != "cuda":
        raise ValueError("a CPU tensor needs a CUDA device to be uploaded to")
    with cupy.cuda.Device(device.index or 0):
        return cupy.asarray(t.contiguous().numpy())


def _stream(index: int):
    """PyTorch's current stream on device `index`, as a CuPy stream (made once per stream)."""
    import cupy

    ptr = _raw_stream(index) if _raw_stream is not None else torch.cuda.current_stream(index).cuda_stream
    stream = _streams.get((index, ptr))
    if stream is None:
        stream = _streams[(index, ptr)] = cupy.cuda.ExternalStream(ptr, index)
    return stream


class _On:
    """Context: CuPy's current device and stream = PyTorch's for `device`."""

    def __init__(self, device: torch.device):
        import cupy

        self.index = device.index if device.index is not None else torch.cuda.current_device()
        self.device = cupy.cuda.Device(self.index)
        self.stream = _stream(self.index)

    def __enter__(self):
        self.device.__enter__()
        self.stream.__enter__()
        return self

    def __exit__(self, *exc):
        self.stream.__exit__(*exc)
        self.device.__exit__(*exc)


def _signature(*tensors: torch.Tensor) -> tuple:
    return tuple((t.data_ptr(), t._version, t.shape, t.dtype, t.device) for t in tensors)


def gpu_linear(qweight: torch.Tensor, scales: torch.Tensor, qzeros: torch.Tensor, g_idx: torch.Tensor, bits: int,
               in_features: int, out_features: int, device: torch.device) -> kc.GpuLinear:
    """The layer's GPU tile layout on `device`, built on first use (cached while `qweight` lives
    and none of the four tensors changed)."""
    sig = (_signature(qweight, scales, qzeros, g_idx), bits, in_features, out_features, device)
    key = id(qweight)
    hit = _layers.get(key)
    if hit is not None and hit[0]() is qweight and hit[1] == sig:
        return hit[2]
    with _On(device):
        layer = kc.GpuLinear.from_packed(
            to_cupy(qweight, device), to_cupy(scales.float(), device), to_cupy(qzeros, device),
            g_idx.detach().cpu().numpy(), bits, in_features, out_features,
        )

    def _drop(ref, key=key):
        with _lock:
            entry = _layers.get(key)
            if entry is not None and entry[0] is ref:
                del _layers[key]

    with _lock:
        _layers[key] = (weakref.ref(qweight, _drop), sig, layer)
    return layer


def linear(x: torch.Tensor, layer: kc.GpuLinear, bias: torch.Tensor | None = None, path: str = "auto") -> torch.Tensor:
    """y[..., N] = x[..., K] @ W + bias for a CUDA tensor x (fp16, fp32; bf16 through fp16).

    bias: CUDA float32 [N] or None. path: "auto", "fused", "mma", "wgmma" or "dequant" (see kernels.cuda).
    The prefill path ("dequant", auto for large M: kernels.cuda.auto_path) writes W^T in fp16 (K'
    order) to a scratch tensor and multiplies with PyTorch (cuBLAS).
    """
    lay = layer.layout
    K, N = lay.K, lay.N
    if x.shape[-1] != K:
        raise ValueError(f"x must be [..., {K}], got {tuple(x.shape)}")
    out_dtype = x.dtype
    xc = x if x.dtype in (torch.float16, torch.float32) else x.to(torch.float16)
    x2 = xc if xc.dim() == 2 else xc.reshape(-1, K)
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    M = x2.shape[0]
    if M == 0:
        return x.new_empty((*x.shape[:-1], N))
    if path == "auto":
        path = kc.auto_path(layer, M)
    if path == "fused" and os.environ.get(DIRECT_ENV) != "0":
        y = _direct(x2, layer, bias, M)
        if y is not None:
            return _output(y, x, out_dtype)
    with _On(x.device):
        xc2 = to_cupy(x2)
        if path == "dequant":
            wt = torch.empty((N, lay.Kp), dtype=torch.float16, device=x.device)  # K' order
            kc.dequantize(layer, out=to_cupy(wt))
            if kc.x_in_place(layer, xc2):
                y = torch.nn.functional.linear(x2, wt[:, :K])
            else:
                xg = torch.empty((M, lay.Kp), dtype=torch.float16, device=x.device)
                kc.gather_x(layer, xc2, to_cupy(xg))
                y = torch.nn.functional.linear(xg, wt)
            if bias is not None:
                y = y.float().add_(bias) if out_dtype == torch.float32 else y.add_(bias.to(y.dtype))
        else:
            y = torch.empty((M, N), dtype=x2.dtype, device=x.device)
            xbuf = ws = None
            if path == "wgmma":  # x prepared in the kernel's order (kernels.cuda_wgmma.prep)
                from . import cuda_wgmma

                xbuf = to_cupy(torch.empty(cuda_wgmma.xbuf_size(layer, M), dtype=torch.float16, device=x.device))
            elif kc.prep_x_needed(layer, xc2):
                xbuf = to_cupy(torch.empty((M, lay.Kp), dtype=torch.float16, device=x.device))
            tile = split = None
            if path in ("mma", "wgmma"):  # buffers from PyTorch's allocator (CUDA graphs)
                from . import cuda_mma, cuda_wgmma

                tile, split = (cuda_mma if path == "mma" else cuda_wgmma).default_plan(layer, M)
                if path == "wgmma":  # split-K partials, or stream-K partial tiles
                    n_ws = cuda_wgmma.workspace_size(lay, M, tile, split)
                else:
                    n_ws = split * M * N if split > 1 else 0
                if n_ws:
                    ws = to_cupy(torch.empty(n_ws, dtype=torch.float32, device=x.device))
            elif path != "fused":
                raise ValueError(f"path must be 'auto', 'fused', 'mma', 'wgmma' or 'dequant', got {path!r}")
            kc.quant_matmul(xc2, layer, to_cupy(bias) if bias is not None else None, to_cupy(y), path=path,
                            xbuf=xbuf, tile=tile, split=split, ws=ws)
    return _output(y, x, out_dtype)


def _output(y: torch.Tensor, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """y [M, N] as `linear`'s result for x: of `dtype`, shaped [..., N] like x (no op where it is)."""
    if y.dtype != dtype:
        y = y.to(dtype)
    return y if x.dim() == 2 else y.reshape(*x.shape[:-1], y.shape[-1])


def _direct(x2: torch.Tensor, layer: kc.GpuLinear, bias: torch.Tensor | None, M: int) -> torch.Tensor | None:
    """y = x2 @ W + bias through the one-token kernel (and prep_x first where x must be gathered
    or cast) launched straight from the tensors: device pointers on PyTorch's current stream, no
    DLPack views, no CuPy device / stream context, the launch plan cached on the layer. x2 [M, K]
    fp16 or fp32, contiguous, on CuPy's current device; bias (if any) a contiguous fp32 [N]; else
    None (the general path)."""
    import cupy

    lay = layer.layout
    index = x2.device.index if x2.device.index is not None else torch.cuda.current_device()
    if (x2.dtype not in (torch.float16, torch.float32) or cupy.cuda.runtime.getDevice() != index
            or (bias is not None and (bias.dtype != torch.float32 or not bias.is_contiguous()))):
        return None
    f32, aligned = x2.dtype == torch.float32, x2.data_ptr() % 16 == 0
    plan = kf.fused_plan(layer, M, f32, aligned, device=index)
    stream = _stream(index)
    xin = np.uint64(x2.data_ptr())
    if plan.prep:  # x in K' order, fp16, first (as quant_matmul does)
        xg = torch.empty((M, lay.Kp), dtype=torch.float16, device=x2.device)
        kf.launch_prep(layer, M, xin, f32, np.uint64(xg.data_ptr()), stream=stream)
        xin = np.uint64(xg.data_ptr())
    y = torch.empty((M, lay.N), dtype=x2.dtype, device=x2.device)
    kf.launch_fused(layer, plan, xin, None if bias is None else np.uint64(bias.data_ptr()),
                    np.uint64(y.data_ptr()), out_f32=f32, stream=stream)
    return y


def quant_linear_cuda(x, qweight, scales, qzeros, g_idx, bias, in_features, out_features, bits, group_size=None):
    """CUDA implementation of gptq_export::quant_linear (arguments as the op; bias of size 0 = none)."""
    layer = gpu_linear(qweight, scales, qzeros, g_idx, bits, in_features, out_features, x.device)
    b = None
    if bias is not None and bias.numel():
        b = bias.detach().to(device=x.device, dtype=torch.float32).contiguous()
    return linear(x, layer, b)
