// Fused dequantize + tensor-core GEMM for larger M (prefill), reading the same GPU tile layout
// ("tc" layout, kernels/cuda.py docstring) as the small-M kernels of gptq_cuda.cu, which this file
// is appended to before compiling (its helpers: Fmt, magic_pair, kpos, hsub2, hmul2, prmt, mma16816).
//
// qgemm_mma<BITS, GSTC, NTW, MBW, WN, WM, STAGES>: y[M, N] = x[M, K] @ W (+ bias)
//   Orientation as in qgemm_small: W^T (rows n) is the mma A operand, decoded in registers from the
//   packed words; x^T (columns = tokens) is the B operand, read from shared memory.
//   Block: WN x WM warps; warp (wn, wm) owns NTW n-tiles (16 outputs each) x MBW m-blocks
//   (8 tokens each). Block tile: BN = 16*NTW*WN outputs x BM = 8*MBW*WM tokens; K' is walked one
//   unit (128 positions = 8 mma k-steps) per pipeline stage.
//   Each stage (cp.async, STAGES deep, one barrier per unit) holds, verbatim from global memory:
//     W  : BN/16 (n-tile, unit) blocks of 32*WPU words (the tc layout's own contiguous blocks);
//     SZ : NGU rows of BN sz words (half2(scale, 1024 + zero)) of the unit's group(s);
//     X  : BM rows x 16 chunks of 16 bytes (x in K' order, fp16), row stride 17 chunks, chunk c
//          of a row stored at chunk c ^ (((c >> 3) & 1) << 1): the B-fragment loads (16 bytes =
//          two k-steps per lane, for groups >= 32) are free of bank conflicts for groups >= 64.
//   Rows m >= M, K' columns >= Kx, n-tiles >= Np/16 and units >= NU are zero-filled (cp.async
//   src-size 0): they add nothing (a zero sz word is scale 0).
//   Decode: W = scale * ((1024 + q) - (1024 + z)) in fp16 (magic-number trick; the same fp16
//   weights as dequant_tc), fp32 accumulation (mma.m16n8k16).
//   split > 1: blockIdx.z takes the units [NU*z/split, NU*(z+1)/split) and writes fp32 partials
//   to ws[z][M][N]; mma_reduce then adds them in z order (deterministic), adds bias and casts.
//
// x:    fp16 [M, ldx] in K' order, 16-byte aligned, ldx % 8 == 0, Kx % 8 == 0 (columns >= Kx: 0).
// qw, sz: the tc layout (sz [G', Np]); upg: units per group (GSTC == 8).
// bias: fp32 [N] or null. y: [M, N] contiguous, fp16 (y_f32 = 0) or fp32. ws: fp32 [split, M, N].
// Grid: (ceil(Np / BN), ceil(M / BM), split); block: 32*WN*WM threads;
// dynamic shared memory: STAGES * MmaCfg::STAGE_BYTES.

template <int BITS, int GSTC, int NTW, int MBW, int WN, int WM>
struct MmaCfg {
    static constexpr int WPU = Fmt<BITS>::WPU;
    static constexpr int NGU = GSTC < 8 ? 8 / GSTC : 1;
    static constexpr int S = GSTC < 8 ? 16 * GSTC : 128;
    static constexpr int NWARPS = WN * WM;
    static constexpr int NTHREADS = 32 * NWARPS;
    static constexpr int BN = 16 * NTW * WN, BM = 8 * MBW * WM;
    static constexpr int XROW = 17 * 16;  // bytes per staged x row (16 chunks + 1 pad)
    static constexpr int W_BYTES = (BN / 16) * 32 * WPU * 4;
    static constexpr int SZ_BYTES = NGU * BN * 4;
    static constexpr int X_BYTES = BM * XROW;
    static constexpr int STAGE_BYTES = W_BYTES + SZ_BYTES + X_BYTES;
};

__device__ __forceinline__ u32 smem_u32(const void* p) {
    u32 a;
    asm("{\n\t.reg .u64 t;\n\tcvta.to.shared.u64 t, %1;\n\tcvt.u32.u64 %0, t;\n\t}" : "=r"(a) : "l"(p));
    return a;
}
// 16-byte global -> shared copy; fewer than 16 source bytes (here 0) zero-fill the rest.
__device__ __forceinline__ void cp_async16(u32 dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }

__device__ __forceinline__ int xswz(int c) { return c ^ (((c >> 3) & 1) << 1); }

