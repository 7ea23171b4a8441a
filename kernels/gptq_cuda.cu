// CUDA kernels of the packed `gptq` format, reading the GPU tile layout ("tc" layout).
//
// The layout, its repack from the CPU format and its NumPy reference live in kernels/cuda.py
// (module docstring); the CPU format itself is defined by kernels/reference.py. Summary:
//
//   K is padded and (for act-order) permuted into K' positions: group g occupies
//   [g*GK, g*GK + count_g), GK = 16 * gst, padding (perm = -1) after; K' is a multiple of 128.
//   A "unit" is 128 positions of K' = 8 k-steps of one mma.m16n8k16; an "n-tile" is 16 outputs.
//   For each (n-tile, unit) a warp reads 32 lanes x 8*BITS bytes, contiguous, in 16-byte vectors
//   (3-bit: one 16-byte and one 8-byte vector). Lane l = 4*g + t holds, for each k-step, the 8
//   codes of the mma A fragment of W^T (rows n, columns k): pairs P0 = (n=g, j=0,1),
//   P1 = (n=g+8, j=0,1), P2 = (n=g, j=2,3), P3 = (n=g+8, j=2,3), where the 4 K' positions j of
//   lane t in k-step ts are  kp = u*128 + (ts/TS)*S + t*(S/4) + (ts%TS)*4 + j,
//   S = 16*min(gst, 8) ("span"), TS = S/16. Each pair decodes with one shift and one LOP3 to a
//   half2 (1024 + q): the fp16 magic-number trick.
//   sz [G', N'] uint32 = half2(scale, 1024 + zero); W = scale * ((1024 + q) - (1024 + z)).
//
// Kernels (templates instantiated by name from kernels/cuda.py through NVRTC):
//   qgemm_small<BITS, MT, NT, GSTC, XS, OCC>  y[M, N] = x[M, K] @ W + bias, M <= 8*MT per grid
//       row: one block = 8 warps x (16*NT outputs, all of K); warps split the K' units (warp w
//       takes units w, w+8, ...), stream their weights with no-L1-allocate 16-byte loads, PD
//       units ahead in registers (x staged once per block in shared memory with XS = 1; OCC =
//       blocks per SM the registers are capped for);
//       tensor-core mma.m16n8k16 (fp16 in, fp32 accumulate) per k-step with W^T as A and
//       x^T as B (so M=1..8 wastes only the B columns), group scale applied in fp32 when a group
//       ends; the 8 warps reduce through shared memory in a fixed order (deterministic
//       results); bias + cast in the epilogue.
//   dequant_tc<BITS, GSTC>  W^T[N, K'] fp16 (K' order) for the prefill path (cuBLAS).
//   prep_x  x -> fp16 in K' order (act-order gather, fp32 cast) when the fused kernel cannot stage it.
//   repack_tc<BITS>, repack_sz  the CPU format -> tc layout, on the GPU.

typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned long long u64;

#define WARPS 8
#define THREADS (WARPS * 32)
#define MAGIC 0x64006400u  // half2(1024, 1024)
#define SZ_PAD 0x64000000u // half2(scale 0, 1024 + zero 0)

template <int BITS> struct Fmt;
template <> struct Fmt<2> { static constexpr int WPU = 4; };
template <> struct Fmt<3> { static constexpr int WPU = 6; };
template <> struct Fmt<4> { static constexpr int WPU = 8; };
template <> struct Fmt<8> { static constexpr int WPU = 16; };

// ---------------------------------------------------------------------------------------------
// small helpers (inline PTX: no cuda_fp16.h needed under NVRTC)

