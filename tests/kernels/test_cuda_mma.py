"""Fused dequantize + tensor-core GEMM for larger M (kernels/gptq_mma.cu, kernels/cuda_mma.py).

GPU tests (gpu marker, skipped cleanly without CuPy / a CUDA device) compare against a float64
NumPy reference built with kernels/reference.py, on fresh random data (seed in each failure
message), outputs poisoned with NaN before every run.
"""

from __future__ import annotations

import numpy as np
import pytest
import test_cuda
from test_cuda import fresh_seed, gpu_case, random_layer, rel_err

from gptq_export.kernels import cuda as kc
from gptq_export.kernels import cuda_mma as km
from gptq_export.kernels.reference import quant_matmul

BITS = (2, 3, 4, 8)
TOL = 2e-3  # ||out - ref|| / ||ref||: fp16 activations, fp16 weights (as dequant + cuBLAS), fp32 sums
# (K, N, group, act_order): K' not a multiple of the 128-position unit (partial last group), N not
# a multiple of any block tile, act-order (x gathered by prep_x), groups of 32 / 16 / 48 (padded to
# 64) / 256 (2 units per group), per channel with K % 8 != 0 (x gathered: not readable in place).
CASES = [
    (576, 200, 128, False),
    (1000, 77, 128, True),
    (4160, 300, 128, False),
    (96, 70, 32, False),
    (1024, 64, 16, True),
    (200, 40, 48, True),
    (1100, 90, 256, False),
    (100, 33, -1, False),
]
MS = (17, 33, 64, 100, 512)


# ------------------------------------------------------------------------------------------------
# CPU


def test_mma_source_and_names():
    src = kc.source()
    assert "qgemm_mma" in src and "mma_reduce" in src
    t = km.TILES["256x64"]
    assert (t.bn, t.bm, t.threads) == (256, 64, 256)
    assert km.kernel_name(4, 8, t) == "qgemm_mma<4,8,4,4,4,2,4>"
    assert km.TILES["128x128"].bn == 128 and km.TILES["128x128"].bm == 128


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("gstc", (1, 2, 4, 8))
def test_every_tile_fits_shared_memory(bits, gstc):
    for tile in km.TILES.values():
        st = km.stages_for(bits, gstc, tile)
        assert 2 <= st <= km.MAX_STAGES
        assert km.smem_bytes(bits, gstc, tile) <= km.SMEM_LIMIT
        # every part of a stage is a whole number of 16-byte cp.async chunks
        assert km.stage_bytes(bits, gstc, tile) % 16 == 0


