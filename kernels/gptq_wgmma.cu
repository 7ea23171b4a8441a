// Fused dequantize + wgmma GEMM for prefill on Hopper (sm_90a), reading the same GPU tile layout
// ("tc" layout, kernels/cuda.py docstring) as the other kernels. Compiled as its own module
// (gptq_cuda.cu + gptq_cuda_repack.cu + gptq_mma.cu + this file, with -arch=sm_90a): it uses their
// helpers (Fmt, magic_pair, hsub2, hmul2, prmt, f2h, smem_u32, ...).
//
// qgemm_wg<BITS, GSTC, FW, BM, NWG, CN, WR, STAGES, SK = 0>: y[M, N] = x[M, K] @ W (+ bias)
//   Orientation as in qgemm_mma: W^T (rows = outputs) is the A operand, decoded in registers from
//   the packed words (wgmma's register-A fragment of a warp is mma.m16n8k16's A fragment, so each
//   warp decodes its 16-output n-tile exactly as qgemm_mma does); x^T (BM tokens x k16) is the B
//   operand, read by the tensor cores from shared memory (K-major, no swizzle).
//   Block: NWG consumer warpgroups + a producer warpgroup (one warp issues the copies; setmaxnreg
//   moves its registers to the consumers); consumer warpgroup wg owns FW m64 tiles
//   (64 outputs each) x BM tokens, with FW wgmma.m64n{BM}k16 per k-step. Block tile BN = 64*FW*NWG
//   outputs x BM tokens. K' is walked one unit (128 positions = 8 k-steps) per pipeline stage.
//   The producer warp fills the STAGES slots with 1-D bulk copies (the TMA engine) completing on
//   one "full" mbarrier per slot, and refills a slot once every consumer thread has arrived on its
//   "consumed" mbarrier (CTA-local; with clusters the producer then also waits for every CTA's
//   producer on the slot's "empty" mbarrier). Consumers release unit it - 1 once INFLIGHT k-steps
//   of unit it are issued (at most INFLIGHT wgmma groups, all of unit it, are then pending), so
//   the producer fills unit it + STAGES - 1 while unit it computes. The release is a predicated
//   arrive, not a branch: a branch between the wgmma of the k-step loop made ptxas serialize them
//   (C7513; seen on every 128-token tile). WR = 1: the packed weights
//   skip shared memory: each consumer warp loads its n-tile's words for the next unit into
//   registers at the top of the unit, only SZ and X are staged. These are ordinary loads, not the
//   GEMV's read-only (.nc) ones: ptxas sank .nc loads past the k-steps to the end of the unit (their
//   registers are used only by the next unit), so each unit waited out most of a DRAM latency;
//   an ordinary load stays ahead of the first k-step's release-ordered slot arrive.
//   Stage: W (BN/16 blocks of 32*WPU words, verbatim; none with WR), SZ (NGU rows of BN sz words), X: 16 chunks
//   p = 2*ts + jh of BM rows x 16 bytes, chunk (p, r) at (p*BM + r)*16: the wgmma canonical K-major
//   layout (8 x 16-byte core matrices: 8-row groups 128 bytes apart, the two K halves jh BM*16
//   bytes apart; the launcher passes these as sbo / lbo).
//   x is prepared by prep_xwg (kernels/cuda_wgmma.py `prep`) as xw[Kp/128][Mp/XB][16][XB][8] fp16
//   in "wg order": blocks of XB rows (a multiple of 32 dividing Mp); 16-byte chunk p of unit u
//   holds, at element e, the K' position of A-fragment element (k-step ts = p/2, pair 2*jh, lane
//   t = e/2, half e%2), so that B's k index matches the decoded A; rows m >= M are zeros, Mp is a
//   multiple of BM. With XB = BM (the launcher's default) a block's stage of x is one contiguous
//   16*BM*16-byte range: one bulk copy (CN: one per CTA of the cluster, multicast) instead of 16
//   (at 512 rows, H100: 128 x 128 blocks 13-16% faster, 128 x 256 blocks in clusters 5-6%;
//   docs/gpu-results.md, eighth session);
//   any other XB (tail blocks of another BM, XB = Mp) takes 16 / CN copies of BM rows per CTA.
//   CN > 1: clusters of CN CTAs along N share each X stage (one multicast bulk copy per chunk, the
//   chunks spread over the CTAs); a slot is refilled only after every CTA of the cluster released
//   it (the producers arrive on each other's "empty" mbarriers). The grid's x is a multiple of CN;
//   CTAs past n-tile nt_hi only help load X.
//   Output range: the grid covers the n-tiles (16 outputs) [nt_lo, nt_hi) of N' only (block x starts
//   at n-tile nt_lo + x * BN/16), so that two launches of different tiles can share one layer (the
//   last, partial wave of a big tile done in smaller tiles: kernels/cuda_wgmma.py `tail_start`).
//   split > 1: blockIdx.z takes the units [NU*z/split, NU*(z+1)/split) and writes fp32 partials to
//   ws[z][M][N] (mma_reduce adds them in z order, adds bias and casts).
//
// xw: as above, 16-byte aligned; xb: its rows per block (XB). qw, sz: the tc layout; upg: units per group (GSTC == 8).
// bias: fp32 [N] or null. y: [M, N] contiguous, fp16 (y_f32 = 0) or fp32. ws: fp32 [split, M, N].
// lbo / sbo: descriptor byte offsets (BM*16 and 128). nt_lo, nt_hi: the n-tiles computed, 0 <= nt_lo < nt_hi <= Np/16.
// Grid: (ceil((nt_hi - nt_lo) * 16 / BN) rounded up to a multiple of CN, ceil(M / BM), split); block: 128*NWG + 128 threads;
// dynamic shared memory: STAGES * WgCfg::STAGE_BYTES (128-byte aligned stages).

