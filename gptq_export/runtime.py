"""Run exported models in onnxruntime, with our custom-domain op registered.

`gptq_export.QuantLinear` runs as an onnxruntime-extensions Python custom op (CPU execution
provider). The op forwards to a per-device kernel from a small registry: "cpu" is the vectorised
NumPy reference, which caches dequantized weights (keyed by a hash of the packed tensors) so a
layer is unpacked once per process, not once per call; other devices plug in with
`register_kernel`. onnxruntime-extensions copies every input and output through Python, so this
path is functional, not fast: see README for measured overheads.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import DOMAIN
from .emit import OP_TYPE
from .errors import RuntimeSetupError
from .kernels.reference import dequantize

#: kernel(x, qweight, scales, qzeros, g_idx, bias, K, N, bits, group_size) -> y   (NumPy in and out)
Kernel = Callable[..., np.ndarray]


class DequantCache:
    """LRU cache of dequantized [K, N] float32 weights, bounded in bytes."""

    def __init__(self, max_bytes: int = 4 << 30):
        self.max_bytes = max_bytes
        self._items: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @staticmethod
    def key(*arrays: np.ndarray) -> bytes:
        h = hashlib.blake2b(digest_size=16)
        for a in arrays:
            h.update(str(a.shape).encode())
            h.update(np.ascontiguousarray(a).data)
        return h.digest()

    def get_or_make(self, key: bytes, make: Callable[[], np.ndarray]) -> np.ndarray:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()
        with self._lock:
            if key not in self._items and value.nbytes <= self.max_bytes:
                self._items[key] = value
                self._bytes += value.nbytes
                while self._bytes > self.max_bytes:
                    _, old = self._items.popitem(last=False)
                    self._bytes -= old.nbytes
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


@dataclass
class KernelRegistry:
    """Which implementation the custom op runs; process-wide, like onnxruntime's op registry."""

    kernels: dict[str, Kernel] = field(default_factory=dict)
    device: str = "cpu"

    def register(self, device: str, kernel: Kernel) -> None:
        self.kernels[device] = kernel

    def select(self, device: str) -> None:
        if device not in self.kernels:
            raise RuntimeSetupError(
                f"no QuantLinear kernel for device '{device}'; available: {', '.join(sorted(self.kernels))}"
            )
        self.device = device

    def __call__(self, *args, **attrs) -> np.ndarray:
        return self.kernels[self.device](*args, **attrs)


_cache = DequantCache()


def cpu_kernel(x, qweight, scales, qzeros, g_idx, bias, K, N, bits, group_size) -> np.ndarray:
    """NumPy implementation: cached dequantize (reference layout) then one matmul."""
    K, N, bits = int(K), int(N), int(bits)
    key = DequantCache.key(qweight, scales, qzeros, g_idx)
    w = _cache.get_or_make(key, lambda: dequantize(qweight, scales, qzeros, g_idx, bits, K, N, np.float32))
    y = np.asarray(x, dtype=np.float32) @ w
    if bias.size:
        y += bias
    return y


registry = KernelRegistry()
registry.register("cpu", cpu_kernel)
_registered = False


#: GPU tile layouts of the packed weights (CuPy), keyed like `_cache`: uploaded once per process.
_gpu_cache = DequantCache(max_bytes=16 << 30)


def cuda_kernel(x, qweight, scales, qzeros, g_idx, bias, K, N, bits, group_size) -> np.ndarray:
    """CUDA implementation (CuPy): the layer is uploaded and repacked once (cached by content, as
    the CPU kernel), x goes to the GPU and y back on every call; fp32 in and out."""
    import cupy as cp

    from .kernels import cuda as kc

    K, N, bits = int(K), int(N), int(bits)
    key = DequantCache.key(qweight, scales, qzeros, g_idx)
    layer = _gpu_cache.get_or_make(key, lambda: kc.GpuLinear.from_packed(qweight, scales, qzeros, g_idx, bits, K, N))
    b = cp.asarray(np.asarray(bias, dtype=np.float32)) if bias.size else None
    y = kc.quant_matmul(cp.asarray(np.asarray(x, dtype=np.float32)), layer, b)
    return cp.asnumpy(y)


def _register_cuda_kernel() -> None:
    """Register the "cuda" kernel on first use, when CuPy and a CUDA device are there."""
    if "cuda" in registry.kernels:
        return
    from .kernels.cuda import cuda_available

    reason = cuda_available()
    if reason:
        raise RuntimeSetupError(f"device 'cuda' is not available: {reason}")
    registry.register("cuda", cuda_kernel)


def register_kernel(device: str, kernel: Kernel) -> None:
    """Plug in a device implementation of QuantLinear (same arguments as `cpu_kernel`)."""
    registry.register(device, kernel)


def _register_custom_op() -> None:
    """Define gptq_export::QuantLinear for onnxruntime-extensions (once per process)."""
    global _registered
    if _registered:
        return
    try:
        from onnxruntime_extensions import PyCustomOpDef, onnx_op
    except ImportError as exc:
        raise RuntimeSetupError(
            "onnxruntime-extensions is needed to run the gptq format; pip install onnxruntime-extensions"
        ) from exc
    f32, i32, i64 = PyCustomOpDef.dt_float, PyCustomOpDef.dt_int32, PyCustomOpDef.dt_int64

    @onnx_op(
        op_type=f"{DOMAIN}::{OP_TYPE}",
        inputs=[f32, i32, f32, i32, i32, f32],
        outputs=[f32],
        attrs={"K": i64, "N": i64, "bits": i64, "group_size": i64},
    )
    def _quant_linear(x, qweight, scales, qzeros, g_idx, bias, **attrs):
        return registry(x, qweight, scales, qzeros, g_idx, bias, **attrs)

    _registered = True


def session_options(device: str = "cpu"):
    """onnxruntime SessionOptions with our custom-op library registered and `device` selected."""
    try:
        import onnxruntime as ort
        from onnxruntime_extensions import get_library_path
    except ImportError as exc:
        raise RuntimeSetupError(f"{exc.name} is not installed; pip install onnxruntime onnxruntime-extensions") from exc
    _register_custom_op()
    if device == "cuda":
        _register_cuda_kernel()
    registry.select(device)
    opts = ort.SessionOptions()
    opts.register_custom_ops_library(get_library_path())
    return opts


class InferenceSession:
    """onnxruntime.InferenceSession for any exported file, with our custom op available.

    >>> sess = InferenceSession("model.onnx")
    >>> logits = sess.run({"input_ids": ids})[0]
    """

    def __init__(self, path: str | Path, device: str = "cpu", intra_op_threads: int | None = None):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise RuntimeSetupError(f"model file {path} does not exist; export one with gptq-export first")
        opts = session_options(device)
        if intra_op_threads:
            opts.intra_op_num_threads = intra_op_threads
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise RuntimeSetupError(f"onnxruntime cannot load {path}: {str(exc).splitlines()[0][:300]}") from exc
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feed: dict[str, np.ndarray], output_names: Sequence[str] | None = None) -> list[np.ndarray]:
        return self.session.run(list(output_names) if output_names else None, feed)