__device__ __forceinline__ uint4 ld_stream4(const u32* p) {
    uint4 r;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
    return r;
}
__device__ __forceinline__ uint2 ld_stream2(const u32* p) {
    uint2 r;
    asm volatile("ld.global.nc.L1::no_allocate.v2.u32 {%0,%1}, [%2];" : "=r"(r.x), "=r"(r.y) : "l"(p));
    return r;
}
__device__ __forceinline__ u32 ld_nc(const u32* p) {
    u32 r;
    asm volatile("ld.global.nc.u32 %0, [%1];" : "=r"(r) : "l"(p));
    return r;
}
__device__ __forceinline__ uint2 ld_nc2(const void* p) {
    uint2 r;
    asm("ld.global.nc.v2.u32 {%0,%1}, [%2];" : "=r"(r.x), "=r"(r.y) : "l"(p));
    return r;
}
__device__ __forceinline__ uint4 ld_nc4(const void* p) {
    uint4 r;
    asm("ld.global.nc.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
    return r;
}
__device__ __forceinline__ u16 ld_nc_u16(const u16* p) {
    u16 r;
    asm("ld.global.nc.u16 %0, [%1];" : "=h"(r) : "l"(p));
    return r;
}
__device__ __forceinline__ float ld_nc_f32(const float* p) {
    float r;
    asm("ld.global.nc.f32 %0, [%1];" : "=f"(r) : "l"(p));
    return r;
}
__device__ __forceinline__ u32 hsub2(u32 a, u32 b) {
    u32 d;
    asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
    return d;
}
__device__ __forceinline__ u32 hmul2(u32 a, u32 b) {
    u32 d;
    asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
    return d;
}
__device__ __forceinline__ float h2f(u32 bits16) {
    float f;
    u16 h = (u16)bits16;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ u16 f2h(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
__device__ __forceinline__ u32 f2h2(float lo, float hi) {  // half2(lo, hi), lo in the low 16 bits
    u32 d;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
    return d;
}
// (a & MASK) | MAGIC in one LOP3 (the compiler alone emits two: LOP3 takes one immediate).
template <u32 MASK>
__device__ __forceinline__ u32 and_or_magic(u32 a) {
    u32 d;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(a), "n"(MASK), "n"(MAGIC));
    return d;
}
__device__ __forceinline__ u32 prmt(u32 a, u32 sel) {
    u32 d;
    asm("prmt.b32 %0, %1, %1, %2;" : "=r"(d) : "r"(a), "r"(sel));
    return d;
}
__device__ __forceinline__ void mma16816(float (&c)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// ---------------------------------------------------------------------------------------------
// tc layout: loading one lane's words of one (n-tile, unit), and decoding one k-step

template <int BITS>
__device__ __forceinline__ void load_unit(u32 (&w)[Fmt<BITS>::WPU], const u32* __restrict__ base, int lane) {
    if constexpr (BITS == 3) {
        const uint4 v = ld_stream4(base + lane * 4);
        const uint2 h = ld_stream2(base + 128 + lane * 2);
        w[0] = v.x; w[1] = v.y; w[2] = v.z; w[3] = v.w; w[4] = h.x; w[5] = h.y;
    } else {
#pragma unroll
        for (int c = 0; c < Fmt<BITS>::WPU / 4; ++c) {
            const uint4 v = ld_stream4(base + c * 128 + lane * 4);
            w[4 * c] = v.x; w[4 * c + 1] = v.y; w[4 * c + 2] = v.z; w[4 * c + 3] = v.w;
        }
    }
}

// half2(1024 + q_low, 1024 + q_high) of pair pr (0..3) of k-step ts (0..7); ts, pr compile-time.
template <int BITS>
__device__ __forceinline__ u32 magic_pair(const u32 (&w)[Fmt<BITS>::WPU], int ts, int pr) {
    if constexpr (BITS == 4) {
        return and_or_magic<0x000F000Fu>(w[ts] >> (4 * pr));
    } else if constexpr (BITS == 2) {
        const int p = (ts & 1) * 4 + pr;
        return and_or_magic<0x00030003u>(w[ts >> 1] >> (2 * p));
    } else if constexpr (BITS == 8) {
        return and_or_magic<0x00FF00FFu>(w[2 * ts + (pr >> 1)] >> (8 * (pr & 1)));
    } else {  // 3 bits: 32 codes (16 pairs) in 3 words; pairs 0..14 five to a word, pair 15 in bits 15/31
        const int tr = ts >> 2, p = (ts & 3) * 4 + pr;
        if (p < 15) return and_or_magic<0x00070007u>(w[3 * tr + p / 5] >> (3 * (p % 5)));
        return ((w[3 * tr] >> 15) & 0x00010001u) | ((w[3 * tr + 1] >> 14) & 0x00020002u) |
               and_or_magic<0x00040004u>(w[3 * tr + 2] >> 13);
    }
}

// Code placement, the inverse of magic_pair (used by the repack): word index and bit shift of
// bit `b` of the code of (k-step ts, pair pr, half hi). Returns the shift; *word gets the index.
template <int BITS>
__device__ __forceinline__ int code_bit_pos(int ts, int pr, int hi, int b, int* word) {
    if constexpr (BITS == 4) { *word = ts; return 4 * (pr + 4 * hi) + b; }
    else if constexpr (BITS == 2) { const int p = (ts & 1) * 4 + pr; *word = ts >> 1; return 2 * (p + 8 * hi) + b; }
    else if constexpr (BITS == 8) { *word = 2 * ts + (pr >> 1); return 8 * ((pr & 1) + 2 * hi) + b; }
    else {
        const int tr = ts >> 2, p = (ts & 3) * 4 + pr;
        if (p < 15) { *word = 3 * tr + p / 5; return 3 * (p % 5) + 16 * hi + b; }
        *word = 3 * tr + b;
        return 15 + 16 * hi;
    }
}

// K' position of j = 0 of lane t in k-step ts of unit u (span S = 16*min(gst,8)).
template <int S>
__device__ __forceinline__ int kpos(int u, int ts, int t) {
    constexpr int TS = S / 16;
    return u * 128 + (ts / TS) * S + t * (S / 4) + (ts % TS) * 4;
}

// ---------------------------------------------------------------------------------------------
// fused small-M kernel

template <int BITS, int MT, int NT, int GSTC, int OCC>
struct SmallCfg {
    static constexpr int WPU = Fmt<BITS>::WPU;
    static constexpr int NGU = GSTC < 8 ? 8 / GSTC : 1;  // groups per unit
    static constexpr int S = GSTC < 8 ? 16 * GSTC : 128;  // span
    // MT <= 2: integer (q - z) fragments, fp32 scale applied per group (exact products);
    // MT >= 4: fragments scaled to fp16 (q - z) * s before the mma, which frees the per-group
    // accumulators (registers) when many m-tiles share each decoded fragment.
    static constexpr bool SCALE_A = MT >= 4;
    static constexpr int SLOT = NT * (WPU + 2 * NGU);  // registers per prefetched unit
    // Units in flight per warp: about 40 registers of prefetch at 2 blocks per SM, fewer at
    // OCC = 3 or 4 blocks per SM (more warps, each with fewer units ahead); MT >= 4: 2.
    static constexpr int BUDGET = OCC >= 4 ? 20 : OCC == 3 ? 30 : 40;
    static constexpr int PD0 = BUDGET / SLOT;
    static constexpr int PD = MT >= 4 ? 2 : (PD0 < 2 ? 2 : (PD0 > 6 ? 6 : PD0));
};

// 16-byte chunk c of a row of staged x is stored at chunk swz(c): lanes t = 0..3 of a k-step
// read chunks 64 bytes apart, which would hit the same banks for t and t + 2. swz keeps bits
// >= 4 (the unit), so swz(16*u + c) = 16*u + swz(c) for c < 16.
__device__ __forceinline__ int swz(int c) { return c ^ (((c >> 3) & 1) << 1); }

// x:    [M, ldx] row-major, fp16 (x_f32 = 0) or fp32 (x_f32 = 1).
//       XS = 1: staged once per block into dynamic shared memory, M + 1 rows (the last one
//       zeros, read by the lanes of rows >= M) of Kp/8 + 1 16-byte chunks, K' order: column
//       perm[kp] (gather = 1; perm < 0 -> 0) or kp (gather = 0; kp >= Kx -> 0; then fp16 needs
//       ldx % 8 == 0 and x 16-byte aligned). Needs M <= 8*MT (one grid row).
//       XS = 0 (x read from global memory): fp16 in K' order only (x_f32 = gather = 0; the host
//       runs prep_x first when needed), columns >= Kx read as 0, ldx % 8 == 0, 16-byte aligned.
// qw:   tc layout words, (N'/16) n-tiles x NU units x 32 lanes x WPU words.
// sz:   [G', N'] half2(scale, 1024 + zero).    perm: [K'] int32 (XS, gather = 1 only).
// bias: [N] fp32 or null.   y: [M, ldy] fp16 (y_f32 = 0) or fp32, row-major.
// upg:  units per group (GSTC == 8: group of unit u is u / upg; ushift = log2(upg) or -1).
// OCC:  blocks per SM the registers are capped for (2: <= 128, 3: <= 80, 4: <= 64 registers).
// Grid: (N' / (16*NT), ceil(M / (8*MT))); block: THREADS; dynamic shared memory (XS):
// (M + 1) * (Kp + 8) * 2 bytes.
template <int BITS, int MT, int NT, int GSTC, int XS, int OCC>
__global__ void __launch_bounds__(THREADS, OCC)
qgemm_small(const void* __restrict__ x, int ldx, int Kx, int x_f32, int gather,
            const u32* __restrict__ qw, const u32* __restrict__ sz, const int* __restrict__ perm,
            const float* __restrict__ bias, void* __restrict__ y, int ldy, int y_f32,
            int M, int N, int Np, int NU, int upg, int ushift) {
    using C = SmallCfg<BITS, MT, NT, GSTC, OCC>;
    constexpr int WPU = C::WPU, NGU = C::NGU, S = C::S, PD = C::PD;
    constexpr bool SCALE_A = C::SCALE_A;
    constexpr bool XPRE = MT <= 2 && XS == 0;  // x of a whole unit preloaded to registers (global)
    static_assert(!XS || MT <= 2, "staged x is for MT <= 2");
    extern __shared__ uint4 xs_dyn[];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int nt0 = blockIdx.x * NT;
    const int m0 = blockIdx.y * (8 * MT);
    const int rs = NU * 16 + 1;  // staged x: row stride in 16-byte chunks

    float o[NT][MT][4];                              // scaled sums
    float c[SCALE_A ? 1 : NT][SCALE_A ? 1 : MT][4];  // current group's integer-weight sums
#pragma unroll
    for (int a = 0; a < NT; ++a)
#pragma unroll
        for (int b = 0; b < MT; ++b)
#pragma unroll
            for (int e = 0; e < 4; ++e) o[a][b][e] = 0.f;
#pragma unroll
    for (int a = 0; a < (SCALE_A ? 1 : NT); ++a)
#pragma unroll
        for (int b = 0; b < (SCALE_A ? 1 : MT); ++b)
#pragma unroll
            for (int e = 0; e < 4; ++e) c[a][b][e] = 0.f;

    u32 wb[PD][NT][WPU];
    u32 sb[PD][NT][NGU][2];

    auto load_slot = [&](u32 (&ws)[NT][WPU], u32 (&ss)[NT][NGU][2], int u) {
        const int gu = GSTC < 8 ? u * NGU : (ushift >= 0 ? u >> ushift : u / upg);
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            load_unit<BITS>(ws[nt], qw + ((size_t)(nt0 + nt) * NU + u) * (32 * WPU), lane);
            const u32* szp = sz + (size_t)gu * Np + (nt0 + nt) * 16 + g;
#pragma unroll
            for (int gi = 0; gi < NGU; ++gi) {
                ss[nt][gi][0] = ld_nc(szp + (size_t)gi * Np);
                ss[nt][gi][1] = ld_nc(szp + (size_t)gi * Np + 8);
            }
        }
    };

    // Weights of the first PD units of this warp first: their DRAM latency overlaps the staging.
#pragma unroll
    for (int i = 0; i < PD; ++i) {
        const int u = warp + i * WARPS;
        if (u < NU) load_slot(wb[i], sb[i], u);
    }

    // Staged x: per m-tile, this lane's row (the zero row M for rows >= M); per k-step pair
    // (or k-step for S = 16) the swizzled chunk offset within a unit, the same for every unit.
    const uint4* xrow[MT];
    int xoff[S >= 32 ? 4 : 8];
    if constexpr (XS != 0) {
        const int cpr = NU * 16;
        const u16* x16 = reinterpret_cast<const u16*>(x);
        const float* x32 = reinterpret_cast<const float*>(x);
#pragma unroll 4
        for (int i = threadIdx.x; i < (M + 1) * cpr; i += THREADS) {
            const int m = i / cpr, ch = i - m * cpr, kp = ch * 8;
            uint4 v = make_uint4(0u, 0u, 0u, 0u);
            if (m < M) {
                if (!gather && !x_f32) {
                    if (kp < Kx) v = ld_nc4(x16 + (size_t)m * ldx + kp);
                } else {
                    u32 h[8];
#pragma unroll
                    for (int j = 0; j < 8; ++j) {
                        const int k = gather ? perm[kp + j] : (kp + j < Kx ? kp + j : -1);
                        h[j] = 0u;
                        if (k >= 0) h[j] = x_f32 ? f2h(x32[(size_t)m * ldx + k]) : x16[(size_t)m * ldx + k];
                    }
                    v = make_uint4(h[0] | (h[1] << 16), h[2] | (h[3] << 16), h[4] | (h[5] << 16), h[6] | (h[7] << 16));
                }
            }
            xs_dyn[m * rs + swz(ch)] = v;
        }
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            const int m = m0 + mt * 8 + g;
            xrow[mt] = xs_dyn + (m < M ? m : M) * rs;
        }
#pragma unroll
        for (int i = 0; i < (S >= 32 ? 4 : 8); ++i) {
            const int kp = kpos<S>(0, S >= 32 ? 2 * i : i, t);
            xoff[i] = swz(kp >> 3) * 2 + (S >= 32 ? 0 : (kp >> 2) & 1);  // in 8-byte units
        }
        __syncthreads();
    }

    auto compute_unit = [&](const u32 (&ws)[NT][WPU], const u32 (&ss)[NT][NGU][2], int u) {
        u32 xr[XPRE ? MT : 1][16];
        if constexpr (XPRE) {
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                const int m = m0 + mt * 8 + g;
                const u16* xr0 = reinterpret_cast<const u16*>(x) + (size_t)(m < M ? m : 0) * ldx;
                if constexpr (S >= 32) {
#pragma unroll
                    for (int ts = 0; ts < 8; ts += 2) {
                        const int kp = kpos<S>(u, ts, t);
                        uint4 v = make_uint4(0u, 0u, 0u, 0u);
                        if (m < M && kp < Kx) v = ld_nc4(xr0 + kp);
                        xr[mt][2 * ts] = v.x; xr[mt][2 * ts + 1] = v.y; xr[mt][2 * ts + 2] = v.z; xr[mt][2 * ts + 3] = v.w;
                    }
                } else {
#pragma unroll
                    for (int ts = 0; ts < 8; ++ts) {
                        const int kp = kpos<S>(u, ts, t);
                        uint2 v = make_uint2(0u, 0u);
                        if (m < M && kp < Kx) v = ld_nc2(xr0 + kp);
                        xr[mt][2 * ts] = v.x; xr[mt][2 * ts + 1] = v.y;
                    }
                }
            }
        }
        u32 xq[MT][4];  // staged x of the current k-step pair
#pragma unroll
        for (int ts = 0; ts < 8; ++ts) {
            const int gi = GSTC < 8 ? ts / GSTC : 0;
            const int kp = kpos<S>(u, ts, t);
            if constexpr (XS != 0) {
                if (S < 32 || (ts & 1) == 0) {
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt) {
                        const uint2* base = reinterpret_cast<const uint2*>(xrow[mt] + u * 16);
                        if constexpr (S >= 32) {
                            const uint4 v = *reinterpret_cast<const uint4*>(base + xoff[ts >> 1]);
                            xq[mt][0] = v.x; xq[mt][1] = v.y; xq[mt][2] = v.z; xq[mt][3] = v.w;
                        } else {
                            const uint2 v = base[xoff[ts]];
                            xq[mt][0] = v.x; xq[mt][1] = v.y;
                        }
                    }
                }
            }
            // B fragments (x) of m-tile mt for this k-step.
            auto frag_b = [&](int mt, u32& b0, u32& b1) {
                if constexpr (XS != 0) {
                    const int h = (S >= 32 && (ts & 1)) ? 2 : 0;
                    b0 = xq[mt][h]; b1 = xq[mt][h + 1];
                } else if constexpr (XPRE) {
                    b0 = xr[mt][2 * ts]; b1 = xr[mt][2 * ts + 1];
                } else {
                    const int m = m0 + mt * 8 + g;
                    b0 = 0u; b1 = 0u;
                    if (m < M && kp < Kx) {
                        const uint2 v = ld_nc2(reinterpret_cast<const u16*>(x) + (size_t)m * ldx + kp);
                        b0 = v.x; b1 = v.y;
                    }
                }
            };
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                const u32 zz0 = prmt(ss[nt][gi][0], 0x3232u), zz1 = prmt(ss[nt][gi][1], 0x3232u);
                u32 a[4];
#pragma unroll
                for (int pr = 0; pr < 4; ++pr) a[pr] = hsub2(magic_pair<BITS>(ws[nt], ts, pr), (pr & 1) ? zz1 : zz0);
                if constexpr (SCALE_A) {
                    const u32 sc0 = prmt(ss[nt][gi][0], 0x1010u), sc1 = prmt(ss[nt][gi][1], 0x1010u);
#pragma unroll
                    for (int pr = 0; pr < 4; ++pr) a[pr] = hmul2(a[pr], (pr & 1) ? sc1 : sc0);
                }
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    u32 b0, b1;
                    frag_b(mt, b0, b1);
                    if constexpr (SCALE_A) mma16816(o[nt][mt], a, b0, b1);
                    else mma16816(c[nt][mt], a, b0, b1);
                }
            }
            if constexpr (!SCALE_A) {
                if ((GSTC < 8 && (ts + 1) % GSTC == 0) || (GSTC == 8 && ts == 7)) {
#pragma unroll
                    for (int nt = 0; nt < NT; ++nt) {
                        const float s0 = h2f(ss[nt][gi][0]), s1 = h2f(ss[nt][gi][1]);
#pragma unroll
                        for (int mt = 0; mt < MT; ++mt) {
                            o[nt][mt][0] += s0 * c[nt][mt][0]; o[nt][mt][1] += s0 * c[nt][mt][1];
                            o[nt][mt][2] += s1 * c[nt][mt][2]; o[nt][mt][3] += s1 * c[nt][mt][3];
                            c[nt][mt][0] = 0.f; c[nt][mt][1] = 0.f; c[nt][mt][2] = 0.f; c[nt][mt][3] = 0.f;
                        }
                    }
                }
            }
        }
    };

    for (int ub = warp; ub < NU; ub += PD * WARPS) {
#pragma unroll
        for (int i = 0; i < PD; ++i) {
            const int u = ub + i * WARPS;
            if (u < NU) {
                compute_unit(wb[i], sb[i], u);
                const int un = u + PD * WARPS;
                if (un < NU) load_slot(wb[i], sb[i], un);
            }
        }
    }

    // Reduce the 8 warps' partial sums in warp order (deterministic): red[m_local][n_local].
    __shared__ float red[MT * 8][NT * 16];
    float* flat = &red[0][0];
