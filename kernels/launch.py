"""Kernel launches with programmatic dependent launch (PDL, sm_90+).

A kernel launched with the driver's programmatic-stream-serialization attribute may start while
the previous kernel of its stream is still running (once every block of that kernel has executed
`griddepcontrol.launch_dependents` or exited). It must execute `griddepcontrol.wait` before it
reads anything that kernel may write, or writes anything that kernel may read: `pdl_wait()` in
kernels/gptq_cuda.cu. The one-token kernels have twins written for it (`qgemm_small_pdl`,
`qgemm_split_pdl`; the plain ones have no such instructions): they issue their first weight
loads (weights are written only at load time, and a layer's first launch is a plain one, which
starts only once they are complete: `GpuLinear.pdl_ready`), then wait, then read x and write y;
and they let the next kernel launch at their start. Other kernels are launched as usual.

CuPy's kernel call takes no launch attributes, so these launches go through the driver's
`cuLaunchKernelEx` (ctypes, the library CuPy itself loads).

Off by default (`DEFAULT`: it gains only where one of our kernels follows another; measured on an
H100, docs/gpu-results.md, twelfth session). `GPTQ_EXPORT_PDL=1` in the environment turns it on
where supported (read at each launch, so a benchmark can compare both in one process);
`quant_matmul(..., pdl=True)` asks for it per call. tools/sass_pdl.py checks without a GPU that
the weight loads come before the wait and x's after it; tools/probe_pdl.py times it on one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
from typing import Any

import numpy as np

#: CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION (cuda.h, CUDA 12.0+).
_ATTR_PROGRAMMATIC_STREAM_SERIALIZATION = 6
#: Environment switch: "1" turns PDL on where supported, "0" off; unset: DEFAULT.
ENV = "GPTQ_EXPORT_PDL"
#: Whether launches that allow PDL use it when ENV is unset. Off: on an H100 it gained 1.03-1.31x
#: on CUDA-graph chains of our own matmuls but nothing in decoding, where each matmul follows a
#: PyTorch kernel that never triggers early (docs/gpu-results.md, twelfth session).
DEFAULT = False


class _Attr(ctypes.Structure):
    """CUlaunchAttribute: id, 4 bytes of padding, a 64-byte value union (first int used here)."""

    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", ctypes.c_int * 16)]


class _Config(ctypes.Structure):
    """CUlaunchConfig."""

    _fields_ = [
        ("gridDimX", ctypes.c_uint), ("gridDimY", ctypes.c_uint), ("gridDimZ", ctypes.c_uint),
        ("blockDimX", ctypes.c_uint), ("blockDimY", ctypes.c_uint), ("blockDimZ", ctypes.c_uint),
        ("sharedMemBytes", ctypes.c_uint), ("hStream", ctypes.c_void_p),
        ("attrs", ctypes.POINTER(_Attr)), ("numAttrs", ctypes.c_uint),
    ]


@functools.cache
def _driver() -> Any:
    """The driver's cuLaunchKernelEx (ctypes function), or None where the driver lacks it."""
    names = ("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1", ctypes.util.find_library("cuda"))
    for name in names:
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        fn = getattr(lib, "cuLaunchKernelEx", None)
        if fn is None:
            return None
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.POINTER(_Config), ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p]
        return fn
    return None


@functools.cache
def _pdl_attrs() -> Any:
    """The one launch attribute of a PDL launch (made once, kept alive by the cache)."""
    attr = _Attr(id=_ATTR_PROGRAMMATIC_STREAM_SERIALIZATION)
    attr.value[0] = 1
    return ctypes.pointer(attr)


@functools.cache
def _major(device: int) -> int:
    import cupy

    return int(cupy.cuda.runtime.getDeviceProperties(device)["major"])


def sm90() -> bool:
    """Whether the current CUDA device is sm_90 or newer (thread-block clusters, PDL)."""
    import cupy

    return _major(cupy.cuda.runtime.getDevice()) >= 9


def pdl_supported() -> bool:
    """Whether the current CUDA device can take PDL launches: sm_90+ with a driver that has
    cuLaunchKernelEx."""
    return sm90() and _driver() is not None


def pdl_default() -> bool:
    """Whether launches that allow PDL use it when the caller does not say: GPTQ_EXPORT_PDL
    ("1" / "0"; unset: DEFAULT), and only where `pdl_supported()`."""
    flag = os.environ.get(ENV)
    if not (DEFAULT if flag is None else flag == "1"):
        return False
    return pdl_supported()


def _c_arg(v: Any, cp: Any) -> ctypes._SimpleCData:
    """One kernel argument as the C value the kernel's parameter takes (as CuPy passes it)."""
    if isinstance(v, cp.ndarray):  # its device pointer
        return ctypes.c_void_p(v.data.ptr)
    if isinstance(v, np.int32):
        return ctypes.c_int32(int(v))
    if isinstance(v, np.uint64):
        return ctypes.c_uint64(int(v))
    if isinstance(v, np.float32):
        return ctypes.c_float(float(v))
    raise TypeError(f"kernel argument of type {type(v).__name__}: pass a CuPy array, np.int32, np.uint64 or np.float32")


def launch(fn: Any, grid: tuple[int, ...], block: tuple[int, ...], args: tuple, shared_mem: int = 0, *,
           pdl: bool = False, stream: Any = None) -> None:
    """Launch the CuPy kernel `fn` (a RawKernel) on `stream` (a CuPy stream; None: the current
    one), as `fn(grid, block, args, shared_mem=..., stream=...)` does; with `pdl`, through
    cuLaunchKernelEx with programmatic stream serialization (the kernel must call pdl_wait()
    before touching the previous kernel's data). args: CuPy arrays (passed as device pointers),
    np.int32, np.uint64 (also device pointers) or np.float32 values."""
    if not pdl:
        fn(grid, block, args, shared_mem=shared_mem, stream=stream)
        return
    import cupy

    g = (tuple(grid) + (1, 1))[:3]
    b = (tuple(block) + (1, 1))[:3]
    cfg = _Config(g[0], g[1], g[2], b[0], b[1], b[2], shared_mem,
                  (stream if stream is not None else cupy.cuda.get_current_stream()).ptr, _pdl_attrs(), 1)
    values = [_c_arg(a, cupy) for a in args]
    params = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])
    ensure_context = getattr(cupy.cuda.runtime, "_ensure_context", None)  # as CuPy's own launches
    if ensure_context is not None:
        ensure_context()
    # a RawKernel (RawModule.get_function) holds its CUfunction in .kernel.ptr, a Function in .ptr
    status = _driver()(ctypes.byref(cfg), getattr(fn, "kernel", fn).ptr, params, None)
    if status != 0:
        raise cupy.cuda.driver.CUDADriverError(status)
