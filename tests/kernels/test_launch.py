"""Launches with programmatic dependent launch (kernels/launch.py): the driver structures (CPU),
and on a GPU that PDL launches give bitwise the results of ordinary ones, alone, in chains of
dependent matmuls (each reading the previous one's output) and in a captured CUDA graph."""

from __future__ import annotations

import ctypes
import sys

import numpy as np
import pytest
import test_cuda
from test_cuda import fresh_seed, gpu_case, random_layer, rel_err

from gptq_export.kernels import cuda as kc
from gptq_export.kernels import launch as kl


def test_driver_structures_match_cuda_h():
    # CUlaunchAttribute: 4-byte id, 4 bytes of padding, a 64-byte union; CUlaunchConfig: seven
    # unsigned ints, then the stream handle and the attribute pointer (8-byte aligned), the count.
    assert ctypes.sizeof(kl._Attr) == 72
    assert kl._Attr.value.offset == 8
    assert [getattr(kl._Config, f).offset for f in ("sharedMemBytes", "hStream", "attrs", "numAttrs")] == [24, 32, 40, 48]
    assert ctypes.sizeof(kl._Config) == 56
    attr = kl._pdl_attrs().contents  # CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION, allowed
    assert (attr.id, attr.value[0]) == (6, 1)


def test_kernel_arguments_convert_to_their_c_types():
    class FakeCupy:  # only the isinstance check of _c_arg
        class ndarray:
            class data:
                ptr = 0x7F00_0000_1000

    assert kl._c_arg(FakeCupy.ndarray(), FakeCupy).value == 0x7F00_0000_1000
    assert kl._c_arg(np.int32(-5), FakeCupy).value == -5
    assert kl._c_arg(np.uint64(2**40), FakeCupy).value == 2**40
    assert kl._c_arg(np.float32(0.5), FakeCupy).value == 0.5
    with pytest.raises(TypeError, match="np.int32"):
        kl._c_arg(3, FakeCupy)  # a Python int: its C width would be a guess


class _FakeCupy:
    """What launch() touches of CuPy: ndarray, the current stream, the driver error."""

    class ndarray:
        def __init__(self, ptr):
            self.data = type("Mem", (), {"ptr": ptr})()

    class cuda:
        class driver:
            class CUDADriverError(RuntimeError):
                pass

        class runtime:
            ensured = 0

            @classmethod
            def _ensure_context(cls):
                cls.ensured += 1

        @staticmethod
        def get_current_stream():
            return type("Stream", (), {"ptr": 0xBEEF})()


def test_pdl_launch_hands_the_driver_the_kernel_its_arguments_and_the_attribute(monkeypatch):
    calls = []

    def fake_launch(cfg_ref, func, params, extra):
        cfg = ctypes.cast(cfg_ref, ctypes.POINTER(kl._Config)).contents
        attr = cfg.attrs[0]
        calls.append({
            "grid": (cfg.gridDimX, cfg.gridDimY, cfg.gridDimZ), "block": (cfg.blockDimX, cfg.blockDimY, cfg.blockDimZ),
            "smem": cfg.sharedMemBytes, "stream": cfg.hStream, "attr": (attr.id, attr.value[0], cfg.numAttrs),
            "func": func, "extra": extra,
            "args": (ctypes.c_void_p.from_address(params[0]).value, ctypes.c_int32.from_address(params[1]).value,
                     ctypes.c_uint64.from_address(params[2]).value, ctypes.c_float.from_address(params[3]).value),
        })
        return status

    status = 0
    monkeypatch.setitem(sys.modules, "cupy", _FakeCupy)
    monkeypatch.setattr(kl, "_driver", lambda: fake_launch)
    raw_kernel = type("RawKernel", (), {"kernel": type("Function", (), {"ptr": 0xF00D})()})()
    args = (_FakeCupy.ndarray(0x7F00_0000_2000), np.int32(-3), np.uint64(2**33), np.float32(1.5))
    kl.launch(raw_kernel, (7, 2), (256,), args, 4096, pdl=True)
    assert calls == [{"grid": (7, 2, 1), "block": (256, 1, 1), "smem": 4096, "stream": 0xBEEF, "attr": (6, 1, 1),
                      "func": 0xF00D, "extra": None, "args": (0x7F00_0000_2000, -3, 2**33, 1.5)}]
    assert _FakeCupy.cuda.runtime.ensured == 1
    kl.launch(raw_kernel, (1,), (32,), args, pdl=True, stream=type("Stream", (), {"ptr": 0xCAFE})())
    assert calls[-1]["stream"] == 0xCAFE  # a given stream, not the current one
    status = 1  # CUDA_ERROR_INVALID_VALUE: CuPy's driver error, as its own launches raise
    with pytest.raises(_FakeCupy.cuda.driver.CUDADriverError):
        kl.launch(raw_kernel, (1,), (32,), args, pdl=True)
    plain = []
    kl.launch(lambda *a, **kw: plain.append((a, kw)), (1,), (32,), args, 0, pdl=False)  # CuPy's own call
    assert plain == [(((1,), (32,), args), {"shared_mem": 0, "stream": None})]


def test_environment_switch(monkeypatch):
    monkeypatch.setattr(kl, "pdl_supported", lambda: True)
    monkeypatch.delenv(kl.ENV, raising=False)
    assert kl.pdl_default() is kl.DEFAULT
    monkeypatch.setenv(kl.ENV, "1")
    assert kl.pdl_default() is True
    monkeypatch.setenv(kl.ENV, "0")
    assert kl.pdl_default() is False
    monkeypatch.setattr(kl, "pdl_supported", lambda: False)
    monkeypatch.setenv(kl.ENV, "1")
    assert kl.pdl_default() is False  # asked for, but not possible here