// Profiling only (tools/probe_wgmma.py --ablate compiles with -DWG_ABLATE=1..3): 1 skips the
// weight decode (constant A fragments), 2 skips the wgmma, 3 also the x copies. Results are then
// wrong. (4 and 5, x as one copy per stage, are what xb = BM now does.)
#ifndef WG_ABLATE
#define WG_ABLATE 0
#endif
// Profiling only: WG_X_CHUNKS=1 copies x chunk by chunk (16 / CN copies per CTA and stage) also
// where xb = BM, as before the eighth session.
#ifndef WG_X_CHUNKS
#define WG_X_CHUNKS 0
#endif
// x stage of a cluster (where xb = BM): CTA 0 copies all 16 chunks to every CTA (one multicast
// copy per cluster and stage). WG_X_ONE_ISSUER=0 (profiling) has each CTA copy its 16 / CN chunks
// instead, as in the eighth session. H100, 4-bit g128, 512 rows, kernel only: 128x256c4r 442.4 ->
// 409.0 us on 8192 x 28672, 118.1 -> 106.3 on 4096 x 11008; clusters of 2 within 1%
// (docs/gpu-results.md, ninth session).
#ifndef WG_X_ONE_ISSUER
#define WG_X_ONE_ISSUER 1
#endif
// Profiling only (tools/probe_wgmma.py --variants): WG_NC_PREFETCH=1 loads the WR tiles' next
// unit with read-only (.nc) loads, as before; ptxas then sinks them to the unit's last k-steps,
// which leaves one k-step, not seven, to hide their DRAM latency (tools/sass_wgmma.py shows it).
#ifndef WG_NC_PREFETCH
#define WG_NC_PREFETCH 0
#endif

template <int N>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 2], const u32 (&a)[4], u64 desc, int scale_d);