template <int BITS, int GSTC, int NTW, int MBW, int WN, int WM>
__device__ __forceinline__ void mma_load_stage(unsigned char* st, int u, const u16* __restrict__ x, int ldx, int Kx,
                                               const u32* __restrict__ qw, const u32* __restrict__ sz, int M,
                                               int Np, int NU, int upg, int nt0, int m0) {
    using C = MmaCfg<BITS, GSTC, NTW, MBW, WN, WM>;
    const int tid = threadIdx.x;
    const bool uok = u < NU;
    const u32 s_w = smem_u32(st), s_sz = s_w + C::W_BYTES, s_x = s_sz + C::SZ_BYTES;
    // weights: BN/16 blocks of 8*WPU chunks; block i = (n-tile nt0 + i, unit u)
    constexpr int WCH = 8 * C::WPU, WTOT = (C::BN / 16) * WCH;
#pragma unroll
    for (int q0 = 0; q0 < WTOT; q0 += C::NTHREADS) {
        const int q = q0 + tid;
        if (WTOT % C::NTHREADS == 0 || q < WTOT) {
            const int i = q / WCH, c = q % WCH;
            const bool ok = uok && nt0 + i < Np / 16;
            const u32* src = ok ? qw + ((size_t)(nt0 + i) * NU + u) * (32 * C::WPU) + c * 4 : qw;
            cp_async16(s_w + q * 16, src, ok);
        }
    }
    // scales / zeros: NGU rows of BN words
    constexpr int SCH = C::BN / 4, STOT = C::NGU * SCH;
#pragma unroll
    for (int q0 = 0; q0 < STOT; q0 += C::NTHREADS) {
        const int q = q0 + tid;
        if (STOT % C::NTHREADS == 0 || q < STOT) {
            const int gi = q / SCH, c = q % SCH;
            const int grp = GSTC < 8 ? u * C::NGU + gi : u / upg;
            const int n = nt0 * 16 + c * 4;
            const bool ok = uok && n < Np;
            cp_async16(s_sz + q * 16, ok ? sz + (size_t)grp * Np + n : sz, ok);
        }
    }
    // x: BM rows x 16 chunks of the unit's 128 K' columns
    constexpr int XTOT = C::BM * 16;
#pragma unroll
    for (int q0 = 0; q0 < XTOT; q0 += C::NTHREADS) {
        const int q = q0 + tid;
        if (XTOT % C::NTHREADS == 0 || q < XTOT) {
            const int r = q >> 4, c = q & 15;
            const int col = u * 128 + c * 8;
            const bool ok = m0 + r < M && col < Kx;
            cp_async16(s_x + r * C::XROW + xswz(c) * 16, ok ? x + (size_t)(m0 + r) * ldx + col : x, ok);
        }
    }
}

template <int BITS, int GSTC, int NTW, int MBW, int WN, int WM, int STAGES>
__global__ void __launch_bounds__(32 * WN * WM, 1)
qgemm_mma(const u16* __restrict__ x, int ldx, int Kx, const u32* __restrict__ qw, const u32* __restrict__ sz,
          const float* __restrict__ bias, void* __restrict__ y, int y_f32, float* __restrict__ ws, int M, int N,
          int Np, int NU, int upg, int split) {
    using C = MmaCfg<BITS, GSTC, NTW, MBW, WN, WM>;
    extern __shared__ uint4 mma_smem[];
    unsigned char* smem = reinterpret_cast<unsigned char*>(mma_smem);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int wn = warp % WN, wm = warp / WN;
    const int nt0 = blockIdx.x * (C::BN / 16), m0 = blockIdx.y * C::BM;
    const int z = blockIdx.z;
    const int u_begin = (int)((long long)NU * z / split), u_end = (int)((long long)NU * (z + 1) / split);
    const int iters = u_end - u_begin;

    float acc[NTW][MBW][4];
#pragma unroll
    for (int i = 0; i < NTW; ++i)
#pragma unroll
        for (int mb = 0; mb < MBW; ++mb)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][mb][e] = 0.f;

#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < iters)
            mma_load_stage<BITS, GSTC, NTW, MBW, WN, WM>(smem + s * C::STAGE_BYTES, u_begin + s, x, ldx, Kx, qw, sz,
                                                         M, Np, NU, upg, nt0, m0);
        cp_async_commit();
    }
    for (int it = 0; it < iters; ++it) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        {
            const int nx = it + STAGES - 1;
            if (nx < iters)
                mma_load_stage<BITS, GSTC, NTW, MBW, WN, WM>(smem + (nx % STAGES) * C::STAGE_BYTES, u_begin + nx, x,
                                                             ldx, Kx, qw, sz, M, Np, NU, upg, nt0, m0);
            cp_async_commit();
        }
        const unsigned char* st = smem + (it % STAGES) * C::STAGE_BYTES;
        const u32* sw = reinterpret_cast<const u32*>(st);
        const u32* ssz = reinterpret_cast<const u32*>(st + C::W_BYTES);
        const unsigned char* sx = st + C::W_BYTES + C::SZ_BYTES;
        u32 w[NTW][C::WPU];  // this warp's packed words of the unit