def test_auto_dispatch_of_larger_m():
    def layer(bits):
        lay = kc.plan_layout(np.arange(4096) // 128, bits, 4096, 4096, 32)
        return kc.GpuLinear(lay, None, None, None)

    for bits in (3, 4):
        assert kc.auto_path(layer(bits), 16) == "fused"
        assert kc.auto_path(layer(bits), kc.MMA_MIN_M) == "mma"
        assert kc.auto_path(layer(bits), kc.MMA_MAX_M) == "mma"
        assert kc.auto_path(layer(bits), kc.MMA_MAX_M + 1) == "dequant"
    for bits in (2, 8):
        assert kc.auto_path(layer(bits), 17) == "fused"
        assert kc.auto_path(layer(bits), 64) == "dequant"


def test_gemm_argument_checks(monkeypatch):
    """The checks shared by the mma and wgmma launchers (NumPy stands in for CuPy: same API here)."""
    monkeypatch.setattr(kc, "_cupy", lambda: np)
    out = np.zeros((3, 5), np.float16)
    assert km.check_gemm_args(3, 5, None, out, 1, None) is None  # no workspace without a split
    ws = km.check_gemm_args(3, 5, np.zeros(5, np.float32), out, 4, None)
    assert ws.dtype == np.float32 and ws.size == 4 * 3 * 5
    given = np.zeros(100, np.float32)
    assert km.check_gemm_args(3, 5, None, out, 4, given) is given
    for kwargs, match in (
        ({"out": np.zeros((3, 4), np.float16)}, "out must be"),
        ({"out": np.zeros((3, 5), np.float64)}, "out must be"),
        ({"out": np.zeros((5, 3), np.float16).T}, "out must be"),
        ({"bias": np.zeros(5, np.float16)}, "bias must be"),
        ({"bias": np.zeros(4, np.float32)}, "bias must be"),
        ({"split": 0}, "split must be"),
        ({"split": 65}, "split must be"),
        ({"split": 2, "ws": np.zeros(29, np.float32)}, "ws must be"),
        ({"split": 2, "ws": np.zeros(30, np.float16)}, "ws must be"),
    ):
        args = {"bias": None, "out": out, "split": 1, "ws": None} | kwargs
        with pytest.raises(ValueError, match=match):
            km.check_gemm_args(3, 5, args["bias"], args["out"], args["split"], args["ws"])


def test_shared_memory_limit_is_raised_once_per_device_and_kernel(monkeypatch):
    sets = []

    class Fn:
        def __setattr__(self, key, value):
            sets.append((key, value))
            super().__setattr__(key, value)

    class Fake:  # the CuPy attribute function_with_smem reads
        class cuda:
            class runtime:
                @staticmethod
                def getDevice():
                    return 7

    fns: dict[str, Fn] = {}
    monkeypatch.setattr(kc, "_cupy", lambda: Fake)
    monkeypatch.setattr(kc, "function", lambda name: fns.setdefault(name, Fn()))
    monkeypatch.setattr(kc, "_SMEM_SET", set())
    for _ in range(3):
        fn = kc.function_with_smem("k<1>", 100_000)
    assert kc.function_with_smem("k<2>", 50_000) is fns["k<2>"] and fn is fns["k<1>"]
    assert sets == [("max_dynamic_shared_size_bytes", 100_000), ("max_dynamic_shared_size_bytes", 50_000)]


# ------------------------------------------------------------------------------------------------
# GPU

cp = test_cuda.cp  # the shared CuPy fixture (skips without CUDA)




def _run(cp, gl, x, bias, **kw):
    out = cp.full((*x.shape[:-1], gl.layout.N), np.nan, dtype=x.dtype)
    res = kc.quant_matmul(x, gl, bias, out, **kw)
    assert res is out
    got = cp.asnumpy(out)
    assert np.isfinite(got).all(), "unwritten (NaN) outputs"
    return got


def _plans(bits, M):
    """(tile, split) pairs to run: every tile for 3/4 bits, two for 2/8 bits; split 1 and 3."""
    labels = list(km.TILES) if bits in (3, 4) else ["256x64", "128x128"]
    return [(lb, s) for lb in labels for s in (1, 3)] + [(None, None)]


def check_reference(cp, bits, case, M, path: str, plans) -> None:
    """`path` with every (tile, split) of `plans` equals the float64 reference (fresh data; bias on
    odd M). Shared with test_cuda_wgmma.py."""
    seed, gl, x, bias, ref = gpu_case(bits, case, M, bias=M % 2 == 1)
    K, N = case[:2]
    xd = cp.asarray(x)
    bd = cp.asarray(bias) if bias is not None else None
    for tile, split in plans(bits, gl.layout.gstc, M):
        got = _run(cp, gl, xd, bd, path=path, tile=tile, split=split)
        assert got.dtype == np.float16 and got.shape == (M, N)
        assert rel_err(got, ref) <= TOL, f"tile {tile} split {split} seed {seed}"


def check_fp32_and_misaligned(cp, bits, case, rows: int, path: str, tile: str) -> None:
    """fp32 x / output and x at a 2-byte offset (gathered and cast by the path's x preparation),
    leading dims flattened, split 1 and 2. Shared with test_cuda_wgmma.py."""
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    K, N, group, act = case
    layer = random_layer(rng, bits, K, N, group, act)
    gl = kc.GpuLinear.from_packed(*layer, bits, K, N)
    bias = rng.standard_normal(N).astype(np.float32)
    for dtype in ("float32", "float16"):
        buf = cp.asarray(rng.standard_normal(2 * rows * K + 1).astype(dtype))
        x = buf[1:].reshape(2, rows, K)
        ref = quant_matmul(cp.asnumpy(x).astype(np.float64), *layer, bias, bits, K, N)
        for split in (1, 2):
            got = _run(cp, gl, x, cp.asarray(bias), path=path, tile=tile, split=split)
            assert got.dtype == np.dtype(dtype) and got.shape == (2, rows, N)
            assert rel_err(got, ref) <= TOL, f"{dtype} split {split} seed {seed}"


def check_equals_dequant_and_deterministic(cp, bits, path: str, tiles) -> None:
    """The same fp16 weights as dequantize + cuBLAS (so near-equal outputs); repeated runs with a
    split K' (fixed-order reduction) are bit-identical. Shared with test_cuda_wgmma.py."""
    rng = np.random.default_rng()
    K, N = 2048, 384
    layer = random_layer(rng, bits, K, N, 128, True)
    gl = kc.GpuLinear.from_packed(*layer, bits, K, N)
    x = cp.asarray(rng.standard_normal((300, K)).astype(np.float16))
    a = cp.asnumpy(kc.quant_matmul(x, gl, path="dequant")).astype(np.float64)
    for tile in tiles:
        split = 1 if getattr(tiles[tile], "sk", False) else 4  # stream-K tiles split K' their own way
        first = cp.asnumpy(kc.quant_matmul(x, gl, path=path, tile=tile, split=split))
        assert rel_err(first, a) < 1e-3, tile
        for _ in range(2):
            np.testing.assert_array_equal(cp.asnumpy(kc.quant_matmul(x, gl, path=path, tile=tile, split=split)), first)


@pytest.mark.gpu
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("M", MS)
def test_gpu_mma_matches_float64_reference(cp, bits, case, M):
    check_reference(cp, bits, case, M, "mma", lambda b, _gstc, m: _plans(b, m))


@pytest.mark.gpu
@pytest.mark.parametrize("bits", (3, 4))
@pytest.mark.parametrize("case", [CASES[0], CASES[1], CASES[6]])
def test_gpu_mma_fp32_and_misaligned_x(cp, bits, case):
    check_fp32_and_misaligned(cp, bits, case, 40, "mma", "128x64")


@pytest.mark.gpu
@pytest.mark.parametrize("bits", (3, 4))
def test_gpu_mma_equals_dequant_path_and_is_deterministic(cp, bits):
    check_equals_dequant_and_deterministic(cp, bits, "mma", km.TILES)


@pytest.mark.gpu
def test_gpu_mma_rejects_bad_arguments(cp):
    rng = np.random.default_rng()
    layer = random_layer(rng, 4, 256, 64, 128, False)
    gl = kc.GpuLinear.from_packed(*layer, 4, 256, 64)
    x = cp.zeros((40, 256), cp.float16)
    with pytest.raises(ValueError, match="split"):
        kc.quant_matmul(x, gl, path="mma", tile="256x64", split=0 - 1)
    with pytest.raises(ValueError, match="ws"):
        kc.quant_matmul(x, gl, path="mma", tile="256x64", split=2, ws=cp.zeros(10, cp.float32))
    with pytest.raises(ValueError, match="x must be"):
        km.run(x[:, 1:], 255, gl, None, cp.zeros((40, 64), cp.float16), km.TILES["256x64"], 1)
