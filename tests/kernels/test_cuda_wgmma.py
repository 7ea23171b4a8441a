"""Hopper fused dequantize + wgmma GEMM for prefill (kernels/gptq_wgmma.cu, kernels/cuda_wgmma.py).

GPU tests (gpu marker; skipped cleanly without CuPy / a CUDA device, and on GPUs other than sm_90)
compare against a float64 NumPy reference built with kernels/reference.py, on fresh random data
(seed in each failure message), outputs poisoned with NaN before every run, through the checks
shared with test_cuda_mma.py (tolerance TOL there).
"""

from __future__ import annotations

import numpy as np
import pytest
import test_cuda
from test_cuda import random_layer, rel_err
from test_cuda_mma import CASES, check_equals_dequant_and_deterministic, check_fp32_and_misaligned, check_reference

from gptq_export.kernels import cuda as kc
from gptq_export.kernels import cuda_wgmma as kw

BITS = (2, 3, 4, 8)
MS = (1, 17, 64, 100, 130, 512)


# ------------------------------------------------------------------------------------------------
# CPU


def test_wgmma_source_and_names():
    assert "qgemm_wg" not in kc.source() and "qgemm_wg" in kc.source(wgmma=True)
    t = kw.TILES["128x128"]
    assert (t.bn, t.bm, t.threads) == (128, 128, 384)  # two consumer warpgroups + the producer's
    assert kw.kernel_name(4, 8, t) == f"qgemm_wg<4,8,1,128,2,1,0,{kw.stages_for(4, 8, t)}>"
    assert kw.TILES["128x128c2"].cn == 2 and kw.TILES["128x128c2"].bn == 128
    assert kw.TILES["256x128"].bn == 256 and kw.TILES["128x256"].bm == 256
    assert kw.TILES["128x256c4r"].wr and kw.kernel_name(4, 8, kw.TILES["128x128r"]).startswith("qgemm_wg<4,8,1,128,2,1,1,")
    t3 = kw.TILES["192x128c2r"]  # three consumer warpgroups
    assert (t3.bn, t3.bm, t3.cn, t3.threads) == (192, 128, 2, 512)
    assert kw.kernel_name(4, 8, t3).startswith("qgemm_wg<4,8,1,128,3,2,1,")