#pragma unroll 1
    for (int w = 0; w < WARPS; ++w) {
        if (warp == w) {
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    float* r0 = &red[mt * 8 + 2 * t][nt * 16 + g];
                    float* r1 = &red[mt * 8 + 2 * t + 1][nt * 16 + g];
                    if (w == 0) {
                        r0[0] = o[nt][mt][0]; r0[8] = o[nt][mt][2]; r1[0] = o[nt][mt][1]; r1[8] = o[nt][mt][3];
                    } else {
                        r0[0] += o[nt][mt][0]; r0[8] += o[nt][mt][2]; r1[0] += o[nt][mt][1]; r1[8] += o[nt][mt][3];
                    }
                }
        }
        __syncthreads();
    }
    for (int i = threadIdx.x; i < MT * 8 * NT * 16; i += THREADS) {
        const int ml = i / (NT * 16), nl = i % (NT * 16);
        const int m = m0 + ml, n = nt0 * 16 + nl;
        if (m < M && n < N) {
            const float v = flat[i] + (bias ? bias[n] : 0.f);
            if (y_f32) reinterpret_cast<float*>(y)[(size_t)m * ldy + n] = v;
            else reinterpret_cast<u16*>(y)[(size_t)m * ldy + n] = f2h(v);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// dequantize to W^T [N, ldw] fp16 in K' order (prefill path: then cuBLAS on x in K' order).
// Columns kp >= Kcols are not written (Kcols % 8 == 0, ldw % 8 == 0, wt 16-byte aligned).
// Each warp decodes one (n-tile, unit) = 16 x 128 into shared memory, then writes whole
// 256-byte row segments (16-byte stores, coalesced). Grid: any (grid-stride); block: THREADS.
template <int BITS, int GSTC>
__global__ void __launch_bounds__(THREADS)
dequant_tc(const u32* __restrict__ qw, const u32* __restrict__ sz, u16* __restrict__ wt, int ldw, int Kcols,
           int N, int Np, int NU, int upg) {
    constexpr int WPU = Fmt<BITS>::WPU;
    constexpr int NGU = GSTC < 8 ? 8 / GSTC : 1;
    constexpr int S = GSTC < 8 ? 16 * GSTC : 128;
    constexpr int RW = 68;  // row stride of the tile in words (64 + 4: rows shift banks)
    __shared__ u32 tile[WARPS][16 * RW];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    u32* tw = tile[warp];
    const long long tasks = (long long)(Np / 16) * NU;
    for (long long task = (long long)blockIdx.x * WARPS + warp; task < tasks; task += (long long)gridDim.x * WARPS) {
        const int nt = (int)(task / NU), u = (int)(task % NU);
        u32 w[WPU];
        load_unit<BITS>(w, qw + ((size_t)nt * NU + u) * (32 * WPU), lane);
        u32 s[NGU][2];
#pragma unroll
        for (int gi = 0; gi < NGU; ++gi) {
            const int grp = GSTC < 8 ? u * NGU + gi : u / upg;
            s[gi][0] = ld_nc(sz + (size_t)grp * Np + nt * 16 + g);
            s[gi][1] = ld_nc(sz + (size_t)grp * Np + nt * 16 + g + 8);
        }
        __syncwarp();
#pragma unroll
        for (int ts = 0; ts < 8; ++ts) {
            const int gi = GSTC < 8 ? ts / GSTC : 0;
            const u32 zz[2] = {prmt(s[gi][0], 0x3232u), prmt(s[gi][1], 0x3232u)};
            const u32 sc[2] = {prmt(s[gi][0], 0x1010u), prmt(s[gi][1], 0x1010u)};
            u32 a[4];
#pragma unroll
            for (int pr = 0; pr < 4; ++pr) a[pr] = hmul2(hsub2(magic_pair<BITS>(w, ts, pr), zz[pr & 1]), sc[pr & 1]);
            const int col = (kpos<S>(u, ts, t) - u * 128) >> 1;  // word column within the unit
            *reinterpret_cast<uint2*>(tw + g * RW + col) = make_uint2(a[0], a[2]);
            *reinterpret_cast<uint2*>(tw + (g + 8) * RW + col) = make_uint2(a[1], a[3]);
        }
        __syncwarp();
        // 16 rows x 64 words: lane l writes 16 bytes of rows r = l/16 + 2i, chunk l % 16.
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const int r = (lane >> 4) + 2 * i, ch = lane & 15;
            const int n = nt * 16 + r, kp = u * 128 + ch * 8;
            if (n < N && kp < Kcols)
                *reinterpret_cast<uint4*>(wt + (size_t)n * ldw + kp) = *reinterpret_cast<const uint4*>(tw + r * RW + ch * 4);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// x [M, ldx] (fp16 or fp32) -> xg [M, Kp] fp16 in K' order: xg[m, kp] = x[m, perm[kp]] (gather = 1,
// 0 where perm < 0) or x[m, kp] (gather = 0, 0 for kp >= Kx). One thread per output pair.
extern "C" __global__ void __launch_bounds__(THREADS)
prep_x(const void* __restrict__ x, int ldx, int Kx, int x_f32, int gather, const int* __restrict__ perm,
       u32* __restrict__ xg, int M, int Kp) {
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const int half_kp = Kp >> 1;
    if (idx >= (long long)M * half_kp) return;
    const int m = (int)(idx / half_kp), kp = 2 * (int)(idx % half_kp);
    u32 h[2];
#pragma unroll
    for (int j = 0; j < 2; ++j) {
        const int k = gather ? perm[kp + j] : (kp + j < Kx ? kp + j : -1);
        h[j] = 0u;
        if (k >= 0) {
            if (x_f32) h[j] = f2h(reinterpret_cast<const float*>(x)[(size_t)m * ldx + k]);
            else h[j] = reinterpret_cast<const u16*>(x)[(size_t)m * ldx + k];
        }
    }
    xg[idx] = h[0] | (h[1] << 16);
}

// ---------------------------------------------------------------------------------------------
// repack: CPU format -> tc layout (load time)

// Code of (k, n) in a bitstream packed along k: qweight int32 [ceil(K/32)*BITS, N].
template <int BITS>
__device__ __forceinline__ u32 stream_code(const u32* __restrict__ q, int k, int n, int N) {
    const int bit = (k & 31) * BITS;
    const size_t row = (size_t)(k >> 5) * BITS + (bit >> 5);
    const int sh = bit & 31;
    u64 v = q[row * N + n] >> sh;
    if (sh + BITS > 32) v |= (u64)q[(row + 1) * N + n] << (32 - sh);
    return (u32)v & ((1u << BITS) - 1u);
}

// qweight: [ceil(K/32)*BITS, N] int32 (kernels/reference.py).  perm: [K'] int32.
// out: tc words. span: S = 16*min(gst, 8). One thread per (n-tile, unit, lane).
template <int BITS>
__global__ void __launch_bounds__(THREADS)
repack_tc(const u32* __restrict__ qweight, int K, int N, const int* __restrict__ perm,
          int Np, int NU, int span, u32* __restrict__ out) {
    constexpr int WPU = Fmt<BITS>::WPU;
    const long long total = (long long)(Np / 16) * NU * 32;
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (tid >= total) return;
    const int lane = (int)(tid & 31);
    const long long rest = tid >> 5;
    const int u = (int)(rest % NU), nt = (int)(rest / NU);
    const int g = lane >> 2, t = lane & 3;
    const int TS = span / 16;
    u32 w[WPU];
#pragma unroll
    for (int i = 0; i < WPU; ++i) w[i] = 0u;
#pragma unroll
    for (int ts = 0; ts < 8; ++ts) {
        const int kp0 = u * 128 + (ts / TS) * span + t * (span / 4) + (ts % TS) * 4;
#pragma unroll
        for (int pr = 0; pr < 4; ++pr)
#pragma unroll
            for (int hi = 0; hi < 2; ++hi) {
                const int k = perm[kp0 + 2 * (pr >> 1) + hi];
                const int n = nt * 16 + g + 8 * (pr & 1);
                const u32 code = (k >= 0 && k < K && n < N) ? stream_code<BITS>(qweight, k, n, N) : 0u;
                if constexpr (BITS == 3) {
                    const int p = (ts & 3) * 4 + pr;
                    if (p == 15) {
#pragma unroll
                        for (int b = 0; b < 3; ++b) {
                            int word;
                            const int shift = code_bit_pos<BITS>(ts, pr, hi, b, &word);
                            w[word] |= ((code >> b) & 1u) << shift;
                        }
                        continue;
                    }
                }
                int word;
                const int shift = code_bit_pos<BITS>(ts, pr, hi, 0, &word);
                w[word] |= code << shift;
            }
    }
    u32* base = out + ((size_t)nt * NU + u) * (32 * WPU);
    if constexpr (BITS == 3) {
        *reinterpret_cast<uint4*>(base + lane * 4) = make_uint4(w[0], w[1], w[2], w[3]);
        *reinterpret_cast<uint2*>(base + 128 + lane * 2) = make_uint2(w[4], w[5]);
    } else {
#pragma unroll
        for (int c = 0; c < WPU / 4; ++c)
            *reinterpret_cast<uint4*>(base + c * 128 + lane * 4) = make_uint4(w[4 * c], w[4 * c + 1], w[4 * c + 2], w[4 * c + 3]);
    }
}

// scales: [G, N] fp32; qzeros: [G, ceil(N/32)*bits] int32 bitstream along N.
// out: [Gp, Np] half2(scale, 1024 + zero); padding rows/columns get (0, 1024).
extern "C" __global__ void __launch_bounds__(THREADS)
repack_sz(const float* __restrict__ scales, const u32* __restrict__ qzeros, int G, int N, int bits,
          int Gp, int Np, u32* __restrict__ out) {
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)Gp * Np) return;
    const int gq = (int)(idx / Np), n = (int)(idx % Np);
    u32 r = SZ_PAD;
    if (gq < G && n < N) {
        const int nz = ((N + 31) / 32) * bits;
        const int bit = (n & 31) * bits;
        const int col = (n >> 5) * bits + (bit >> 5);
        const int sh = bit & 31;
        const u32* row = qzeros + (size_t)gq * nz;
        u64 v = row[col] >> sh;
        if (sh + bits > 32) v |= (u64)row[col + 1] << (32 - sh);
        const u32 z = (u32)v & ((1u << bits) - 1u);
        r = (u32)f2h(scales[(size_t)gq * N + n]) | ((0x6400u | z) << 16);
    }
    out[idx] = r;
}