template <>
__device__ __forceinline__ void wgmma_rs<64>(float (&d)[32], const u32 (&a)[4], u64 desc, int scale_d) {
    asm volatile(
        "{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %37, 0;\n\t"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
        "{"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
        "}, {%32, %33, %34, %35}, %36, p, 1, 1, 0;\n\t}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(scale_d));
}
template <>
__device__ __forceinline__ void wgmma_rs<128>(float (&d)[64], const u32 (&a)[4], u64 desc, int scale_d) {
    asm volatile(
        "{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %69, 0;\n\t"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
        "{"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
        "}, {%64, %65, %66, %67}, %68, p, 1, 1, 0;\n\t}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(scale_d));
}
template <>
__device__ __forceinline__ void wgmma_rs<256>(float (&d)[128], const u32 (&a)[4], u64 desc, int scale_d) {
    asm volatile(
        "{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %133, 0;\n\t"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16 "
        "{"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
        "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
        "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
        "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
        "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
        "}, {%128, %129, %130, %131}, %132, p, 1, 1, 0;\n\t}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),
          "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),
          "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]),
          "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]),
          "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]),
          "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),
          "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]),
          "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]),
          "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(scale_d));
}


__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wg_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }
// Orders the compiler's view of accumulator registers around asynchronous wgmma (as CUTLASS's
// warpgroup_fence_operand).
template <int R>
__device__ __forceinline__ void fence_regs(float (&d)[R]) {
#pragma unroll
    for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// Shared-memory matrix descriptor (no swizzle): start address, leading (K) and stride (8-row)
// byte offsets, each in units of 16 bytes.
__device__ __forceinline__ u64 wg_desc(u32 addr, int lbo, int sbo) {
    return (u64)((addr & 0x3FFFFu) >> 4) | ((u64)((lbo >> 4) & 0x3FFF) << 16) | ((u64)((sbo >> 4) & 0x3FFF) << 32);
}

template <int BITS, int GSTC, int FW, int BM, int NWG, int WR>
struct WgCfg {
    static constexpr int WPU = Fmt<BITS>::WPU;
    static constexpr int NGU = GSTC < 8 ? 8 / GSTC : 1;
    static constexpr int S = GSTC < 8 ? 16 * GSTC : 128;
    // consumer warpgroups + a producer warpgroup (one warp of it issues the copies)
    static constexpr int NTHREADS = 128 * NWG + 128;
    // registers per thread after setmaxnreg: the producer warpgroup gives its share to the consumers.
    // The CTA's pool is what it launched with, ENTRY_REGS per thread (ptxas: 65536 / NTHREADS in
    // multiples of 8: 168 for 384 threads, 128 for 512); setmaxnreg.inc waits until the pool has
    // the registers asked for, so the consumers must not ask for more than the producer gave back
    // (else they wait forever: the seventeenth session's x-direct experiment did, docs/gpu-results.md).
    static constexpr int ENTRY_REGS = 65536 / NTHREADS / 8 * 8;
    static constexpr int PRODUCER_REGS = 40;
    static constexpr int CONSUMER_REGS_RAW = (ENTRY_REGS * NTHREADS - 128 * PRODUCER_REGS) / (128 * NWG) / 8 * 8;
    static constexpr int CONSUMER_REGS = CONSUMER_REGS_RAW > 256 ? 256 : CONSUMER_REGS_RAW;
    static_assert(PRODUCER_REGS <= ENTRY_REGS && CONSUMER_REGS >= ENTRY_REGS &&
                      128 * NWG * (CONSUMER_REGS - ENTRY_REGS) <= 128 * (ENTRY_REGS - PRODUCER_REGS),
                  "setmaxnreg: the consumers take at most what the producer warpgroup gives back");
    // wgmma groups left in flight while the next k-step is decoded (each holds its A registers);
    // 1 where the accumulators leave no registers for more: ptxas decides from the register count
    // at kernel entry (168 for 384 threads), not from what setmaxnreg grants, and serializes a
    // second group there (C7512; tools/sass_wgmma.py, docs/gpu-results.md, seventh session)
    static constexpr int INFLIGHT = FW * BM >= 256 ? 1 : 2;
    static constexpr int BN = 64 * FW * NWG;
    static constexpr int W_BYTES = WR ? 0 : (BN / 16) * 32 * WPU * 4;  // WR: weights straight to registers
    static constexpr int SZ_BYTES = NGU * BN * 4;
    static constexpr int X_OFF = (W_BYTES + SZ_BYTES + 127) / 128 * 128;
    static constexpr int X_BYTES = 16 * BM * 16;
    static constexpr int STAGE_BYTES = X_OFF + X_BYTES;
};

// Register reallocation between warpgroups (every warp of a warpgroup executes it).
template <int R>
__device__ __forceinline__ void setmaxnreg_inc() { asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(R)); }
template <int R>
__device__ __forceinline__ void setmaxnreg_dec() { asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(R)); }

// mbarrier (one per stage, count 1: the expect_tx arrival) and 1-D bulk copies (TMA engine).
__device__ __forceinline__ void mbar_init(u32 bar, u32 count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_expect_tx(u32 bar, u32 bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
// Waits for the phase of parity `parity` to complete; traps (a launch error instead of a hang) after
// about 2^26 unsuccessful tries (seconds), which only a broken pipeline can take.
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {
    for (u32 tries = 0;; ++tries) {
        u32 done;
        asm volatile(
            "{\n\t.reg .pred P1;\n\t"
            "mbarrier.try_wait.parity.shared::cta.b64 P1, [%1], %2;\n\t"
            "selp.u32 %0, 1, 0, P1;\n\t}\n"
            : "=r"(done)
            : "r"(bar), "r"(parity)
            : "memory");
        if (done) return;
        if (tries > (1u << 26)) __trap();
    }
}
__device__ __forceinline__ void bulk_g2s(u32 dst, const void* src, u32 bytes, u32 bar) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
                 "l"(src), "r"(bytes), "r"(bar)
                 : "memory");
}
// The same bulk copy written to the same shared-memory offset (and its mbarrier signalled at the
// same offset) in every CTA of the cluster named by `mask`.
__device__ __forceinline__ void bulk_g2s_multicast(u32 dst, const void* src, u32 bytes, u32 bar, u16 mask) {
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster [%0], [%1], %2, [%3], "
        "%4;\n" ::"r"(dst),
        "l"(src), "r"(bytes), "r"(bar), "h"(mask)
        : "memory");
}
// Arrive (release, cluster scope) on the mbarrier at this CTA's shared address `bar` in CTA `cta` of the cluster.
__device__ __forceinline__ void mbar_arrive_remote(u32 bar, u32 cta) {
    u32 remote;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(bar), "r"(cta));
    asm volatile("mbarrier.arrive.release.cluster.shared::cluster.b64 _, [%0];\n" ::"r"(remote) : "memory");
}
// Arrive on the CTA-local mbarrier `bar` where `cond` (a predicated instruction, no branch: a branch
// between the wgmma of a k-step loop makes ptxas serialize them, C7513).
__device__ __forceinline__ void mbar_arrive_local_if(u32 bar, bool cond) {
    asm volatile("{\n\t.reg .pred p;\n\tsetp.ne.u32 p, %1, 0;\n\t@p mbarrier.arrive.shared::cta.b64 _, [%0];\n\t}\n" ::"r"(bar),
                 "r"((u32)cond) : "memory");
}