def test_wgmma_stream_k_plan(monkeypatch):
    """Stream-K tiles: one cluster per resident cluster, at most one per tile (so that a tile is
    split between two workers at most), a workspace tile per worker and CTA, split 1 only."""
    from gptq_export.kernels import cuda_mma

    monkeypatch.setattr(cuda_mma, "sm_count", lambda: 132)
    lay = kc.plan_layout(np.arange(4096) // 128, 4, 4096, 11008, 32)
    for label, clusters in (("128x256c4rs", 30), ("128x256c2rs", 66), ("128x128rs", 132), ("192x128rs", 132),
                            ("192x128c2rs", 66)):
        tile = kw.TILES[label]
        assert tile.sk and kw.kernel_name(4, 8, tile).endswith(",1>") and kw.kernel_name(4, 8, tile).count(",") == 8
        tiles = kw.clusters_along_n(lay.Np // 16, tile) * -(-512 // tile.bm)
        assert kw.cluster_tiles(lay, 512, tile) == tiles and kw.stream_k_workers(lay, 512, tile) == min(clusters, tiles)
        ws = kw.workspace_size(lay, 512, tile, 1)
        assert ws == kw.stream_k_workers(lay, 512, tile) * tile.cn * tile.bn * tile.bm
    assert kw.workspace_size(lay, 512, kw.TILES["128x256c2r"], 3) == 3 * 512 * 11008
    assert kw.workspace_size(lay, 512, kw.TILES["128x256c2r"], 1) == 0
    assert kw.stream_k_workers(lay, 1, kw.TILES["128x128rs"]) == 86  # fewer tiles than SMs: one each


@pytest.mark.parametrize("sms", (3, 16, 40, 132))
def test_wgmma_stream_k_walk_covers_every_unit_once(monkeypatch, sms):
    """The stream-K walk (the kernel's, mirrored by stream_k_segments) gives every unit of every
    tile to exactly one worker; a tile is whole in one worker or in two pieces, whose workers
    share one slot (the boundary between them) that no other tile uses; slots fit the workspace."""
    from gptq_export.kernels import cuda_mma

    monkeypatch.setattr(cuda_mma, "sm_count", lambda: sms)
    rng = np.random.default_rng(0)
    for _ in range(30):
        K, N, M = int(rng.integers(64, 9000)), int(rng.integers(16, 30000)), int(rng.integers(1, 1100))
        lay = kc.plan_layout(np.arange(K) // 128, 4, K, N, -(-K // 128))
        for label in ("128x256c4rs", "128x256c2rs", "128x128rs", "192x128c2rs"):
            tile = kw.TILES[label]
            walk = kw.stream_k_segments(lay, M, tile)
            assert len(walk) == kw.stream_k_workers(lay, M, tile)
            units, slots = {}, {}
            for c, segs in enumerate(walk):
                for ti, k0, k1, slot in segs:
                    assert 0 <= k0 < k1 <= lay.nu
                    units[ti] = units.get(ti, 0) + (k1 - k0)
                    if slot >= 0:
                        assert slot in (c, c + 1) and 1 <= slot < len(walk)
                        slots.setdefault(slot, set()).add((ti, c))
            assert units == {ti: lay.nu for ti in range(kw.cluster_tiles(lay, M, tile))}, (K, N, M, label)
            for slot, pieces in slots.items():  # one tile, one piece from each of the two workers
                assert len({ti for ti, _ in pieces}) == 1 and {c for _, c in pieces} == {slot - 1, slot}
    with pytest.raises(ValueError, match="no tail"):
        kw.WgTile(1, 256, 2, True, tail=kw.TILES["128x128r"], sk=True)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("gstc", (1, 2, 4, 8))
def test_wgmma_tiles_fit_shared_memory(bits, gstc):
    for tile in kw.TILES.values():
        if not kw.fits(bits, gstc, tile):
            assert tile.bm == 256  # only the widest tile may not fit (8 bits, or 8 groups per unit)
            with pytest.raises(ValueError, match="does not fit"):
                kw.stages_for(bits, gstc, tile)
            continue
        assert kw.MIN_STAGES <= kw.stages_for(bits, gstc, tile) <= kw.MAX_STAGES
        assert kw.smem_bytes(bits, gstc, tile) <= kw.SMEM_LIMIT
        assert kw.stage_bytes(bits, gstc, tile) % 128 == 0  # stages stay 128-byte aligned
    assert kw.fits(bits, gstc, kw.TILES["128x128"])


@pytest.mark.parametrize("group", (16, 32, 64, 128, 256))
@pytest.mark.parametrize("act_order", (False, True))
def test_wg_perm_is_the_fragment_order(group, act_order):
    """wg order holds every K' position once; chunk p = 2*ts + jh of a unit holds, at element e,
    the K' position of lane e // 2's pair 2*jh (half e % 2) of k-step ts (the tc formula)."""
    rng = np.random.default_rng(0)
    K = 300
    g_idx = np.arange(K) // group
    if act_order:
        g_idx = rng.permutation(g_idx)
    lay = kc.plan_layout(g_idx, 4, K, 64, int(g_idx.max()) + 1)
    wp = kw.wg_perm_numpy(lay)
    assert wp.dtype == np.int32 and wp.shape == (lay.Kp,)
    assert sorted(wp[wp >= 0].tolist()) == list(range(K)) and (wp < 0).sum() == (lay.perm < 0).sum()
    S, TS = lay.span, lay.span // 16
    for u in range(lay.nu):
        for ts in range(8):
            for jh in range(2):
                for e in range(8):
                    t, h = divmod(e, 2)
                    kp = u * 128 + (ts // TS) * S + t * (S // 4) + (ts % TS) * 4 + 2 * jh + h
                    assert wp[u * 128 + 16 * ts + 8 * jh + e] == lay.perm[kp]


def test_supported_asks_each_device_once(monkeypatch):
    calls = []

    class Fake:
        class cuda:
            class runtime:
                dev = 0

                @staticmethod
                def getDevice():
                    return Fake.cuda.runtime.dev

            class Device:
                def __init__(self, dev):
                    calls.append(dev)
                    self.compute_capability = "90" if dev == 0 else "80"

    monkeypatch.setattr(kc, "_cupy", lambda: Fake)
    monkeypatch.setattr(kw, "_SUPPORTED", {})
    assert kw.supported() and kw.supported()
    Fake.cuda.runtime.dev = 1
    assert not kw.supported() and not kw.available()
    assert calls == [0, 1]


# ------------------------------------------------------------------------------------------------
# GPU

cp = test_cuda.cp  # the shared CuPy fixture (skips without CUDA)


@pytest.fixture(scope="module")
def hopper(cp):
    if not kw.supported():
        pytest.skip(f"the wgmma kernel needs an sm_90 GPU, this one is sm_{cp.cuda.Device().compute_capability}")
    return cp


def _plans(bits, gstc):
    labels = [lb for lb, t in kw.TILES.items() if kw.fits(bits, gstc, t)]
    if bits not in (3, 4):
        labels = labels[:2]
    return [(lb, s) for lb in labels for s in (1, 3) if s == 1 or not (kw.TILES[lb].tail or kw.TILES[lb].sk)] + [
        (None, None)]


@pytest.mark.gpu
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("M", MS)
def test_gpu_wgmma_matches_float64_reference(hopper, bits, case, M):
    check_reference(hopper, bits, case, M, "wgmma", lambda b, gstc, _m: _plans(b, gstc))


@pytest.mark.gpu
@pytest.mark.parametrize("bits", (3, 4))
@pytest.mark.parametrize("sms", (3, 16))
def test_gpu_wgmma_tail_blocks_cover_the_outputs_left(hopper, monkeypatch, bits, sms):
    """With the GPU's SM count replaced by a small one, tiles with a tail launch twice (the big
    blocks over whole waves, the tail's over the outputs left) and still equal the reference."""
    from gptq_export.kernels import cuda_mma

    monkeypatch.setattr(cuda_mma, "sm_count", lambda: sms)
    tailed = [lb for lb, t in kw.TILES.items() if t.tail and kw.fits(bits, 8, t)]
    split = 0  # runs in which the tail's blocks did part of the outputs
    for K, N, group, act in ((4160, 300, 128, False), (1024, 3000, 128, True)):
        lay = kc.plan_layout(np.arange(K) // group, bits, K, N, -(-K // group))
        for M in (200, 512):
            starts = [kw.tail_start(lay, M, kw.TILES[lb]) for lb in tailed]
            assert all(0 < v <= lay.Np // 16 for v in starts)
            split += sum(v < lay.Np // 16 for v in starts)
            check_reference(hopper, bits, (K, N, group, act), M, "wgmma", lambda b, g, m: [(lb, 1) for lb in tailed])
    assert split >= 3


#: Layers (K, N, group, act-order) x rows of the stream-K GPU test: at 8 and 40 SMs, every stream-K
#: tile splits some tile between two workers in at least one of them (test_wgmma_stream_k_test_shapes_split).
SK_SHAPES = ((2600, 2100, 128, False), (1000, 2900, 64, True), (1500, 3500, 128, True), (1100, 1800, 128, False))
SK_ROWS = (200, 512)


def sk_tiles(bits: int) -> list[str]:
    return [lb for lb, t in kw.TILES.items() if t.sk and kw.fits(bits, 8, t)]


def sk_split_launches(bits: int) -> dict[str, int]:
    """Per stream-K tile: launches of SK_SHAPES x SK_ROWS in which the walk splits some tile (at the
    SM count cuda_mma.sm_count gives now)."""
    split = dict.fromkeys(sk_tiles(bits), 0)
    for K, N, group, _ in SK_SHAPES:
        lay = kc.plan_layout(np.arange(K) // group, bits, K, N, -(-K // group))
        for M in SK_ROWS:
            for lb in split:
                split[lb] += any(slot >= 0 for segs in kw.stream_k_segments(lay, M, kw.TILES[lb]) for *_, slot in segs)
    return split


@pytest.mark.parametrize("bits", (3, 4))
@pytest.mark.parametrize("sms", (8, 40))
def test_wgmma_stream_k_test_shapes_split(monkeypatch, bits, sms):
    from gptq_export.kernels import cuda_mma

    monkeypatch.setattr(cuda_mma, "sm_count", lambda: sms)
    split = sk_split_launches(bits)
    assert all(split.values()), split


@pytest.mark.gpu
@pytest.mark.parametrize("bits", (3, 4))
@pytest.mark.parametrize("sms", (8, 40))
def test_gpu_wgmma_stream_k_tiles_split_between_workers(hopper, monkeypatch, bits, sms):
    """With the GPU's SM count replaced by a small one, stream-K blocks walk several tiles and
    split some between two of them (the second to finish adds the first's partial sums): the
    outputs equal the reference, repeated runs are bit-identical, and the fix-up counters are
    left zero."""
    from gptq_export.kernels import cuda_mma

    monkeypatch.setattr(cuda_mma, "sm_count", lambda: sms)
    cp = hopper
    labels = sk_tiles(bits)  # each splits a tile in some launch below (test_wgmma_stream_k_test_shapes_split)
    for K, N, group, act in SK_SHAPES:
        for M in SK_ROWS:
            check_reference(hopper, bits, (K, N, group, act), M, "wgmma", lambda b, g, m: [(lb, 1) for lb in labels])
    rng = np.random.default_rng(test_cuda.fresh_seed())
    gl = kc.GpuLinear.from_packed(*random_layer(rng, bits, 2048, 1500, 128, False), bits, 2048, 1500)
    x = cp.asarray(rng.standard_normal((300, 2048)).astype(np.float16))
    for lb in labels:
        first = cp.asnumpy(kc.quant_matmul(x, gl, path="wgmma", tile=lb, split=1))
        np.testing.assert_array_equal(cp.asnumpy(kc.quant_matmul(x, gl, path="wgmma", tile=lb, split=1)), first)
    assert not cp.asnumpy(kw._sk_counters(1)).any()


@pytest.mark.gpu
@pytest.mark.parametrize("bits", (3, 4))
@pytest.mark.parametrize("case", [CASES[0], CASES[1], CASES[6]])
def test_gpu_wgmma_fp32_and_misaligned_x(hopper, bits, case):
    check_fp32_and_misaligned(hopper, bits, case, 150, "wgmma", "128x128")


@pytest.mark.gpu
@pytest.mark.parametrize("bits", (3, 4))
def test_gpu_wgmma_equals_dequant_path_and_is_deterministic(hopper, bits):
    check_equals_dequant_and_deterministic(hopper, bits, "wgmma", kw.TILES)


@pytest.mark.gpu
def test_gpu_wgmma_rejects_bad_arguments(hopper):
    cp = hopper
    rng = np.random.default_rng()
    layer = random_layer(rng, 4, 256, 64, 128, False)
    gl = kc.GpuLinear.from_packed(*layer, 4, 256, 64)
    x = cp.zeros((40, 256), cp.float16)
    with pytest.raises(ValueError, match="split"):
        kc.quant_matmul(x, gl, path="wgmma", tile="128x128", split=-1)
    with pytest.raises(ValueError, match="ws"):
        kc.quant_matmul(x, gl, path="wgmma", tile="128x128", split=2, ws=cp.zeros(10, cp.float32))
    with pytest.raises(ValueError, match="x must be"):
        kw.run(x, 40, gl, None, cp.zeros((40, 64), cp.float16), kw.TILES["128x128"], 1)
    with pytest.raises(ValueError, match="x buffer"):
        kw.prep(x, gl, cp.zeros(kw.xbuf_size(gl, 40) - 8, cp.float16))
    with pytest.raises(ValueError, match="rows per x block"):
        kw.prep(x, gl, rows=96)  # does not divide the 256 padded rows
    xw = kw.prep(x, gl)
    assert xw.shape == (gl.layout.Kp // 128, 1, 16, kw.padded_rows(40), 8)
    assert not cp.asnumpy(xw[:, :, :, 40:]).any()  # rows >= M are zeros
    with pytest.raises(ValueError, match="x must be"):  # the right size, not the blocked shape
        kw.run(xw.reshape(-1, 8), 40, gl, None, cp.zeros((40, 64), cp.float16), kw.TILES["128x128"], 1)
    with pytest.raises(ValueError, match="blocks of 64 rows"):  # 128-row blocks would read past them
        kw.run(kw.prep(x, gl, rows=64), 40, gl, None, cp.zeros((40, 64), cp.float16), kw.TILES["128x128"], 1)


@pytest.mark.gpu
@pytest.mark.parametrize("group,act", [(128, False), (128, True), (32, True), (-1, False), (32, False), (16, False)])
@pytest.mark.parametrize("M", (1, 33, 300))
@pytest.mark.parametrize("dtype", (np.float16, np.float32))
@pytest.mark.parametrize("rows", (None, 64, 256))
def test_gpu_prep_is_the_wg_order_gather_bit_exactly(hopper, group, act, M, dtype, rows):
    """Both prep kernels (16-byte loads for aligned fp16 x of a direct layout, spans 16 to 128; the
    element gather otherwise, forced with gather=True, or for x 2 bytes off alignment)."""
    cp = hopper
    rng = np.random.default_rng(test_cuda.fresh_seed())
    K, N = 1000, 64  # K' padded past K
    gl = kc.GpuLinear.from_packed(*random_layer(rng, 4, K, N, group, act), 4, K, N)
    assert gl.layout.direct == (not act)
    x = rng.standard_normal((M, K)).astype(dtype)
    perm = kw.wg_perm_numpy(gl.layout)
    Mp = kw.padded_rows(M)
    ref = np.zeros((Mp, gl.layout.Kp), np.float16)
    ref[:M, perm >= 0] = x[:, perm[perm >= 0]].astype(np.float16)
    xb = rows or Mp
    unaligned = cp.empty(x.size + 1, x.dtype)[1:].reshape(x.shape)  # C-contiguous, 2 or 4 bytes past 16
    unaligned[...] = cp.asarray(x)
    for xd, gather in ((cp.asarray(x), False), (cp.asarray(x), True), (unaligned, False)):
        out = cp.full(kw.xbuf_size(gl, M), np.nan, cp.float16)
        got = cp.asnumpy(kw.prep(xd, gl, out, rows, gather=gather))  # [Kp/128, Mp/rows, 16, rows, 8]
        assert got.shape == (gl.layout.Kp // 128, Mp // xb, 16, xb, 8)
        # -> [Mp/rows, rows, Kp/128, 16, 8] = [Mp, Kp]
        np.testing.assert_array_equal(got.transpose(1, 3, 0, 2, 4).reshape(Mp, -1).view(np.uint16), ref.view(np.uint16))


@pytest.mark.gpu
@pytest.mark.parametrize("label", ("128x256c4r", "128x256c2r+128x128r", "128x128r", "256x64r", "128x128c2", "128x256c4rs",
                                   "128x128rs"))
def test_gpu_wgmma_x_blocked_or_not_gives_the_same_bits(hopper, monkeypatch, label):
    """x in blocks of the tile's BM rows (one bulk copy per stage) and in one block (a copy per
    chunk) give bit-identical outputs, tails (another BM, here on 8 SMs) included."""
    from gptq_export.kernels import cuda_mma

    monkeypatch.setattr(cuda_mma, "sm_count", lambda: 8)
    cp = hopper
    rng = np.random.default_rng(test_cuda.fresh_seed())
    K, N, M = 1000, 1200, 300
    gl = kc.GpuLinear.from_packed(*random_layer(rng, 4, K, N, 128, True), 4, K, N)
    x = cp.asarray(rng.standard_normal((M, K)).astype(np.float16))
    tile = kw.TILES[label]
    assert tile.tail is None or kw.tail_start(gl.layout, M, tile) < gl.layout.Np // 16  # the tail runs
    outs = []
    for rows in (tile.bm, None):
        out = cp.full((M, N), np.nan, cp.float16)
        outs.append(cp.asnumpy(kw.run(kw.prep(x, gl, rows=rows), M, gl, None, out, tile, 1)).view(np.uint16))
    assert not np.isnan(outs[0].view(np.float16)).any()
    np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.gpu
def test_gpu_wgmma_through_the_torch_front_end(hopper):
    """torch_cuda.linear(path="wgmma") (buffers from PyTorch's allocator) equals path="dequant"."""
    torch = pytest.importorskip("torch")
    from gptq_export.kernels import torch_cuda as tc

    rng = np.random.default_rng()
    K, N = 1000, 200
    layer = random_layer(rng, 4, K, N, 128, True)
    dev = torch.device("cuda")
    tensors = [torch.as_tensor(a).to(dev) for a in layer]
    gl = tc.gpu_linear(*tensors, 4, K, N, dev)
    x = torch.randn(3, 100, K, device=dev, dtype=torch.float16)
    bias = torch.randn(N, device=dev, dtype=torch.float32)
    a = tc.linear(x, gl, bias, path="dequant").double().cpu().numpy()
    b = tc.linear(x, gl, bias, path="wgmma")
    assert b.shape == (3, 100, N) and b.dtype == torch.float16
    assert rel_err(b.double().cpu().numpy(), a) < 1e-3


def test_auto_dispatch_picks_wgmma_only_on_hopper(monkeypatch):
    def layer(bits, K, N):
        return kc.GpuLinear(kc.plan_layout(np.arange(K) // 128, bits, K, N, -(-K // 128)), None, None, None)

    big, small = layer(4, 8192, 8192), layer(4, 4096, 4096)
    monkeypatch.setattr(kw, "available", lambda: True)
    for M in (kc.WG_MIN_M, kc.WG_MAX_M):
        assert kc.auto_path(big, M) == "wgmma" and kc.auto_path(layer(3, 4096, 11008), M) == "wgmma"
        assert kc.auto_path(small, M) != "wgmma" and kc.auto_path(layer(8, 8192, 8192), M) == "dequant"
    mid = layer(4, 4096, 11008)  # >= WG_MIN_WEIGHTS: wgmma up to 512 rows (stream-K tiles there)
    assert kc.auto_path(big, kc.WG_MIN_M - 1) == "mma" and kc.auto_path(mid, kc.WG_MAX_M) == "wgmma"
    huge = layer(4, 8192, 28672)
    assert kc.auto_path(huge, kc.WG_MAX_M) == "wgmma" and kc.auto_path(huge, kc.WG_MAX_M + 1) == "dequant"
    assert kc.auto_path(mid, kc.WG_MAX_M + 1) == "dequant"
    # 17..64 rows: wgmma on layers with >= WG_MIN_WEIGHTS weights and >= WG_SMALL_MIN_UNITS K' units
    assert kc.auto_path(big, kc.WG_SMALL_MIN_M) == "wgmma" and kc.auto_path(big, kc.WG_SMALL_MAX_M) == "wgmma"
    assert kc.auto_path(big, kc.WG_SMALL_MIN_M - 1) == "fused" and kc.auto_path(big, kc.WG_SMALL_MAX_M + 1) == "mma"
    assert kc.auto_path(layer(3, 11008, 4096), 32) == "wgmma" and kc.auto_path(huge, 64) == "wgmma"
    assert kc.auto_path(mid, 32) == "mma" and kc.auto_path(small, 64) == "mma"  # 32 units; 16M weights
    assert kc.auto_path(layer(8, 8192, 8192), 32) != "wgmma"
    monkeypatch.setattr(kw, "available", lambda: False)
    assert kc.auto_path(big, 128) == "mma" and kc.auto_path(big, 256) == "dequant" and kc.auto_path(big, 32) == "mma"


def test_default_plan_covers_the_gpu(monkeypatch):
    from gptq_export.kernels import cuda_mma

    monkeypatch.setattr(cuda_mma, "sm_count", lambda: 132)
    for K, N, M, label, split in ((8192, 28672, 64, "256x64r", 1), (8192, 8192, 32, "256x64r", 4),
                                  (11008, 4096, 17, "256x64r", 8), (8192, 8192, 65, "256x128", 4),
                                  (8192, 28672, 128, "256x128", 1), (8192, 8192, 128, "256x128", 4),
                                  (8192, 28672, 256, "128x256c4r", 1),
                                  (8192, 8192, 512, "192x128rs", 1), (4096, 11008, 256, "128x256c4r", 1),
                                  (4096, 11008, 512, "192x128rs", 1), (8192, 28672, 512, "128x256c4rs", 1),
                                  (8192, 28672, 300, "128x256c4rs", 1), (4096, 11008, 257, "192x128rs", 1),
                                  (4096, 4096, 1024, "192x128rs", 1),
                                  (11008, 4096, 256, "128x256c2r", 4), (4096, 4096, 256, "128x256c2r", 4),
                                  (4096, 4096, 512, "128x128r", 1), (11008, 4096, 512, "128x128r", 1),
                                  (8192, 8192, 256, "128x128r", 1), (11008, 4096, 384, "128x128r", 1)):
        lay = kc.plan_layout(np.arange(K) // 128, 4, K, N, K // 128)
        tile, sp = kw.default_plan(kc.GpuLinear(lay, None, None, None), M)
        assert (tile.label, sp) == (label, split), (K, N, M)
    lay = kc.plan_layout(np.arange(4096) // 128, 4, 4096, 11008, 32)  # two launches: whole waves, then the tail
    assert kw.tail_start(lay, 512, kw.TILES["128x256c2r+128x128r"]) == 528 and lay.Np // 16 == 688
    assert kw.resident_blocks(4) == 120 and kw.resident_blocks(2) == 132  # 30 clusters of 4 fit 132 SMs
    for bits, group in ((8, 128), (4, 16), (2, 16)):  # every default tile fits shared memory
        lay = kc.plan_layout(np.arange(8192) // group, bits, 8192, 8192, 8192 // group)
        for M in (1, 64, 65, 128, 129, 512):
            tile, _ = kw.default_plan(kc.GpuLinear(lay, None, None, None), M)
            assert kw.fits(bits, lay.gstc, tile)
