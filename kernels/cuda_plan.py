"""Names and default plans of the fused small-M kernel (qgemm_small / qgemm_split) and of the
helper kernels, as plain functions of the layer shape (no GPU needed; kernels.cuda launches them
and re-exports these names).
"""

from __future__ import annotations

from .cuda_layout import N_ALIGN, THREADS, WORDS_PER_UNIT

#: M <= 8, 3/4 bits, groups >= 128: the small-M kernel takes two output tiles (32 columns) per block
#: and one unit of each in flight per warp when that leaves at least this many blocks per SM, else
#: one tile. Measured on an H100 (tools/bench_kernels.py --gemv-sweep, docs/gpu-results.md), M = 1:
#: 8192 x 28672 4-bit 46.7 -> 44.8 us, 3-bit 42.4 -> 38.9 us, 4096 x 11008 4-bit 13.1 -> 11.7 us;
#: slower where N gives fewer blocks (4096 x 4096: 6.8 -> 7.7 us; 8192 x 8192 about even).
NT2_BLOCKS_PER_SM = 2.5


def small_kernel_name(bits: int, mt: int, nt: int, gstc: int, xs: bool, occ: int = 2, pd: int = 0,
                      cs: int = 1, pdl: bool = False) -> str:
    """Name of the fused kernel: qgemm_small (cs = 1) or the cluster split-K qgemm_split (mt = 1);
    with `pdl`, its variant for programmatic dependent launch (qgemm_small_pdl / qgemm_split_pdl).
    pd = units in flight per warp (0: the kernel's default for occ)."""
    suffix = "_pdl" if pdl else ""
    if cs == 1:
        return f"qgemm_small{suffix}<{bits},{mt},{nt},{gstc},{int(xs)},{occ},{pd}>"
    if mt != 1 or cs not in (2, 4):
        raise ValueError(f"split-K kernels have MT = 1 and 2 or 4 blocks per cluster, got MT={mt} CS={cs}")
    return f"qgemm_split{suffix}<{bits},{nt},{gstc},{int(xs)},{occ},{pd},{cs}>"


def small_params(name: str) -> dict | None:
    """Template arguments of a fused-kernel name (None for other kernels), with "pdl" (0 / 1)."""
    for prefix, keys in (("qgemm_small", ("bits", "mt", "nt", "gstc", "xs", "occ", "pd")),
                         ("qgemm_split", ("bits", "nt", "gstc", "xs", "occ", "pd", "cs"))):
        for pdl in (0, 1):
            start = prefix + ("_pdl<" if pdl else "<")
            if name.startswith(start):
                p = dict(zip(keys, (int(v) for v in name[len(start):-1].split(",")), strict=True))
                p.setdefault("mt", 1)
                p.setdefault("cs", 1)
                p["pdl"] = pdl
                return p
    return None