// Stage of unit u, issued by the lanes of one warp as bulk copies completing on `bar`:
// W (n-tile blocks of 32*WPU words), SZ (NGU rows of the block's sz words), X (16 chunks of BM rows:
// one copy where xb = BM, else one per chunk).
// N-tiles >= Np/16 are not copied (their A rows are garbage; those outputs are not written).
// With a cluster of CN CTAs along N (CN > 1), all of which share m0 and the units, x goes to every
// CTA of the cluster (multicast): where xb = BM, CTA 0 copies all 16 chunks at once (WG_X_ONE_ISSUER),
// else CTA `rank` copies chunks p = rank*16/CN .. (rank+1)*16/CN - 1; each CTA's barrier expects its
// own W and SZ plus all 16 X chunks.
template <int BITS, int GSTC, int FW, int BM, int NWG, int CN, int WR>
__device__ __forceinline__ void wg_issue_stage(u32 s_st, u32 bar, int u, const u16* __restrict__ xw, int Mp, int xb,
                                               const u32* __restrict__ qw, const u32* __restrict__ sz, int Np, int nt_hi,
                                               int NU, int upg, int nt0, int m0, int lane, u32 rank) {
    using C = WgCfg<BITS, GSTC, FW, BM, NWG, WR>;
    constexpr int NB = WR ? 0 : C::BN / 16, WB = 32 * C::WPU * 4, NX = 16 / CN;
    const int ntv = max(0, min(C::BN / 16, nt_hi - nt0));
    // chunk p of this unit at xs + p * xb * 8 (contiguous where xb = BM: one copy)
    const u16* xs = xw + ((size_t)(u * (Mp / xb) + m0 / xb) * 16 * xb + m0 % xb) * 8;
    const bool x1 = !WG_X_CHUNKS && xb == BM;
    const bool x_all = WG_X_ONE_ISSUER && x1;  // one copy for the whole cluster, by CTA 0
    const int nx = x_all ? (rank == 0) : x1 ? 1 : NX;
    const u32 szb = ntv * 64;
    constexpr int XB = WG_ABLATE == 3 ? 0 : C::X_BYTES;
    if (lane == 0) mbar_expect_tx(bar, (WR ? 0 : ntv * WB) + (ntv ? C::NGU * szb : 0) + XB);
    __syncwarp();
    for (int j = lane; j < NB + C::NGU + (WG_ABLATE == 3 ? 0 : nx); j += 32) {
        if (j < NB) {
            if (j < ntv) bulk_g2s(s_st + j * WB, qw + ((size_t)(nt0 + j) * NU + u) * (32 * C::WPU), WB, bar);
        } else if (j < NB + C::NGU) {
            const int gi = j - NB;
            const int grp = GSTC < 8 ? u * C::NGU + gi : u / upg;
            if (ntv) bulk_g2s(s_st + C::W_BYTES + gi * C::BN * 4, sz + (size_t)grp * Np + nt0 * 16, szb, bar);
        } else {  // chunks p .. p + n - 1
            const int p = x_all ? 0 : (int)rank * NX + (x1 ? 0 : j - NB - C::NGU), n = x_all ? 16 : x1 ? NX : 1;
            const u16* src = xs + (size_t)p * xb * 8;
            if constexpr (CN == 1) bulk_g2s(s_st + C::X_OFF + p * BM * 16, src, n * BM * 16, bar);
            else bulk_g2s_multicast(s_st + C::X_OFF + p * BM * 16, src, n * BM * 16, bar, (u16)((1u << CN) - 1u));
        }
    }
}

