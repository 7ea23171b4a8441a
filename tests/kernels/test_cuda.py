"""CUDA kernels of the gptq format: GPU tile layout (CPU tests) and the kernels (gpu marker).

GPU tests compare against a float64 NumPy reference built with kernels/reference.py, on fresh
random data every run (the seed is in each failure message), with outputs poisoned with NaN.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from gptq_export.kernels import cuda as kc
from gptq_export.kernels.reference import default_g_idx, dequantize, pack_codes, pack_zeros, quant_matmul

BITS = (2, 3, 4, 8)
# (K, N, group_size, act_order): full groups; act-order; groups of 32 (3 per unit); per channel
# with K % 8 != 0; partial last group (K = 576, g128) with act-order; groups of 48 (padded to 64).
CASES = [
    (576, 200, 128, False),
    (576, 200, 128, True),
    (96, 70, 32, False),
    (100, 33, -1, False),
    (1000, 77, 128, True),
]
TOL = 2e-3  # ||out - ref|| / ||ref||: fp16 activations, fp16 scales and outputs


def fresh_seed() -> int:
    return int.from_bytes(os.urandom(4), "little")


def random_layer(rng, bits, K, N, group, act_order):
    codes = rng.integers(0, 1 << bits, (K, N))
    g_idx = default_g_idx(K, group)
    if act_order:
        g_idx = rng.permutation(g_idx).astype(np.int32)
    G = int(g_idx.max()) + 1
    scales = rng.uniform(0.002, 0.05, (G, N)).astype(np.float32)
    zeros = rng.integers(0, 1 << bits, (G, N))
    return pack_codes(codes, bits), scales, pack_zeros(zeros, bits), g_idx.astype(np.int32)


def gpu_case(bits, case, M, bias: bool):
    """Fresh data for one GPU check of `case` (K, N, group, act-order) with M rows: (seed,
    GpuLinear, x fp16 [M, K], fp32 bias or None, float64 reference of x @ W + bias)."""
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    K, N, group, act = case
    layer = random_layer(rng, bits, K, N, group, act)
    gl = kc.GpuLinear.from_packed(*layer, bits, K, N)
    x = rng.standard_normal((M, K)).astype(np.float16)
    b = rng.standard_normal(N).astype(np.float32) if bias else None
    return seed, gl, x, b, quant_matmul(x.astype(np.float64), *layer, b, bits, K, N)


def rel_err(out, ref) -> float:
    return float(np.linalg.norm(out.astype(np.float64) - ref) / np.linalg.norm(ref))


@pytest.fixture(scope="module")
def cp():
    """The cupy module, when CuPy imports and a CUDA device answers; else the test is skipped (also
    used by test_cuda_mma.py: a conftest.py here would shadow tests/conftest.py's helpers)."""
    cupy = pytest.importorskip("cupy")
    reason = kc.cuda_available()
    if reason:
        pytest.skip(reason)
    return cupy


# ------------------------------------------------------------------------------------------------
# CPU: the tile layout itself


def _magic_pair(w: np.ndarray, bits: int, ts: int, pr: int) -> np.ndarray:
    """Transcription of magic_pair() in gptq_cuda.cu: uint32 half2(1024 + q_lo, 1024 + q_hi)."""
    M = np.uint32(0x64006400)
    if bits == 4:
        return ((w[..., ts] >> np.uint32(4 * pr)) & np.uint32(0x000F000F)) | M
    if bits == 2:
        p = (ts & 1) * 4 + pr
        return ((w[..., ts >> 1] >> np.uint32(2 * p)) & np.uint32(0x00030003)) | M
    if bits == 8:
        return ((w[..., 2 * ts + (pr >> 1)] >> np.uint32(8 * (pr & 1))) & np.uint32(0x00FF00FF)) | M
    tr, p = ts >> 2, (ts & 3) * 4 + pr
    if p < 15:
        return ((w[..., 3 * tr + p // 5] >> np.uint32(3 * (p % 5))) & np.uint32(0x00070007)) | M
    return (((w[..., 3 * tr] >> np.uint32(15)) & np.uint32(0x00010001))
            | ((w[..., 3 * tr + 1] >> np.uint32(14)) & np.uint32(0x00020002))
            | ((w[..., 3 * tr + 2] >> np.uint32(13)) & np.uint32(0x00040004)) | M)


def emulate_fused(lay: kc.TileLayout, qw: np.ndarray, sz: np.ndarray, x: np.ndarray) -> np.ndarray:
    """float64 emulation of qgemm_small: decode each lane's fragments as the kernel does (magic
    number, K' positions of kpos(), zero/scale from sz), accumulate y = x W."""
    words = kc._from_memory_order(qw, lay)  # [ntiles, NU, 32, WPU]
    lane = np.arange(32)
    g, t = lane >> 2, lane & 3
    S, TS = lay.span, lay.span // 16
    ntiles, nu = lay.Np // 16, lay.nu
    sz = np.asarray(sz, np.uint32)
    scale = (sz & 0xFFFF).astype(np.uint16).view(np.float16).astype(np.float64)  # [Gp, Np]
    zz = (sz >> 16).astype(np.uint16).view(np.float16).astype(np.float64)
    xg = np.zeros((x.shape[0], lay.Kp))
    ok = lay.perm >= 0
    xg[:, ok] = x[:, lay.perm[ok]]
    wd = np.full((lay.Kp, lay.Np), np.nan)  # every position must be decoded exactly once
    u = np.arange(nu)[:, None]
    n0 = np.arange(ntiles)[:, None] * 16 + g[None, :]  # [ntiles, 32]
    for ts in range(8):
        grp = (u * (8 // lay.gstc) + ts // lay.gstc) if lay.gstc < 8 else u // lay.upg  # [NU, 1]
        for pr in range(4):
            h2 = _magic_pair(words, lay.bits, ts, pr)  # [ntiles, NU, 32]
            n = n0 + 8 * (pr & 1)
            for hi in range(2):
                h = ((h2 >> np.uint32(16 * hi)) & np.uint32(0xFFFF)).astype(np.uint16).view(np.float16)
                kp = u * 128 + (ts // TS) * S + t[None, :] * (S // 4) + (ts % TS) * 4 + 2 * (pr >> 1) + hi
                gq = np.broadcast_to(grp, kp.shape)[None]  # [1, NU, 32]
                nn = n[:, None, :]  # [ntiles, 1, 32]
                wd[kp[None], nn] = (h.astype(np.float64) - zz[gq, nn]) * scale[gq, nn]
    assert not np.isnan(wd).any()
    return (xg @ wd)[:, : lay.N]


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("case", CASES + [(1024, 64, 16, True), (96, 70, 48, True)])
def test_tile_layout_round_trip_is_bit_exact(bits, case):
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    K, N, group, act = case
    qweight, scales, qzeros, g_idx = random_layer(rng, bits, K, N, group, act)
    lay, qw, sz = kc.repack_numpy(qweight, scales, qzeros, g_idx, bits, K, N)
    assert qw.dtype == np.uint32 and qw.size == lay.words and sz.shape == (lay.Gp, lay.Np)
    assert lay.Kp % kc.UNIT == 0 and lay.Np % kc.N_ALIGN == 0
    assert lay.direct == (not act and K % 8 == 0), seed
    assert sorted(lay.perm[lay.perm >= 0].tolist()) == list(range(K))
    codes, pad = kc.unpack_tc_numpy(lay, qw)
    ref = kc.unpack_codes(qweight, bits, K)
    np.testing.assert_array_equal(codes, ref, err_msg=f"seed {seed}")
    assert not pad.any(), f"nonzero padding codes (seed {seed})"
    s, z = kc.decode_sz_numpy(lay, sz)
    np.testing.assert_array_equal(s, scales.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(z, kc.unpack_zeros(qzeros, bits, N))
    assert (sz[lay.G:] == kc.SZ_PAD).all() and (sz[:, N:] == kc.SZ_PAD).all()
    # Bits per weight: exactly `bits` (padding aside).
    assert qw.nbytes * 8 == lay.Kp * lay.Np * bits


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("case", [CASES[0], CASES[1], CASES[2], CASES[3], (96, 70, 48, True), (64, 20, 16, False)])
def test_kernel_decode_emulation_matches_reference(bits, case):
    """The kernel's decode expressions and K' positions, run in NumPy, give reference results."""
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    K, N, group, act = case
    layer = random_layer(rng, bits, K, N, group, act)
    lay, qw, sz = kc.repack_numpy(*layer, bits, K, N)
    x = rng.standard_normal((3, K))
    ref = quant_matmul(x, *layer[:1], layer[1].astype(np.float16).astype(np.float64), *layer[2:], None, bits, K, N)
    got = emulate_fused(lay, qw, sz, x)
    assert rel_err(got, ref) < 1e-12, f"seed {seed}"


def test_plan_rejects_bad_g_idx():
    with pytest.raises(ValueError, match="g_idx values"):
        kc.plan_layout(np.array([0, 1, 2]), 4, 3, 8, 2)
    with pytest.raises(ValueError, match="shape"):
        kc.plan_layout(np.zeros(4, np.int32), 4, 3, 8, 1)
    with pytest.raises(ValueError, match="bits"):
        kc.plan_layout(np.zeros(4, np.int32), 5, 4, 8, 1)


def test_kernel_source_ships_with_the_package():
    src = kc.source()
    for name in ("qgemm_small", "qgemm_split", "dequant_tc", "repack_tc", "repack_sz"):
        assert name in src


def test_kernel_names_and_default_plan():
    assert kc.small_kernel_name(4, 1, 1, 8, True, 4) == "qgemm_small<4,1,1,8,1,4,0>"
    assert kc.small_kernel_name(3, 1, 1, 8, False, 2, 3, 4) == "qgemm_split<3,1,8,0,2,3,4>"
    assert kc.small_params("qgemm_split<3,1,8,0,2,3,4>") == dict(bits=3, nt=1, gstc=8, xs=0, occ=2, pd=3, cs=4,
                                                                   mt=1, pdl=0)
    for args in ((4, 2, 1, 8, True, 4, 0, 1), (3, 1, 2, 8, False, 2, 3, 4)):  # the PDL variants
        name = kc.small_kernel_name(*args, pdl=True)
        assert "_pdl<" in name and kc.small_params(name) == {**kc.small_params(kc.small_kernel_name(*args)), "pdl": 1}
    assert kc.small_params("qgemm_mma<4,1,4,4,2,2,4>") is None
    with pytest.raises(ValueError):
        kc.small_kernel_name(4, 2, 1, 8, False, 2, 0, 2)

    def layer(bits, K, N):
        lay = kc.plan_layout(np.arange(K) // 128, bits, K, N, -(-K // 128))
        return kc.GpuLinear(lay, None, None, None)

    # x staged by default only for M = 1, 3 bits, large matrices; 4 blocks per SM from global memory.
    assert kc._stage_default(layer(3, 8192, 28672), 1)
    assert not kc._stage_default(layer(3, 8192, 28672), 2)
    assert not kc._stage_default(layer(4, 8192, 28672), 1)
    assert not kc._stage_default(layer(3, 4096, 4096), 1)
    assert kc.default_occ_global(4, 1, 8) == 4 and kc.default_occ_global(8, 1, 8) == 2
    assert kc.default_occ_global(4, 2, 8) == 2
    # Two output tiles per block (one unit of each in flight) for M <= 8 when N is wide enough.
    assert kc.default_nt(4, 1, 8, 11008, 132) == 2 and kc.default_nt(3, 1, 8, 28672, 132) == 2
    assert kc.default_nt(4, 1, 8, 8192, 132) == 1 and kc.default_nt(4, 1, 8, 11008, 160) == 1
    assert kc.default_nt(8, 1, 8, 28672, 132) == 1 and kc.default_nt(4, 1, 4, 28672, 132) == 1
    assert kc.default_nt(4, 1, 8, 28672, None) == 1 and kc.default_nt(4, 2, 8, 28672, 132) == 2
    assert kc.default_pd(1, 2) == 1 and kc.default_pd(1, 1) == 0 and kc.default_pd(2, 2) == 0
    assert kc.small_kernel_name(4, 1, 2, 8, False, 4, 1) in kc.common_kernel_names()


# ------------------------------------------------------------------------------------------------
# GPU




@pytest.mark.gpu
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("case", CASES + [(1024, 64, 16, True)])
def test_gpu_repack_matches_numpy_bit_exactly(cp, bits, case):
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    K, N, group, act = case
    layer = random_layer(rng, bits, K, N, group, act)
    lay, qw, sz = kc.repack_numpy(*layer, bits, K, N)
    gl = kc.GpuLinear.from_packed(*layer, bits, K, N)
    np.testing.assert_array_equal(cp.asnumpy(gl.qw), qw, err_msg=f"seed {seed}")
    np.testing.assert_array_equal(cp.asnumpy(gl.sz), sz, err_msg=f"seed {seed}")
    np.testing.assert_array_equal(cp.asnumpy(gl.perm), lay.perm)
    codes, pad = kc.unpack_tc_numpy(gl.layout, cp.asnumpy(gl.qw))
    np.testing.assert_array_equal(codes, kc.unpack_codes(layer[0], bits, K))
    assert not pad.any()


def _run(cp, gl, x, bias, path="auto", **kw):
    """Run with the output poisoned; every element must be written."""
    out = cp.full((*x.shape[:-1], gl.layout.N), np.nan, dtype=x.dtype)
    res = kc.quant_matmul(x, gl, bias, out, path=path, **kw)
    assert res is out
    got = cp.asnumpy(out)
    assert np.isfinite(got).all(), "unwritten (NaN) outputs"
    return got


@pytest.mark.gpu
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("M", [1, 2, 3, 16, 17, 40, 100])
def test_gpu_matmul_matches_float64_reference(cp, bits, case, M):
    seed, gl, x, bias, ref = gpu_case(bits, case, M, bias=M % 2 == 1)
    K, N = case[:2]
    for path in ("auto", "fused") if kc.auto_path(gl, M) != "fused" else ("auto",):
        got = _run(cp, gl, cp.asarray(x), cp.asarray(bias) if bias is not None else None, path=path)
        assert got.dtype == np.float16 and got.shape == (M, N)
        assert rel_err(got, ref) <= TOL, f"{path} seed {seed}"


@pytest.mark.gpu
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("case", [CASES[1], CASES[2], CASES[3]])
@pytest.mark.parametrize("M,path", [(1, "fused"), (17, "fused"), (5, "dequant"), (70, "auto")])
def test_gpu_fp32_activations_and_both_paths(cp, bits, case, M, path):
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    K, N, group, act = case
    layer = random_layer(rng, bits, K, N, group, act)
    gl = kc.GpuLinear.from_packed(*layer, bits, K, N)
    x = rng.standard_normal((2, M, K)).astype(np.float32)  # leading dims are flattened
    bias = rng.standard_normal(N).astype(np.float32)
    ref = quant_matmul(x.astype(np.float64), *layer, bias, bits, K, N)
    got = _run(cp, gl, cp.asarray(x), cp.asarray(bias), path=path)
    assert got.dtype == np.float32 and got.shape == (2, M, N)
    assert rel_err(got, ref) <= TOL, f"seed {seed}"


@pytest.mark.gpu
@pytest.mark.parametrize("bits", (3, 4))
@pytest.mark.parametrize("mt,nt", [(1, 1), (1, 2), (2, 1), (2, 2), (4, 1), (4, 2), (8, 1)])
def test_gpu_every_tile_config_and_misaligned_x(cp, bits, mt, nt):
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    K, N = 1024, 320
    layer = random_layer(rng, bits, K, N, 128, False)
    gl = kc.GpuLinear.from_packed(*layer, bits, K, N)
    buf = cp.asarray(rng.standard_normal(7 * K + 1).astype(np.float16))
    for x in (buf[1:].reshape(7, K), buf[: 7 * K].reshape(7, K)):  # 2-byte offset, then aligned
        ref = quant_matmul(cp.asnumpy(x).astype(np.float64), *layer, None, bits, K, N)
        for xs in (False, True) if mt <= 2 else (False,):
            got = _run(cp, gl, x, None, path="fused", mt=mt, nt=nt, xs=xs)
            assert rel_err(got, ref) <= TOL, f"xs {xs} seed {seed}"


@pytest.mark.gpu
@pytest.mark.parametrize("bits", (3, 4))
@pytest.mark.parametrize("act", (False, True))
def test_gpu_wide_layer_default_plan_takes_two_tiles_per_block(cp, bits, act):
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    sms = kc.sm_count()
    K, N = 520, int(np.ceil(kc.NT2_BLOCKS_PER_SM * sms)) * 32 + 40  # N' = N + 24; K' padded
    layer = random_layer(rng, bits, K, N, 128, act)
    gl = kc.GpuLinear.from_packed(*layer, bits, K, N)
    for M, dtype in ((1, np.float16), (3, np.float32), (8, np.float16)):
        assert kc.fused_config(gl, M) == (1, 2)
        x = rng.standard_normal((M, K)).astype(dtype)
        bias = rng.standard_normal(N).astype(np.float32)
        ref = quant_matmul(x.astype(np.float64), *layer, bias, bits, K, N)
        got = _run(cp, gl, cp.asarray(x), cp.asarray(bias))
        assert rel_err(got, ref) <= TOL, f"M {M} seed {seed}"


@pytest.mark.gpu
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("case", [CASES[1], CASES[2], CASES[3]])
def test_gpu_dequantize_is_the_reference_weight(cp, bits, case):
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    K, N, group, act = case
    layer = random_layer(rng, bits, K, N, group, act)
    gl = kc.GpuLinear.from_packed(*layer, bits, K, N)
    lay = gl.layout
    out = cp.full((N, lay.Kp), np.nan, dtype=cp.float16)
    wt = cp.asnumpy(kc.dequantize(gl, out=out))  # W^T in K' order
    assert np.isfinite(wt).all()
    w = dequantize(*layer, bits, K, N, dtype=np.float64).T  # [N, K]
    valid = lay.perm >= 0
    got = wt[:, valid]
    ref = w[:, lay.perm[valid]]
    assert rel_err(got, ref) < 1e-3, f"seed {seed}"  # fp16 weights and scales


@pytest.mark.gpu
@pytest.mark.parametrize("bits", (3, 4))
@pytest.mark.parametrize("case", [CASES[0], CASES[1], CASES[3]])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("M,mt,xs", [(1, 1, True), (1, 1, False), (5, 1, True), (5, 1, False), (13, 2, True),
                                     (13, 2, False)])
def test_gpu_staged_and_unstaged_x(cp, bits, case, dtype, M, mt, xs):
    """The kernel with x staged in shared memory (gather and fp32 cast in the staging) and
    without (x gathered/cast by prep_x first), on aligned and unaligned x."""
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    K, N, group, act = case
    layer = random_layer(rng, bits, K, N, group, act)
    gl = kc.GpuLinear.from_packed(*layer, bits, K, N)
    for offset in (0, 1):
        buf = cp.asarray(rng.standard_normal(M * K + offset).astype(dtype))
        x = buf[offset:].reshape(M, K)
        ref = quant_matmul(cp.asnumpy(x).astype(np.float64), *layer, None, bits, K, N)
        got = _run(cp, gl, x, None, path="fused", mt=mt, xs=xs)
        assert rel_err(got, ref) <= TOL, f"offset {offset} seed {seed}"


@pytest.mark.gpu
@pytest.mark.parametrize("bits", (3, 4))
@pytest.mark.parametrize("occ", (2, 3, 4))
@pytest.mark.parametrize("act", (False, True))
def test_gpu_staged_kernel_at_every_occupancy(cp, bits, occ, act):
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    K, N = 2304, 96
    layer = random_layer(rng, bits, K, N, 128, act)
    gl = kc.GpuLinear.from_packed(*layer, bits, K, N)
    for M in (1, 5):
        x = rng.standard_normal((M, K)).astype(np.float16)
        ref = quant_matmul(x.astype(np.float64), *layer, None, bits, K, N)
        got = _run(cp, gl, cp.asarray(x), None, path="fused", mt=1, xs=True, occ=occ)
        assert rel_err(got, ref) <= TOL, f"M {M} seed {seed}"


@pytest.mark.gpu
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("case", CASES + [(4096, 64, 128, False), (2048, 130, 64, True)])
@pytest.mark.parametrize("cs", (2, 4))
def test_gpu_split_k_cluster_matches_reference(cp, bits, case, cs):
    """K split over a cluster of 2 or 4 blocks (rank 0 adds the partial tiles through distributed
    shared memory), x staged (the kernel gathers / casts it) or read from global memory, M = 1..8;
    K = 100 gives blocks with no K' unit at all."""
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    K, N, group, act = case
    layer = random_layer(rng, bits, K, N, group, act)
    gl = kc.GpuLinear.from_packed(*layer, bits, K, N)
    for M in (1, 3, 8):
        x = rng.standard_normal((M, K)).astype(np.float16)
        bias = rng.standard_normal(N).astype(np.float32) if M % 2 else None
        ref = quant_matmul(x.astype(np.float64), *layer, bias, bits, K, N)
        for xs in (True, False):
            got = _run(cp, gl, cp.asarray(x), cp.asarray(bias) if bias is not None else None, path="fused", mt=1,
                       xs=xs, cs=cs)
            assert rel_err(got, ref) <= TOL, f"M {M} xs {xs} seed {seed}"


@pytest.mark.gpu
@pytest.mark.parametrize("bits", (3, 4))
@pytest.mark.parametrize("occ,pd", [(4, 1), (3, 3), (2, 6)])
def test_gpu_units_in_flight_variants(cp, bits, occ, pd):
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    K, N = 3000, 96
    layer = random_layer(rng, bits, K, N, 128, True)
    gl = kc.GpuLinear.from_packed(*layer, bits, K, N)
    x = rng.standard_normal((2, K)).astype(np.float16)
    ref = quant_matmul(x.astype(np.float64), *layer, None, bits, K, N)
    for cs in (1, 2):
        got = _run(cp, gl, cp.asarray(x), None, path="fused", mt=1, xs=True, occ=occ, pd=pd, cs=cs)
        assert rel_err(got, ref) <= TOL, f"cs {cs} seed {seed}"


@pytest.mark.gpu
def test_gpu_results_are_deterministic(cp):
    rng = np.random.default_rng()
    layer = random_layer(rng, 4, 2048, 512, 128, True)
    gl = kc.GpuLinear.from_packed(*layer, 4, 2048, 512)
    for M, cs in ((1, None), (1, 2), (4, 4), (16, None), (100, None)):
        x = cp.asarray(rng.standard_normal((M, 2048)).astype(np.float16))
        first = cp.asnumpy(kc.quant_matmul(x, gl, cs=cs))
        for _ in range(3):
            np.testing.assert_array_equal(cp.asnumpy(kc.quant_matmul(x, gl, cs=cs)), first)


@pytest.mark.gpu
def test_gpu_rejects_bad_arguments(cp):
    rng = np.random.default_rng()
    layer = random_layer(rng, 4, 128, 64, 128, False)
    gl = kc.GpuLinear.from_packed(*layer, 4, 128, 64)
    with pytest.raises(ValueError, match=r"x must be \[\.\.\., 128\]"):
        kc.quant_matmul(cp.zeros((2, 64), cp.float16), gl)
    with pytest.raises(TypeError, match="float16 or float32"):
        kc.quant_matmul(cp.zeros((2, 128), cp.float64), gl)
    with pytest.raises(ValueError, match="bias"):
        kc.quant_matmul(cp.zeros((2, 128), cp.float16), gl, cp.zeros(64, cp.float16))
    with pytest.raises(ValueError, match="qweight"):
        kc.GpuLinear.from_packed(layer[0][:-1], *layer[1:], 4, 128, 64)
    with pytest.raises(ValueError, match="cs must be"):
        kc.quant_matmul(cp.zeros((2, 128), cp.float16), gl, cs=3)
    with pytest.raises(ValueError, match="cs must be"):
        kc.quant_matmul(cp.zeros((20, 128), cp.float16), gl, cs=2)


# ------------------------------------------------------------------------------------------------
# GPU through PyTorch: the custom op's CUDA kernel


@pytest.fixture(scope="module")
def torch_cuda(cp, cuda):
    """The torch module where CuPy and PyTorch both reach a GPU (tests/conftest.py's `cuda`)."""
    import torch

    return torch


@pytest.mark.gpu
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("M", [1, 3, 17, 90])
def test_torch_custom_op_on_cuda_equals_cpu(torch_cuda, bits, M):
    torch = torch_cuda
    from gptq_export.ops import quant_linear

    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    K, N = 576, 200
    layer = random_layer(rng, bits, K, N, 128, bits == 3)
    t = [torch.from_numpy(a) for a in layer]
    bias = torch.randn(N)
    x = torch.randn(M, K)
    cpu = quant_linear(x, *t, bias, K, N, bits, 128)
    dev = [a.cuda() for a in t]
    for dtype in (torch.float16, torch.float32, torch.bfloat16):
        got = quant_linear(x.cuda().to(dtype), *dev, bias.cuda(), K, N, bits, 128)
        assert got.device.type == "cuda" and got.dtype == dtype and got.shape == (M, N)
        err = float((got.float().cpu() - cpu).norm() / cpu.norm())
        assert err <= (2e-2 if dtype == torch.bfloat16 else TOL), f"{dtype} seed {seed}"
    # No bias (size 0), 3-D input.
    got = quant_linear(x.cuda().half().reshape(1, M, K), *dev, torch.zeros(0, device="cuda"), K, N, bits, 128)
    ref = quant_linear(x.reshape(1, M, K), *t, torch.zeros(0), K, N, bits, 128)
    assert float((got.float().cpu() - ref).norm() / ref.norm()) <= TOL


@pytest.mark.gpu
def test_torch_layer_cache_follows_the_tensors(torch_cuda):
    torch = torch_cuda
    from gptq_export.kernels import torch_cuda as tc

    rng = np.random.default_rng()
    layer = [torch.from_numpy(a).cuda() for a in random_layer(rng, 4, 256, 64, 128, False)]
    a = tc.gpu_linear(*layer, 4, 256, 64, layer[0].device)
    assert tc.gpu_linear(*layer, 4, 256, 64, layer[0].device) is a
    layer[1].mul_(2)  # in-place change of the scales: rebuilt
    assert tc.gpu_linear(*layer, 4, 256, 64, layer[0].device) is not a


@pytest.mark.gpu
@pytest.mark.parametrize("bits", (3, 4))
@pytest.mark.parametrize("M", (1, 2, 8))
@pytest.mark.parametrize("act", (False, True))
def test_torch_direct_launch_gives_the_general_path_bits(torch_cuda, monkeypatch, bits, M, act):
    """kernels.torch_cuda's direct launch (the default: device pointers on PyTorch's stream;
    prep_x first for act-order and fp32 x) against the general path (GPTQ_EXPORT_TORCH_DIRECT=0),
    also inside a captured CUDA graph."""
    torch = torch_cuda
    from gptq_export.kernels import torch_cuda as tc

    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    K, N = 2048, 768
    layer = [torch.from_numpy(a).cuda() for a in random_layer(rng, bits, K, N, 128, act)]
    gl = tc.gpu_linear(*layer, bits, K, N, layer[0].device)
    x = torch.randn(M, K, device="cuda").half()
    bias = torch.randn(N, device="cuda")
    cases = [(x, bias), (x, None), (x.float(), bias)]
    monkeypatch.setenv(tc.DIRECT_ENV, "0")
    want = [tc.linear(a, gl, b).cpu() for a, b in cases]
    monkeypatch.delenv(tc.DIRECT_ENV)
    assert tc._direct(x, gl, bias, M) is not None  # the direct path does apply here
    for (a, b), w in zip(cases, want, strict=True):
        torch.testing.assert_close(tc.linear(a, gl, b).cpu(), w, rtol=0, atol=0, msg=f"{a.dtype} seed {seed}")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        tc.linear(x, gl, bias)  # warm-up on the capture stream
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = tc.linear(x, gl, bias)
    g.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(y.cpu(), want[0], rtol=0, atol=0, msg=f"graph, seed {seed}")