def red_bytes(mt: int, nt: int, cs: int = 1) -> int:
    """Static shared memory of the fused kernel's reduction (RedCfg in gptq_small.cu)."""
    tile = 8 * mt * 16 * nt * 4
    return (THREADS // 32) * tile + (tile if cs > 1 else 0) if mt <= 2 else tile


def dequant_kernel_name(bits: int, gstc: int) -> str:
    return f"dequant_tc<{bits},{gstc}>"


def repack_kernel_name(bits: int) -> str:
    return f"repack_tc<{bits}>"


def common_kernel_names(bits=(2, 3, 4, 8), gstcs=(8, 4, 2, 1), mts=(1, 2, 4, 8)) -> list[str]:
    """Kernels the tests and benchmarks use (for `precompile`)."""
    names = ["repack_sz", "prep_x", "prep_xwg", "prep_xwg_direct"]
    for b in bits:
        names.append(repack_kernel_name(b))
        for gc in gstcs:
            names.append(dequant_kernel_name(b, gc))
            for mt in mts:
                nt = default_nt(b, mt, gc, None)
                names += [small_kernel_name(b, mt, nt, gc, False), small_kernel_name(b, mt, nt, gc, False,
                                                                                   default_occ_global(b, mt, gc))]
                if mt <= 2:
                    names += [small_kernel_name(b, mt, nt, gc, True, occ) for occ in {2, default_occ(b, mt, gc)}]
    for b in (3, 4):  # tile and occupancy variants of the tests and benchmarks
        names += [small_kernel_name(b, mt, nt, 8, False) for mt, nt in ((2, 1), (2, 2), (4, 1), (4, 2))]
        names += [small_kernel_name(b, 2, 1, 8, True)] + [small_kernel_name(b, 1, 1, 8, True, o) for o in (3, 4)]
        names += [small_kernel_name(b, 1, 2, 8, xs, 4, default_pd(1, 2)) for xs in (True, False)]  # wide N
    for b in (3, 4):  # units-in-flight variants of the tests
        names += [small_kernel_name(b, 1, 1, 8, True, occ, pd, cs) for occ, pd in ((4, 1), (3, 3), (2, 6))
                  for cs in (1, 2)]
    for b in bits:  # split-K (tests: every group class; the default plans of the benchmarks)
        for gc in gstcs:
            for cs in (2, 4):
                names += [small_kernel_name(b, 1, 1, gc, xs, default_occ(b, 1, gc) if xs else 2, 0, cs)
                          for xs in (True, False)]
    return sorted(set(names))


def sweep_kernel_names(bits=(4, 3), gstc: int = 8, wide: bool = False) -> list[tuple[str, dict]]:
    """Fused-kernel variants for M <= 8 that tools/bench_kernels.py --sweep times: (name, quant_matmul
    keyword arguments). wide: variants of units in flight per warp (pd) and output tiles per
    block (nt) at every occupancy, no split-K (--gemv-sweep)."""
    out = []
    for b in bits:
        if wide:
            for xs in (True, False):
                for occ in (4, 3, 2):
                    for pd in (0, 1, 2):
                        for nt in (1, 2, 4):
                            kw = {"xs": xs, "occ": occ, "cs": 1, "pd": pd, "nt": nt}
                            out.append((small_kernel_name(b, 1, nt, gstc, xs, occ, pd, 1), kw))
            continue
        for cs in (1, 2, 4):
            for xs, occs in ((True, (4, 3, 2)), (False, (4, 2))):
                for occ in occs:
                    kw = {"xs": xs, "occ": occ, "cs": cs, "pd": 0}
                    out.append((small_kernel_name(b, 1, 1, gstc, xs, occ, 0, cs), kw))
    return out


def default_nt(bits: int, mt: int, gstc: int, N: int | None, sms: int | None = None) -> int:
    """Output tiles (16 columns) per warp: 2 shares each x fragment between 32 columns at MT = 2
    (M 9..16) when the prefetch slot stays small enough to fit 128 registers without spills; and
    at MT = 1 (M <= 8) for 3/4 bits with groups >= 128 when N (on a GPU of `sms` SMs) still gives
    NT2_BLOCKS_PER_SM blocks per SM (then one unit of each tile in flight: `default_pd`)."""
    ngu = 8 // gstc if gstc < 8 else 1
    if mt == 1 and bits in (3, 4) and gstc == 8 and N is not None and sms:
        return 2 if -(-N // N_ALIGN) * N_ALIGN // 32 >= NT2_BLOCKS_PER_SM * sms else 1
    return 2 if mt == 2 and WORDS_PER_UNIT[bits] + 2 * ngu <= 12 else 1


def default_pd(mt: int, nt: int) -> int:
    """Units in flight per warp of the fused kernel (0: the kernel's own default for its occupancy):
    1 for MT = 1 with two output tiles per block (two units in flight, as NT = 1 has by default)."""
    return 1 if mt == 1 and nt == 2 else 0


def default_occ(bits: int, mt: int, gstc: int) -> int:
    """Blocks per SM of the staged-x kernel: 4 (64 registers, 2 units in flight per warp) for 3/4
    bits with groups >= 128 (measured fastest), 3 (80 registers) where its prefetch slots fit
    without spills, else 2."""
    ngu = 8 // gstc if gstc < 8 else 1
    if mt == 1 and gstc == 8 and bits in (3, 4):
        return 4
    return 3 if mt == 1 and WORDS_PER_UNIT[bits] + 2 * ngu <= 10 else 2


def default_occ_global(bits: int, mt: int, gstc: int) -> int:
    """Blocks per SM of the kernel reading x from global memory: 4 for M <= 8 where a prefetch slot
    is at most 10 registers (2/3/4 bits, groups >= 64 or 128; measured fastest at M = 1 and 4 on an
    H100: tools/bench_kernels.py --sweep), else 2."""
    ngu = 8 // gstc if gstc < 8 else 1
    return 4 if mt == 1 and WORDS_PER_UNIT[bits] + 2 * ngu <= 10 else 2


def mt_for(M: int) -> int:
    return 1 if M <= 8 else 2 if M <= 16 else 4 if M <= 32 else 8