// Global-memory flag helpers of the stream-K fix-up (GPU scope).
__device__ __forceinline__ u32 ld_acquire_gpu(const int* p) {
    u32 v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ void st_release_gpu(int* p, u32 v) {
    asm volatile("st.release.gpu.global.u32 [%0], %1;\n" ::"l"(p), "r"(v) : "memory");
}
// Barrier of the consumer warpgroups only (named barrier 1; the producer warpgroup does not take part).
template <int NWG>
__device__ __forceinline__ void consumers_sync() { asm volatile("bar.sync 1, %0;\n" ::"n"(128 * NWG) : "memory"); }

// The piece of work ("segment") of a block starting at unit position pos of its range [pos, end):
// first n-tile nt0 and row block mb of its block tile, its units [k0, k1). SK = 0: the block's own tile
// (blockIdx.x, blockIdx.y), one segment. SK = 1 (stream-K): the range runs over the cluster tiles
// in order (tile ti = column block ti % NC of the cluster, row block ti / NC; NU units each).
template <int BN, int CN, int SK>
__device__ __forceinline__ void wg_segment(int pos, int end, int NU, int NC, int nt_lo, u32 rank, int& nt0, int& mb,
                                           int& k0, int& k1) {
    if constexpr (SK) {
        const int ti = pos / NU;
        k0 = pos - ti * NU;
        k1 = min(NU, k0 + end - pos);
        nt0 = nt_lo + ((ti % NC) * CN + (int)rank) * (BN / 16);
        mb = ti / NC;
    } else {
        k0 = pos;
        k1 = end;
        nt0 = nt_lo + blockIdx.x * (BN / 16);
        mb = blockIdx.y;
    }
}

template <int BITS, int GSTC, int FW, int BM, int NWG, int CN, int WR, int STAGES, int SK = 0>
__global__ void __launch_bounds__(128 * NWG + 128, 1) __cluster_dims__(CN, 1, 1)
qgemm_wg(const u16* __restrict__ xw, int Mp, int xb, const u32* __restrict__ qw, const u32* __restrict__ sz,
         const float* __restrict__ bias, void* __restrict__ y, int y_f32, float* __restrict__ ws, int M, int N,
         int Np, int nt_lo, int nt_hi, int NU, int upg, int split, int lbo, int sbo, int* __restrict__ cnt) {
    using C = WgCfg<BITS, GSTC, FW, BM, NWG, WR>;
    static_assert(STAGES >= 2, "a slot is refilled while the others compute");
    extern __shared__ uint4 wg_smem[];
    __shared__ __align__(8) u64 full[STAGES], consumed[STAGES], empty[STAGES];
    __shared__ int s_order;  // stream-K: this block's arrival order on a split tile (0: first)
    unsigned char* smem = reinterpret_cast<unsigned char*>(wg_smem);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int wg = warp >> 2, wq = warp & 3;
    const int g = lane >> 2, t = lane & 3;
    // the block's range of unit positions: its split's units of its tile (SK = 0), or its worker's
    // share of all tiles' units (SK = 1: worker c of G, G = clusters in the grid)
    const int NC = (((nt_hi - nt_lo) * 16 + C::BN * CN - 1) / (C::BN * CN)), MB = (M + BM - 1) / BM;
    const int G = SK ? (int)gridDim.x / CN : 1, c = SK ? (int)blockIdx.x / CN : 0;
    int w_begin, w_end;
    if constexpr (SK) {
        const long long W = (long long)NC * MB * NU;
        w_begin = (int)(W * c / G);
        w_end = (int)(W * (c + 1) / G);
    } else {
        const int z = blockIdx.z;
        w_begin = (int)((long long)NU * z / split);
        w_end = (int)((long long)NU * (z + 1) / split);
    }

    float acc[FW][BM / 2];

    const u32 s_smem = smem_u32(smem), s_full = smem_u32(full), s_empty = smem_u32(empty);
    const u32 s_consumed = smem_u32(consumed);
    const u32 rank = CN > 1 ? cluster_ctarank() : 0u;
    if (threadIdx.x == 0) {
#pragma unroll
        for (int s = 0; s < STAGES; ++s) {
            mbar_init(s_full + 8 * s, 1);
            mbar_init(s_consumed + 8 * s, 128 * NWG);  // every consumer thread of this CTA
            mbar_init(s_empty + 8 * s, CN);  // the producer warp of every CTA of the cluster
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    if constexpr (CN > 1) cluster_sync_all();  // barriers initialised before any CTA signals them
    else __syncthreads();

    if (wg == NWG) {  // producer warpgroup: its first warp refills slot v % STAGES once stage v - STAGES is consumed
        setmaxnreg_dec<C::PRODUCER_REGS>();
        if (wq == 0) {
            int v = 0;  // stages issued (all segments)
            for (int pos = w_begin, sg = 0; SK ? pos < w_end : sg == 0; ++sg) {  // SK = 0: one segment, maybe empty
                int nt0, mb, k0, k1;
                wg_segment<C::BN, CN, SK>(pos, w_end, NU, NC, nt_lo, rank, nt0, mb, k0, k1);
                for (int u = k0; u < k1; ++u, ++v) {  // stage v: unit u
                    const int s = v % STAGES;
                    if (v >= STAGES) {
                        const u32 par = ((v / STAGES) - 1) & 1;
                        mbar_wait(s_consumed + 8 * s, par);  // this CTA's consumers are done with the slot
                        if constexpr (CN > 1) {  // ... and every CTA's, before multicasting into it
                            if (lane < CN) mbar_arrive_remote(s_empty + 8 * s, lane);
                            mbar_wait(s_empty + 8 * s, par);
                        }
                    }
                    wg_issue_stage<BITS, GSTC, FW, BM, NWG, CN, WR>(s_smem + s * C::STAGE_BYTES, s_full + 8 * s, u, xw,
                                                                Mp, xb, qw, sz, Np, nt_hi, NU, upg, nt0, mb * BM, lane,
                                                                rank);
                }
                pos += k1 - k0;
            }
        }
    } else {
    setmaxnreg_inc<C::CONSUMER_REGS>();
    int v0 = 0;  // stages consumed before this segment
    for (int pos = w_begin, sg = 0; SK ? pos < w_end : sg == 0; ++sg) {  // SK = 0: one segment, maybe empty
    int nt0, mb, k0, k1;
    wg_segment<C::BN, CN, SK>(pos, w_end, NU, NC, nt_lo, rank, nt0, mb, k0, k1);
    const int m0 = mb * BM, iters = k1 - k0;
#pragma unroll
    for (int f = 0; f < FW; ++f)
#pragma unroll
        for (int e = 0; e < BM / 2; ++e) acc[f][e] = 0.f;
#pragma unroll
    for (int f = 0; f < FW; ++f) fence_regs(acc[f]);
    u32 wn[FW][C::WPU];  // WR: the next unit's packed words
    if constexpr (WR) {
#pragma unroll
        for (int f = 0; f < FW; ++f) {
            const int nt = nt0 + (wg * FW + f) * 4 + wq;
            if (iters > 0 && nt < nt_hi)
                load_unit<BITS>(wn[f], qw + ((size_t)nt * NU + k0) * (32 * C::WPU), lane);
        }
    }
    for (int it = 0; it < iters; ++it) {
        const int v = v0 + it;  // this unit's stage (overall)
        mbar_wait(s_full + 8 * (v % STAGES), (v / STAGES) & 1);
        const unsigned char* st = smem + (v % STAGES) * C::STAGE_BYTES;
        const u32* sw = reinterpret_cast<const u32*>(st);
        const u32* ssz = reinterpret_cast<const u32*>(st + C::W_BYTES);
        const u32 s_x = smem_u32(st + C::X_OFF);
        u32 w[FW][C::WPU];
#pragma unroll
        for (int f = 0; f < FW; ++f) {
            if constexpr (WR) {  // this unit's words (loaded one unit ahead), then the next unit's
#pragma unroll
                for (int i = 0; i < C::WPU; ++i) w[f][i] = wn[f][i];
                const int nt = nt0 + (wg * FW + f) * 4 + wq;
                if (it + 1 < iters && nt < nt_hi)
                    load_unit<BITS, !WG_NC_PREFETCH>(wn[f], qw + ((size_t)nt * NU + k0 + it + 1) * (32 * C::WPU),
                                                     lane);
            } else {
                lds_unit<BITS>(w[f], sw + ((wg * FW + f) * 4 + wq) * (32 * C::WPU), lane);
            }
        }
        u32 zz[FW][2], sc[FW][2];
#pragma unroll
        for (int ts = 0; ts < 8; ++ts) {
            if (ts % GSTC == 0 || ts == 0) {  // group of this k-step (compile-time condition)
                const int gi = GSTC < 8 ? ts / GSTC : 0;
#pragma unroll
                for (int f = 0; f < FW; ++f) {
                    const int row = ((wg * FW + f) * 4 + wq) * 16 + g;
                    const u32 s0 = ssz[gi * C::BN + row], s1 = ssz[gi * C::BN + row + 8];
                    zz[f][0] = prmt(s0, 0x3232u); zz[f][1] = prmt(s1, 0x3232u);
                    sc[f][0] = prmt(s0, 0x1010u); sc[f][1] = prmt(s1, 0x1010u);
                }
            }
            u32 a[FW][4];
#pragma unroll
            for (int f = 0; f < FW; ++f)
#pragma unroll
                for (int pr = 0; pr < 4; ++pr)
                    a[f][pr] = WG_ABLATE == 1 ? sc[f][pr & 1] ^ (u32)(ts * 4 + pr)
                                              : hmul2(hsub2(magic_pair<BITS>(w[f], ts, pr), zz[f][pr & 1]), sc[f][pr & 1]);
            const u64 desc = wg_desc(s_x + ts * (2 * BM * 16), lbo, sbo);
            wg_fence();
#pragma unroll
            for (int f = 0; f < FW; ++f)
                if constexpr (WG_ABLATE != 2 && WG_ABLATE != 3) wgmma_rs<BM>(acc[f], a[f], desc, 1);
                else acc[f][0] += __uint_as_float(a[f][0] ^ a[f][3] ^ (u32)desc);
            wg_commit();
            wg_wait<C::INFLIGHT>();
            // at most INFLIGHT groups, all of this unit, are pending now: unit it - 1 of the segment
            // is complete, release its slot (a CTA-local arrive: the producer warp does the
            // cluster-wide part)
            if (ts == C::INFLIGHT - 1) mbar_arrive_local_if(s_consumed + 8 * ((v + STAGES - 1) % STAGES), it >= 1);
        }
    }
    wg_wait<0>();
#pragma unroll
    for (int f = 0; f < FW; ++f) fence_regs(acc[f]);
    v0 += iters;
    // the segment's last stage is complete: release it now, so that the producer runs on into the
    // next segment during this epilogue
    if (iters > 0) mbar_arrive_local_if(s_consumed + 8 * ((v0 - 1) % STAGES), true);
    pos += iters;

    if (SK && (k0 > 0 || k1 < NU)) {  // stream-K: a tile split between two workers (never more: >= NU units each)
        // slot of the split (the boundary between workers b - 1 and b) and this CTA: an arrival counter
        // and a ready flag in cnt, the first arriver's fp32 accumulators in ws; the second adds them
        // (a + b: the same sum in either order) and writes the tile, then clears the counter and flag
        const int slot = (k0 > 0 ? c : c + 1) * CN + (int)rank;
        int* ctr = cnt + 2 * slot;
        constexpr int NTH = 128 * NWG, NACC = FW * BM / 2;
        float* part = ws + (size_t)slot * NACC * NTH + threadIdx.x;
        if (threadIdx.x == 0) s_order = atomicAdd(ctr, 1);
        consumers_sync<NWG>();
        const int order = s_order;
        consumers_sync<NWG>();  // every thread has read s_order before a later segment writes it
        if (order == 0) {
#pragma unroll
            for (int f = 0; f < FW; ++f)
#pragma unroll
                for (int e = 0; e < BM / 2; ++e) part[(size_t)(f * (BM / 2) + e) * NTH] = acc[f][e];
            __threadfence();
            consumers_sync<NWG>();
            if (threadIdx.x == 0) st_release_gpu(ctr + 1, 1u);
            continue;
        }
        if (threadIdx.x == 0) {
            for (u32 tries = 0; ld_acquire_gpu(ctr + 1) == 0; ++tries)
                if (tries > (1u << 26)) __trap();
            ctr[0] = 0;
            ctr[1] = 0;
        }
        consumers_sync<NWG>();
#pragma unroll
        for (int f = 0; f < FW; ++f)
#pragma unroll
            for (int e = 0; e < BM / 2; ++e) acc[f][e] += __ldcg(part + (size_t)(f * (BM / 2) + e) * NTH);
    }

    // epilogue: acc[f][4i + e] = (output row 16*wq + g + 8*(e >> 1) of m64 tile (wg, f), token 8i + 2t + (e & 1))
#pragma unroll
    for (int f = 0; f < FW; ++f) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int nt = nt0 + (wg * FW + f) * 4 + wq;
            const int n = nt * 16 + g + 8 * (e >> 1);
            if (n >= N || nt >= nt_hi) continue;
            const float bn = (split == 1 && bias != nullptr) ? bias[n] : 0.f;
#pragma unroll
            for (int i = 0; i < BM / 8; ++i) {
                const int m = m0 + 8 * i + 2 * t + (e & 1);
                if (m >= M) continue;
                const float v = acc[f][4 * i + e];
                if (split > 1) ws[((size_t)blockIdx.z * M + m) * N + n] = v;
                else if (y_f32) reinterpret_cast<float*>(y)[(size_t)m * N + n] = v + bn;
                else reinterpret_cast<u16*>(y)[(size_t)m * N + n] = f2h(v + bn);
            }
        }
    }
    }  // segments
    }  // consumers
    if constexpr (CN > 1) cluster_sync_all();  // no CTA exits while others may still signal it
}