# ------------------------------------------------------------------------------------------------
# GPU


cuda = test_cuda.cp  # the shared CuPy fixture (skips without CUDA)


@pytest.fixture(scope="module")
def pdl(cuda):
    """The cupy module where PDL launches are possible; else the test is skipped."""
    if not kl.pdl_supported():
        pytest.skip("no PDL here (needs sm_90+ and a driver with cuLaunchKernelEx)")
    return cuda


@pytest.mark.gpu
@pytest.mark.parametrize("bits", (2, 3, 4, 8))
@pytest.mark.parametrize("M", (1, 2, 3, 17))
@pytest.mark.parametrize("case", [(576, 200, 128, False), (1000, 77, 128, True), (4096, 1024, 128, False)])
def test_gpu_pdl_launch_equals_ordinary_launch(pdl, bits, M, case):
    cp = pdl
    seed, gl, x, bias, ref = gpu_case(bits, case, M, bias=True)
    N = case[1]
    got = {}
    assert not gl.pdl_ready  # so the first launch below is a plain one, whatever is asked
    for flag in (True, False, True):
        out = cp.full((M, N), np.nan, dtype=cp.float16)
        kc.quant_matmul(cp.asarray(x), gl, cp.asarray(bias), out, path="fused", pdl=flag)
        assert gl.pdl_ready
        got[flag] = cp.asnumpy(out)  # the second True: a PDL launch
    assert np.isfinite(got[True]).all(), f"unwritten outputs, seed {seed}"
    np.testing.assert_array_equal(got[True], got[False], err_msg=f"seed {seed}")
    assert rel_err(got[True], ref) <= 2e-3, f"seed {seed}"
    if M == 1 and bits in (3, 4):  # the staged-x kernel and the split-K clusters too
        for kw in ({"xs": True}, {"mt": 1, "cs": 2}):
            outs = [kc.quant_matmul(cp.asarray(x), gl, cp.asarray(bias), path="fused", pdl=f, **kw) for f in (False, True)]
            np.testing.assert_array_equal(cp.asnumpy(outs[1]), cp.asnumpy(outs[0]), err_msg=f"{kw} seed {seed}")


def _chain(cp, layers, x, pdl: bool, ew: bool):
    """x -> layer 0 -> layer 1 ... (square layers), each output poisoned first; with `ew`, an
    ordinary elementwise kernel between the matmuls. Returns every output."""
    outs = []
    for gl in layers:
        y = cp.full((1, gl.layout.N), np.nan, dtype=cp.float16)
        if ew:
            x = x * 1.0
        kc.quant_matmul(x, gl, None, y, pdl=pdl)
        outs.append(y)
        x = y
    return outs


@pytest.mark.gpu
@pytest.mark.parametrize("ew", (False, True))
def test_gpu_pdl_chain_of_dependent_matmuls(pdl, ew):
    """Each launch waits for the previous kernel's output: a chain of 24 layers (fast launches
    after slow kernels and the reverse) gives the ordinary chain's bits, every time."""
    cp = pdl
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    layers = []
    for _ in range(6):  # 1024 -> 4096 -> 4096 -> 1024 -> 1024: slow and fast kernels in turn
        for K, N in ((1024, 4096), (4096, 4096), (4096, 1024), (1024, 1024)):
            packed = list(random_layer(rng, 4, K, N, 128, False))
            packed[1] = rng.uniform(0.5, 1.5, packed[1].shape).astype(np.float32) / (np.sqrt(K) * 6.5)  # gain ~1
            layers.append(kc.GpuLinear.from_packed(*packed, 4, K, N))
    x = cp.asarray(rng.standard_normal((1, 1024)).astype(np.float16))
    ref = [cp.asnumpy(y) for y in _chain(cp, layers, x, False, ew)]
    for _ in range(3):
        got = [cp.asnumpy(y) for y in _chain(cp, layers, x, True, ew)]
        for i, (g, r) in enumerate(zip(got, ref, strict=True)):
            assert np.isfinite(r).all()
            np.testing.assert_array_equal(g, r, err_msg=f"layer {i}, seed {seed}")


@pytest.mark.gpu
def test_gpu_pdl_chain_in_a_cuda_graph(pdl):
    cp = pdl
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    big = kc.GpuLinear.from_packed(*random_layer(rng, 4, 2048, 8192, 128, False), 4, 2048, 8192)
    small = kc.GpuLinear.from_packed(*random_layer(rng, 4, 8192, 2048, 128, False), 4, 8192, 2048)
    x = cp.asarray(rng.standard_normal((1, 2048)).astype(np.float16))
    h = cp.empty((1, 8192), cp.float16)
    hs = cp.empty_like(h)  # no allocation while capturing
    y = cp.empty((1, 2048), cp.float16)

    def step(pdl_flag):
        for _ in range(4):
            kc.quant_matmul(x, big, None, h, pdl=pdl_flag)
            cp.multiply(h, 0.01, out=hs)
            kc.quant_matmul(hs, small, None, y, pdl=pdl_flag)  # an ordinary kernel, then ours
            kc.quant_matmul(h, small, None, y, pdl=pdl_flag)  # ours right after ours

    step(False)
    want = cp.asnumpy(y)
    y.fill(np.nan)
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        s.begin_capture()
        step(True)
        g = s.end_capture()
        g.launch(s)
        s.synchronize()
    np.testing.assert_array_equal(cp.asnumpy(y), want, err_msg=f"seed {seed}")