#pragma unroll
        for (int i = 0; i < NTW; ++i) lds_unit<BITS>(w[i], sw + (wn * NTW + i) * (32 * C::WPU), lane);
        const unsigned char* xrow = sx + (wm * (8 * MBW) + g) * C::XROW;
        u32 zz[NTW][2], sc[NTW][2];
#pragma unroll
        for (int tp = 0; tp < 4; ++tp) {
            // B fragments of k-steps 2tp and 2tp+1: 4 consecutive K' positions each (kpos)
            u32 b[MBW][4];
#pragma unroll
            for (int mb = 0; mb < MBW; ++mb) {
                const unsigned char* rp = xrow + mb * 8 * C::XROW;
                if constexpr (C::S >= 32) {  // k-steps 2tp, 2tp+1 adjacent: one 16-byte load
                    const int kp = kpos<C::S>(0, 2 * tp, t);
                    const uint4 v = *reinterpret_cast<const uint4*>(rp + xswz(kp >> 3) * 16);
                    b[mb][0] = v.x; b[mb][1] = v.y; b[mb][2] = v.z; b[mb][3] = v.w;
                } else {
#pragma unroll
                    for (int h = 0; h < 2; ++h) {
                        const int kp = kpos<C::S>(0, 2 * tp + h, t);
                        const uint2 v = *reinterpret_cast<const uint2*>(rp + xswz(kp >> 3) * 16 + (kp & 7) * 2);
                        b[mb][2 * h] = v.x; b[mb][2 * h + 1] = v.y;
                    }
                }
            }
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int ts = 2 * tp + h;
                if (ts % GSTC == 0 || ts == 0) {  // group of this k-step (compile-time condition)
                    const int gi = GSTC < 8 ? ts / GSTC : 0;
#pragma unroll
                    for (int i = 0; i < NTW; ++i) {
                        const u32 s0 = ssz[gi * C::BN + (wn * NTW + i) * 16 + g];
                        const u32 s1 = ssz[gi * C::BN + (wn * NTW + i) * 16 + g + 8];
                        zz[i][0] = prmt(s0, 0x3232u); zz[i][1] = prmt(s1, 0x3232u);
                        sc[i][0] = prmt(s0, 0x1010u); sc[i][1] = prmt(s1, 0x1010u);
                    }
                }
#pragma unroll
                for (int i = 0; i < NTW; ++i) {
                    u32 a[4];
#pragma unroll
                    for (int pr = 0; pr < 4; ++pr)
                        a[pr] = hmul2(hsub2(magic_pair<BITS>(w[i], ts, pr), zz[i][pr & 1]), sc[i][pr & 1]);
#pragma unroll
                    for (int mb = 0; mb < MBW; ++mb) mma16816(acc[i][mb], a, b[mb][2 * h], b[mb][2 * h + 1]);
                }
            }
        }
    }

    // epilogue: c0, c1 = (n = g, m = 2t, 2t+1); c2, c3 = (n = g + 8, m = 2t, 2t+1)
#pragma unroll
    for (int i = 0; i < NTW; ++i) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int n = (nt0 + wn * NTW + i) * 16 + g + 8 * (e >> 1);
            if (n >= N) continue;
            const float bn = (split == 1 && bias != nullptr) ? bias[n] : 0.f;
#pragma unroll
            for (int mb = 0; mb < MBW; ++mb) {
                const int m = m0 + wm * (8 * MBW) + mb * 8 + 2 * t + (e & 1);
                if (m >= M) continue;
                const float v = acc[i][mb][e];
                if (split > 1) ws[((size_t)z * M + m) * N + n] = v;
                else if (y_f32) reinterpret_cast<float*>(y)[(size_t)m * N + n] = v + bn;
                else reinterpret_cast<u16*>(y)[(size_t)m * N + n] = f2h(v + bn);
            }
        }
    }
}

// y[M, N] = sum_z ws[z, M, N] (in z order) + bias, cast to fp16 (y_f32 = 0) or fp32.
extern "C" __global__ void __launch_bounds__(256)
mma_reduce(const float* __restrict__ ws, int split, const float* __restrict__ bias, void* __restrict__ y, int y_f32,
           int M, int N) {
    const long long total = (long long)M * N;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        float v = 0.f;
        for (int z = 0; z < split; ++z) v += ws[z * total + idx];
        if (bias != nullptr) v += bias[idx % N];
        if (y_f32) reinterpret_cast<float*>(y)[idx] = v;
        else reinterpret_cast<u16*>(y)[idx] = f2h(v);
    }
}
