"""The fused kernel's launch in two steps (kernels/cuda_fused.py) and the direct launch of
kernels/torch_cuda.py, on the CPU: a stand-in CuPy records each launch (kernel, grid, block,
argument values, shared memory, stream), so the paths can be compared value for value. (On a GPU,
tests/kernels/test_cuda.py checks the kernels' results.)"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from gptq_export.kernels import cuda as kc
from gptq_export.kernels import cuda_fused as kf
from gptq_export.kernels import torch_cuda as tc


class FakeArray:
    """What quant_matmul reads of a CuPy array."""

    def __init__(self, shape, dtype, ptr):
        self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(dtype), len(shape)
        self.data = types.SimpleNamespace(ptr=ptr)
        self.flags = types.SimpleNamespace(c_contiguous=True)

    def reshape(self, *shape):
        shape = list(shape)
        if -1 in shape:
            shape[shape.index(-1)] = int(np.prod(self.shape)) // -int(np.prod(shape))
        return FakeArray(shape, self.dtype, self.data.ptr)


@pytest.fixture
def launches(monkeypatch):
    """Installs the stand-in CuPy; returns the list the launches are recorded in."""
    fake = types.ModuleType("cupy")
    fake.ndarray, fake.float16, fake.float32 = FakeArray, np.dtype(np.float16), np.dtype(np.float32)
    fake.ascontiguousarray = lambda x: x
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDevice=lambda: 0))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(kc, "sm_count", lambda: 132)
    for name, value in (("sm90", True), ("pdl_default", False), ("pdl_supported", True)):
        monkeypatch.setattr(kf, name, lambda value=value: value)
    record = []

    def function(name):
        def run(grid, block, args, shared_mem=0, stream=None):
            vals = [a.data.ptr if isinstance(a, FakeArray) else int(a) for a in args]
            record.append((name, tuple(grid), tuple(block), vals, shared_mem, stream))
        return run

    monkeypatch.setattr(kc, "function", function)
    return record


def fake_layer(bits, K, N, act=False):
    g = np.arange(K) // 128
    if act:
        g = np.random.default_rng(0).permutation(g)
    lay = kc.plan_layout(g.astype(np.int32), bits, K, N, int(g.max()) + 1)
    return kc.GpuLinear(lay, FakeArray((lay.words,), np.uint32, 0xA000), FakeArray((lay.Gp, lay.Np), np.uint32, 0xB000),
                        FakeArray((lay.Kp,), np.int32, 0xC000))


@pytest.mark.parametrize("bits,K,N,M", [(4, 2048, 512, 1), (3, 8192, 28672, 1), (4, 4096, 1024, 3), (8, 576, 200, 8)])
def test_pointers_launch_what_arrays_launch(launches, bits, K, N, M):
    gl = fake_layer(bits, K, N)
    plan = kf.fused_plan(gl, M, False, True)
    x, out, bias = FakeArray((M, K), np.float16, 0x1000), FakeArray((M, N), np.float16, 0x2000), FakeArray((N,), np.float32, 0x3000)
    kf.launch_fused(gl, plan, x, bias, out)
    kf.launch_fused(gl, plan, np.uint64(0x1000), np.uint64(0x3000), np.uint64(0x2000), out_f32=False)
    assert len(launches) == 2 and launches[0] == launches[1]
    assert launches[0][3][:1] == [0x1000] and launches[0][3][8:10] == [0x3000, 0x2000]
    kf.launch_fused(gl, plan, x, None, out)
    assert launches[2][3][8] == 0  # no bias: a null pointer


def test_plans_are_cached_per_row_count_and_kind_of_x(launches):
    gl = fake_layer(4, 1000, 77, act=True)
    a = kf.fused_plan(gl, 1, False, True)
    assert kf.fused_plan(gl, 1, False, True) is a and a.names[1] == a.names[0].replace("<", "_pdl<", 1)
    assert a.prep and (a.ldx, a.kx, a.x_f32) == (gl.layout.Kp, gl.layout.Kp, 0)  # act-order: x through prep_x
    b = kf.fused_plan(gl, 1, True, False, xs=True)  # the staging gathers / casts x itself
    assert not b.prep and b.gather == 1 and b.x_f32 == 1 and b.smem == (gl.layout.Kp + 8) * 2
    assert kf.fused_plan(gl, 2, False, True) is not a and len(gl.plans) == 3
    with pytest.raises(ValueError, match="cs must be"):
        kf.fused_plan(gl, 20, False, True, cs=2)


@pytest.mark.parametrize("M,with_bias,act,dtype,offset", [
    (1, True, False, torch.float16, 0),  # read in place
    (3, False, False, torch.float16, 0),
    (1, True, True, torch.float16, 0),  # act-order: prep_x first
    (2, True, False, torch.float32, 0),  # fp32: prep_x casts
    (1, False, False, torch.float16, 1),  # rows not 16-byte aligned: prep_x
])
def test_torch_direct_launch_equals_quant_matmul(launches, monkeypatch, M, with_bias, act, dtype, offset):
    """kernels.torch_cuda._direct (device pointers of the tensors, PyTorch's stream) makes the
    launches quant_matmul makes for the same memory."""
    gl = fake_layer(4, 2048, 512, act)
    stream = object()
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(tc, "_stream", lambda index: stream)
    x = torch.zeros(M * 2048 + offset, dtype=dtype)[offset:].view(M, 2048)
    bias = torch.zeros(512, dtype=torch.float32) if with_bias else None
    y = tc._direct(x, gl, bias, M)
    assert y is not None and y.shape == (M, 512) and y.dtype == dtype
    direct = list(launches)
    prep = direct[0][0] == "prep_x"
    assert len(direct) == 1 + prep and prep == (act or dtype == torch.float32 or offset != 0)
    assert all(s is stream for *_, s in direct) and direct[0][3][0] == x.data_ptr()
    name, grid, block, vals, smem, _ = direct[-1]
    assert vals[9] == y.data_ptr() and vals[8] == (bias.data_ptr() if with_bias else 0)
    launches.clear()
    xbuf = FakeArray((M, gl.layout.Kp), np.float16, direct[0][3][6]) if prep else None  # prep_x's output
    kc.quant_matmul(FakeArray((M, 2048), np.dtype(str(dtype).split(".")[1]), x.data_ptr()), gl,
                    FakeArray((512,), np.float32, bias.data_ptr()) if with_bias else None,
                    FakeArray((M, 512), np.dtype(str(dtype).split(".")[1]), y.data_ptr()), path="fused", xbuf=xbuf)
    assert [r[:5] for r in launches] == [r[:5] for r in direct]
    assert all(r[5] is None for r in launches)  # quant_matmul: CuPy's current stream


def test_torch_direct_launch_leaves_other_inputs_to_the_general_path(launches, monkeypatch):
    gl = fake_layer(4, 2048, 512)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    x = torch.zeros((1, 2048), dtype=torch.float16)
    assert tc._direct(x, gl, torch.zeros(512, dtype=torch.float16), 1) is None  # an fp16 bias
    assert tc._direct(x.bfloat16(), gl, None, 1) is None  # linear() casts bf16 to fp16 before
    sys.modules["cupy"].cuda.runtime.getDevice = lambda: 1  # x on another device than CuPy's
    assert tc._direct(x, gl, None, 1) is None
    assert launches == []


def test_linear_launches_directly_unless_switched_off(launches, monkeypatch):
    """torch_cuda.linear takes the direct launch for one-token calls by default;
    GPTQ_EXPORT_TORCH_DIRECT=0 sends them through the general path (DLPack views, CuPy context)."""

    class GeneralPath(Exception):
        pass

    def general(device):
        raise GeneralPath

    gl = fake_layer(4, 2048, 512)
    calls = []
    monkeypatch.setattr(tc, "_direct", lambda x2, layer, bias, M: calls.append(M) or torch.zeros((M, 512)))
    monkeypatch.setattr(tc, "_On", general)
    x = torch.zeros((1, 1, 2048), dtype=torch.float16)
    monkeypatch.delenv(tc.DIRECT_ENV, raising=False)
    assert tc.linear(x, gl).shape == (1, 1, 512) and calls == [1]
    y = tc.linear(x[0, 0], gl)  # one vector in, one out
    assert y.shape == (512,) and y.dtype == torch.float16 and calls == [1, 1]
    assert tc.linear(x.float()[0], gl).dtype == torch.float32 and calls == [1, 1, 1]
    calls.clear()
    monkeypatch.setenv(tc.DIRECT_ENV, "0")
    with pytest.raises(GeneralPath):
        tc.linear(x, gl)
    assert calls == []


def test_stream_wraps_pytorchs_raw_current_stream_once(launches, monkeypatch):
    """torch_cuda._stream: PyTorch's current cudaStream_t (the raw getter where PyTorch has it),
    wrapped as a CuPy ExternalStream once per (device, stream)."""
    made = []
    sys.modules["cupy"].cuda.ExternalStream = lambda ptr, index: made.append((ptr, index)) or object()
    monkeypatch.setattr(tc, "_streams", {})
    current = {0: 111, 1: 222}
    monkeypatch.setattr(tc, "_raw_stream", lambda index: current[index])
    a, b, c = tc._stream(0), tc._stream(0), tc._stream(1)
    assert a is b and a is not c and made == [(111, 0), (222, 1)]
